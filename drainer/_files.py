"""Writing a small file so that a crash or a power cut leaves the old one or the new one.

The text goes to a temporary file in the same directory, is fsynced and renamed over
the target, and the directory is fsynced so the rename itself survives. OSError is left
to the caller, which turns it into the error of its own layer.

Everything written here is drainer's own state: the file is created owner-only (0600)
and a directory it has to create owner-only (0700), whatever the umask, so nobody else
on the machine can rewrite what drainer believes.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


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


def write_atomically(path: Path, text: str) -> None:
    make_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover keeps its old mode: start afresh
    try:
        with open(open_private(tmp, os.O_WRONLY | os.O_EXCL), "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
