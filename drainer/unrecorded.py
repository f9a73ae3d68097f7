"""``<state_dir>/unrecorded``: the note of a drain that ``state.json`` could not record.

Out is the safe direction: when the record cannot be saved (a full disk, a read-only
file system), the engine still drains the node, and writes here which load balancers it
took the node out of, when, for which event, and whether an operator asked for it. So
that this write works on a full disk, the file is pre-allocated (``SIZE`` bytes of
blanks) while the disk still has room, and is only ever overwritten in place, never
grown, truncated or renamed: rewriting blocks a file already owns needs no new ones.

Blank means nothing is unrecorded. Once a record that holds the drain has been saved,
the engine blanks the file again. A note that cannot be parsed (a write torn by a power
cut) reads as "out of every load balancer, for an unknown reason": the conservative
reading, which keeps the node out until the maintenance is over and it is healthy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from drainer.model import MaintenanceEvent

SIZE = 4096
NAME = "unrecorded"


@dataclass(frozen=True, kw_only=True)
class Unrecorded:
    """A drain made by drainer that the record on disk may not hold."""

    lbs: frozenset[str] | None  # None: unknown (a damaged note): every load balancer
    at: float
    draining: bool  # still draining (not yet taken out) when last noted
    manual: bool  # an operator's `drainer drain`
    event: MaintenanceEvent | None = None


class Note:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / NAME
        self._allocated = False  # the last read saw the whole file: prepare has nothing to do

    def prepare(self) -> None:
        """Allocate the file while there is room (keeping what it holds); OSError when
        there is none. Nothing to do (no system call) after a read saw it whole."""
        if self._allocated:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size < SIZE:
                os.pwrite(fd, b" " * (SIZE - size), size)
                os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, note: Unrecorded) -> None:
        """Overwrite the file in place; OSError when even that fails."""
        event = note.event.to_json() if note.event else None
        if event is not None:
            event["description"] = ""
        data: dict[str, object] = {
            "lbs": sorted(note.lbs) if note.lbs is not None else None,
            "at": note.at,
            "draining": note.draining,
            "manual": note.manual,
            "event": event,
        }
        text = json.dumps(data, sort_keys=True).encode()
        if len(text) > SIZE:
            data["event"] = None  # an event too big to note: the lbs matter most
            text = json.dumps(data, sort_keys=True).encode()
        self._overwrite(text)

    def clear(self) -> None:
        if self.path.exists():
            self._overwrite(b"")

    def read(self) -> Unrecorded | None:
        """The note, or None when the file is blank or absent."""
        self._allocated = False
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            return Unrecorded(lbs=None, at=0.0, draining=False, manual=False)
        self._allocated = len(raw) >= SIZE
        text = raw.decode("utf-8", "replace").strip(" \0\n")
        if not text:
            return None
        try:
            data = json.loads(text)
            event = data.get("event")
            return Unrecorded(
                lbs=None if data["lbs"] is None else frozenset(str(n) for n in data["lbs"]),
                at=float(data["at"]),
                draining=bool(data["draining"]),
                manual=bool(data["manual"]),
                event=MaintenanceEvent.from_json(event) if event else None,
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return Unrecorded(lbs=None, at=0.0, draining=False, manual=False)

    def _overwrite(self, text: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # no O_CREAT, no O_TRUNC: in place
        try:
            os.pwrite(fd, text.ljust(SIZE, b" "), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
