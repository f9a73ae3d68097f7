"""SIGHUP while ``drainer run`` starts, before the daemon handles it.

Between its start and ``daemon.run`` installing its handlers, ``drainer run`` reads its
configuration and imports what it needs: most of a second on a small VM. SIGHUP's
default action meanwhile is to end the process, so a reload sent right after a start (a
configuration tool writing the file and sending ``kill -HUP``, ``systemctl kill -s HUP``)
would kill the sidecar instead. ``main()``, the ``drainer`` command, calls ``hold()``
before it imports anything else when ``run`` is among its arguments; the CLI then
decides (``hold()`` for the command ``run``, ``release()`` for any other). ``daemon.run``
takes what was held with ``taken()`` once its own handler is in place, and reloads once
its loop runs: the configuration it read may be older than the change the signal was
sent for. A SIGHUP before Python runs ``main()`` (a few hundredths of a second) still
ends the process: nothing in a Python program can handle it sooner.

SIGTERM and SIGINT keep their default meanwhile: before the daemon runs, nothing has been
started that a stop would have to finish, and systemd counts a death by SIGTERM as a
clean stop. Standard library only, so that importing this costs nothing.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

_held: list[int] = []  # the SIGHUPs seen since hold(); appended to by the handler only


def _hold(signum: int, frame: FrameType | None) -> None:
    _held.append(signum)  # no lock, no log: the main thread may hold either


def hold() -> None:
    """From now on, a SIGHUP is kept for ``taken()`` instead of ending the process."""
    signal.signal(signal.SIGHUP, _hold)


def taken() -> int:
    """How many SIGHUPs came since ``hold()`` (0 without it), and forget them."""
    count = len(_held)
    del _held[:count]
    return count


def release() -> None:
    """SIGHUP's default again, where ``hold()`` set it (a command other than ``run``)."""
    if signal.getsignal(signal.SIGHUP) is _hold:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    taken()


def main() -> None:
    """The ``drainer`` command (and ``python -m drainer``)."""
    if "run" in sys.argv[1:]:  # maybe the command, maybe a value: the CLI tells
        hold()
    from drainer.cli import main as cli

    cli()
