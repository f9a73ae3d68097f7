"""The record on disk: ``<state_dir>/state.json``, shared by the daemon and the CLI.

A save writes a temporary file, fsyncs it, renames it over the old one and fsyncs the
directory, so after a crash or a power cut the file holds either the old record or the
new one, never a mix. Every read-modify-write holds ``<state_dir>/lock`` (flock), so
``drainer drain`` and ``drainer run`` can act on the same node at the same time without
losing each other's changes. A record that cannot be parsed is an error, never an empty
record: an empty one would forget that the node is out of the pool.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from drainer.core import Phase, Record
from drainer.errors import StateError
from drainer.files import write_atomically
from drainer.model import MaintenanceEvent

VERSION = 1


def record_to_json(record: Record) -> dict[str, Any]:
    data = asdict(record)
    data["phase"] = record.phase.value
    data["event"] = record.event.to_json() if record.event else None
    data["owned"] = sorted(record.owned)
    data["dismissed"] = list(record.dismissed)
    return {"version": VERSION, **data}


def record_from_json(data: dict[str, Any]) -> Record:
    if data.get("version") != VERSION:
        raise ValueError(f"unknown record version {data.get('version')!r}")
    known = {f.name for f in fields(Record)}
    values = {k: v for k, v in data.items() if k in known}
    values["phase"] = Phase(values.get("phase", Phase.IN_SERVICE.value))
    event = values.get("event")
    values["event"] = MaintenanceEvent.from_json(event) if event else None
    values["owned"] = frozenset(values.get("owned", ()))
    values["dismissed"] = tuple(values.get("dismissed", ()))
    values["listed"] = tuple(values.get("listed", ()))
    return Record(**values)


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "state.json"

    def load(self) -> Record:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return Record()
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            return record_from_json(json.loads(text))
        except (ValueError, TypeError, KeyError) as exc:
            raise StateError(
                f"{self.path} is damaged ({exc}); the node may be out of its load balancers: "
                "check `drainer status`, then remove the file and run `drainer undrain` "
                "or `drainer drain` to state what you want"
            ) from exc

    def save(self, record: Record) -> None:
        text = json.dumps(record_to_json(record), indent=1, sort_keys=True)
        try:
            write_atomically(self.path, text)
        except OSError as exc:
            raise StateError(f"cannot write {self.path}: {exc.strerror}") from exc

    @contextmanager
    def locked(self) -> Iterator[None]:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            lock = open(self.state_dir / "lock", "a")  # noqa: SIM115 - held across the yield
        except OSError as exc:
            raise StateError(
                f"cannot use state directory {self.state_dir}: {exc.strerror}"
            ) from exc
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
