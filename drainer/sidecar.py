"""Is the sidecar alive? Two files in the state directory answer it from outside.

- ``daemon.lock``: the one ``drainer run`` of a state directory holds an exclusive
  flock on it for its whole life; a second ``drainer run`` on the same directory
  cannot take it and refuses to start. The kernel drops the lock when the process
  dies, however it dies, so "nobody holds it" means "no sidecar is running".
- ``heartbeat.json``: written after every completed turn (pid, time, poll interval,
  phase). It is a liveness signal, not state: it is renamed into place but not
  fsynced, and losing it in a power cut loses nothing.

``drainer status`` reads both: "sidecar not running", or "last turn N s ago", stale
when older than ``STALE_TURNS`` poll intervals.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from drainer._files import make_private_dir
from drainer.errors import StateError

LOCK = "daemon.lock"
HEARTBEAT = "heartbeat.json"
STALE_TURNS = 5  # a turn older than this many poll intervals (at least 10 s) is stale


@dataclass(frozen=True)
class Sidecar:
    """What the state directory says about its ``drainer run``."""

    running: bool  # some process holds daemon.lock
    pid: int | None = None  # from the heartbeat
    last_turn: float | None = None  # epoch seconds of the last completed turn
    poll_interval: float | None = None
    phase: str = ""

    def age(self, now: float) -> float | None:
        return None if self.last_turn is None else max(0.0, now - self.last_turn)

    def stale(self, now: float) -> bool:
        """Not running, or running without a turn for too long."""
        age = self.age(now)
        if not self.running or age is None:
            return True
        return age > max(10.0, STALE_TURNS * (self.poll_interval or 1.0))


def acquire(state_dir: Path) -> IO[str]:
    """Take ``daemon.lock`` for this process's life; StateError when another holds it.
    Keep the returned file open: closing it releases the lock."""
    path = state_dir / LOCK
    try:
        make_private_dir(state_dir)
        handle = open(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+")  # noqa: SIM115
    except OSError as exc:
        raise StateError(
            f"cannot use state directory {state_dir} ({exc.filename or state_dir}: {exc.strerror})"
        ) from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        other = inspect(state_dir).pid
        who = f" (pid {other})" if other else ""
        raise StateError(
            f"another drainer run{who} already uses {state_dir}; "
            "stop it first, or give this one its own state_dir"
        ) from None
    try:  # who holds it: a heartbeat of another pid is an earlier run's
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
    except OSError:
        pass  # a full disk: the lock holds all the same
    return handle


def beat(state_dir: Path, *, phase: str, poll_interval: float, now: float | None = None) -> None:
    """Record a completed turn. Raises OSError (the caller reports it)."""
    data = {
        "pid": os.getpid(),
        "time": time.time() if now is None else now,
        "poll_interval": poll_interval,
        "phase": phase,
    }
    tmp = state_dir / f".{HEARTBEAT}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w") as out:
        out.write(json.dumps(data))
    os.replace(tmp, state_dir / HEARTBEAT)


def _held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the shared lock we may have taken
    return False


def _holder(path: Path) -> int | None:
    """The pid ``acquire`` wrote into the lock file (None: unknown)."""
    try:
        text = path.read_text().strip()
    except (OSError, ValueError):
        return None
    return int(text) if text.isdigit() else None


def inspect(state_dir: Path) -> Sidecar:
    """What the lock and the heartbeat say; never raises."""
    running = _held(state_dir / LOCK)
    holder = _holder(state_dir / LOCK) if running else None
    try:
        data = json.loads((state_dir / HEARTBEAT).read_text())
    except (OSError, ValueError):
        return Sidecar(running=running, pid=holder)
    if not isinstance(data, dict) or (holder is not None and data.get("pid") != holder):
        return Sidecar(running=running, pid=holder)  # no heartbeat, or an earlier run's

    def number(key: str) -> float | None:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value)

    pid = data.get("pid")
    return Sidecar(
        running=running,
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        last_turn=number("time"),
        poll_interval=number("poll_interval"),
        phase=str(data.get("phase", "")),
    )
