"""The record on disk: ``<state_dir>/state.json``, shared by the daemon and the CLI.

A save writes a temporary file, fsyncs it, renames it over the old one and fsyncs the
directory, so after a crash or a power cut the file holds either the old record or the
new one, never a mix. Every read-modify-write holds ``<state_dir>/lock`` (flock), so
``drainer drain`` and ``drainer run`` can act on the same node at the same time without
losing each other's changes. The holder writes its pid into the lock file; a process
that waits says so after a second (naming that pid) and gives up after ``lock_timeout``.

A record that cannot be used, whatever the reason (truncated, not JSON, JSON of another
shape, a field of the wrong type, an unknown phase, a directory in its place, not
readable), is one error with one piece of advice, never an empty record: an empty one
would forget that the node is out of the pool.

``<state_dir>/node-names.json`` keeps the VM's names once learned from the metadata
service, so that ``drainer drain`` works when the service does not answer.

Every file and directory here is created owner-only (0600/0700) whatever the umask.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import types
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, fields
from enum import Enum
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from drainer._files import (
    LOCK_TIMEOUT,
    FileLock,
    LockTimeout,
    make_private_dir,
    write_atomically,
)
from drainer.core import DrainResult, Phase, Record
from drainer.errors import StateError
from drainer.model import MaintenanceEvent

VERSION = 1
LOCK = "lock"
NAMES = "node-names.json"
LOCK_NOTICE = 1.0  # seconds of waiting before saying so

log = logging.getLogger("drainer")


def record_to_json(record: Record) -> dict[str, Any]:
    data = asdict(record)
    for key, value in data.items():  # JSON's own forms, as a load will see them
        if isinstance(value, frozenset):
            data[key] = sorted(value)
        elif isinstance(value, tuple):
            data[key] = list(value)
    data["phase"] = record.phase.value
    data["event"] = record.event.to_json() if record.event else None
    return {"version": VERSION, **data}


TIME_LIMIT = 1e11  # seconds: about the year 5000


def _fits(hint: Any, value: Any) -> bool:
    """Whether a JSON value can stand for a Record field annotated ``hint``."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(arg, value) for arg in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # epoch seconds: NaN, infinity or 1e300 would break every reader
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and -TIME_LIMIT <= value <= TIME_LIMIT
        )
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return value in {member.value for member in hint}
    if hint is MaintenanceEvent:
        return isinstance(value, dict)
    if origin in (frozenset, tuple):
        item = get_args(hint)[0]
        return isinstance(value, list) and all(_fits(item, v) for v in value)
    raise TypeError(f"record field type {hint!r} has no JSON form")  # a new field: teach me


@functools.cache
def _record_hints() -> dict[str, Any]:
    """Record's field types, evaluated once (its annotations are strings)."""
    return get_type_hints(Record)


def record_from_json(data: Any) -> Record:
    """The Record in ``data``; ValueError naming what does not fit."""
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__} where an object was expected")
    if data.get("version") != VERSION:
        raise ValueError(f"unknown record version {data.get('version')!r}")
    hints = _record_hints()
    values: dict[str, Any] = {}
    for f in fields(Record):
        if f.name not in data:
            continue
        value = data[f.name]
        if not _fits(hints[f.name], value):
            if f.name == "phase":
                raise ValueError(f"unknown phase {value!r}")
            raise ValueError(f"{f.name} is {json.dumps(value)}")
        values[f.name] = value
    values["phase"] = Phase(values.get("phase", Phase.IN_SERVICE.value))
    if values.get("drain_result") is not None:
        values["drain_result"] = DrainResult(values["drain_result"])
    event = values.get("event")
    try:
        values["event"] = MaintenanceEvent.from_json(event) if event else None
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"event is not an event ({exc!r})") from exc
    values["owned"] = frozenset(values.get("owned", ()))
    values["checking"] = frozenset(values.get("checking", ()))
    values["dismissed"] = tuple(values.get("dismissed", ()))
    values["listed"] = tuple(values.get("listed", ()))
    return Record(**values)


def unusable(path: Path, reason: str) -> StateError:
    """The one message for a state file drainer cannot use."""
    return StateError(
        f"{path} is damaged or unusable ({reason}). drainer cannot tell whether this node "
        "is out of its load balancers, so it does nothing. Look at the node in each load "
        f"balancer, move the file away (mv {path} {path}.bad), then run `drainer drain` or "
        "`drainer undrain` to say where the node should be"
    )


class Store:
    def __init__(
        self,
        state_dir: Path,
        *,
        lock_timeout: float = LOCK_TIMEOUT,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "state.json"
        self.lock_timeout = lock_timeout
        self.on_wait: Callable[[str], None] = on_wait or log.warning

    def load(self) -> Record:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return Record()
        except IsADirectoryError:
            raise unusable(self.path, "a directory, not a file") from None
        except PermissionError as exc:
            raise unusable(
                self.path, f"cannot read it: {exc.strerror}; is drainer run as its owner?"
            ) from exc
        except OSError as exc:
            raise unusable(self.path, f"cannot read it: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise unusable(self.path, f"not text: {exc.reason}") from exc
        try:
            return record_from_json(json.loads(text))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise unusable(self.path, str(exc)) from exc

    def save(self, record: Record) -> None:
        text = json.dumps(record_to_json(record), indent=1, sort_keys=True)
        try:
            write_atomically(self.path, text)
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc.strerror}") from exc

    @contextmanager
    def locked(self) -> Iterator[None]:
        path = self.state_dir / LOCK
        try:
            make_private_dir(self.state_dir)
            lock = FileLock(path)
        except OSError as exc:
            raise StateError(
                f"cannot use state directory {self.state_dir}"
                f" ({exc.filename or self.state_dir}: {exc.strerror})"
            ) from exc
        with closing(lock):
            try:
                lock.acquire(
                    timeout=self.lock_timeout,
                    on_wait=lambda holder: self.on_wait(
                        f"waiting for the state lock held by {holder}..."
                    ),
                    notice_after=LOCK_NOTICE,
                )
            except LockTimeout as exc:
                raise StateError(
                    f"gave up after {exc.waited:.0f}s waiting for the state lock {path}, held "
                    f"by {exc.holder}: if that process is stuck, stop it (or wait and try "
                    "again; --lock-timeout waits longer)"
                ) from None
            yield


# -- the node's names ----------------------------------------------------------------------


def remembered_names(state_dir: Path) -> frozenset[str] | None:
    """The names kept by ``remember_names``; None when there are none to use."""
    try:
        data = json.loads((state_dir / NAMES).read_text())
    except (OSError, ValueError):
        return None
    names = data.get("names") if isinstance(data, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return None
    return frozenset(names)


def remember_names(state_dir: Path, names: frozenset[str]) -> None:
    """Keep the VM's names for when the metadata service does not answer; StateError."""
    if remembered_names(state_dir) == names:
        return
    path = state_dir / NAMES
    try:
        write_atomically(path, json.dumps({"names": sorted(names), "learned": time.time()}))
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror}") from exc
