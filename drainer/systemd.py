"""systemd's notify protocol (``Type=notify``): READY, STATUS, STOPPING, without a
dependency on libsystemd. Without ``$NOTIFY_SOCKET`` (not under systemd) it does nothing."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping

from drainer.core import Record

__all__ = ["Notifier", "status_line", "watchdog_seconds"]

log = logging.getLogger("drainer")


class Notifier:
    """systemd's notify protocol: datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name``
    for an abstract socket). Does nothing without it; a failed send is logged once."""

    def __init__(self, address: str | None, *, watchdog: float | None = None) -> None:
        # WatchdogSec: WATCHDOG=1 must come more often (None: no watchdog)
        self.watchdog = watchdog
        self._address = ""
        self._sock: socket.socket | None = None
        self._failed = False
        if not address:
            return
        if not address.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET=%s: not a unix socket path; not notifying systemd", address)
            return
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, *lines: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at NOTIFY_SOCKET: %s", exc.strerror)
            self._failed = True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """``WatchdogSec=`` as systemd passes it (``$WATCHDOG_USEC``, for ``$WATCHDOG_PID``
    when set); None without a watchdog for this process."""
    owner = environ.get("WATCHDOG_PID")
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
        if owner is not None and int(owner) != pid:
            return None
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


def status_line(record: Record) -> str:
    """``STATUS=`` for systemctl status: the phase and why, on one short line."""
    line = record.phase.value + (" (manual)" if record.manual else "")
    if record.note:
        line += f": {record.note}"
    return f"STATUS={line.replace(chr(10), ' ')[:200]}"
