"""The one atomic file write and the one file lock of drainer.

``write_atomically``: a crash or a power cut leaves the old file or the new one. The
text goes to a temporary file in the same directory, is fsynced and renamed over the
target, and the directory is fsynced so the rename itself survives.

``FileLock``: an exclusive ``flock`` shared by processes (the daemon, the CLI, ``drainer
serve``), released when its file is closed, so a killed holder never leaves it held.
The holder writes its pid into the file, so a process that waits can say for whom.

OSError is left to the caller, which turns it into the error of its own layer.

drainer's own state is owner-only: such a file is created 0600 and a directory it has
to create 0700, whatever the umask, so nobody else on the machine can rewrite what
drainer believes. A file drainer edits for someone else (nginx's configuration) keeps
its owner and mode instead (``keep_mode``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
LOCK_TIMEOUT = 30.0  # seconds a command waits for the state lock before giving up


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) as 0700; an existing directory is left alone."""
    missing = []
    for each in (path, *path.parents):
        if each.is_dir():
            break
        missing.append(each)
    for each in reversed(missing):
        try:
            os.mkdir(each, DIR_MODE)  # the umask can only take bits away from 0700
        except FileExistsError:
            continue


def open_private(path: Path, flags: int) -> int:
    """``os.open`` creating ``path`` as 0600 whatever the umask."""
    return os.open(path, flags | os.O_CREAT, FILE_MODE)


def write_atomically(
    path: Path, text: str, *, keep_mode: bool = False, tmp: Path | None = None
) -> None:
    """Replace ``path`` with ``text``, all or nothing. ``keep_mode``: the new file gets the
    owner and mode of the one it replaces (else it is drainer's own: 0600, in a private
    directory made if missing). ``tmp``: the temporary file (default: a dot-file named
    after ``path`` and this process)."""
    if not keep_mode:
        make_private_dir(path.parent)
    tmp = tmp or path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover keeps its old mode: start afresh
    try:
        with open(open_private(tmp, os.O_WRONLY | os.O_EXCL), "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if keep_mode:
            with contextlib.suppress(OSError):  # e.g. the owner and mode nginx's package gave
                st = path.stat()
                os.chmod(tmp, st.st_mode & 0o7777)
                os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class LockTimeout(Exception):
    """``FileLock.acquire`` waited ``waited`` seconds; ``holder`` says who holds the lock."""

    def __init__(self, waited: float, holder: str) -> None:
        super().__init__(f"waited {waited:.0f}s for a lock held by {holder}")
        self.waited = waited
        self.holder = holder


class FileLock:
    """An exclusive ``flock`` on ``path``, opened (created with ``mode``) at construction
    and released by ``close()``: ``with closing(FileLock(path)) as lock: lock.acquire()``.
    Opening and acquiring are two steps so that a caller can tell "cannot open" (OSError)
    from "held too long" (LockTimeout)."""

    def __init__(self, path: Path, *, mode: int = FILE_MODE) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
        with contextlib.suppress(OSError):  # a lock file of an older drainer: tighten it
            current = os.fstat(self._fd).st_mode & 0o777
            if current & ~mode:
                os.fchmod(self._fd, current & mode)

    def acquire(
        self,
        *,
        timeout: float | None = None,
        on_wait: Callable[[str], None] | None = None,
        notice_after: float = 1.0,
        poll: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Wait for the lock (for ever when ``timeout`` is None, else LockTimeout); after
        ``notice_after`` seconds of waiting, tell ``on_wait`` who holds it, once."""
        if timeout is None and on_wait is None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        else:
            started = clock()
            told = False
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                waited = clock() - started
                if timeout is not None and waited >= timeout:
                    raise LockTimeout(waited, self.holder())
                if on_wait is not None and waited >= notice_after and not told:
                    on_wait(self.holder())
                    told = True
                sleep(poll)
        with contextlib.suppress(OSError):  # only for the message of whoever waits
            mine = f"{os.getpid()}\n".encode()
            if os.pread(self._fd, 32, 0) != mine:  # a daemon takes it at every turn
                os.ftruncate(self._fd, 0)
                os.pwrite(self._fd, mine, 0)

    def holder(self) -> str:
        try:
            pid = int(os.pread(self._fd, 32, 0).decode().strip())
        except (OSError, ValueError):
            return "another process"
        return f"pid {pid}"

    def close(self) -> None:
        os.close(self._fd)  # releases the lock
