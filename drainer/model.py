"""Values shared by sources, the core and the shell: maintenance events and durations.

A source reads liberally: a type or status it does not know becomes ``UNKNOWN`` (the
name as listed kept in ``raw_type``/``raw_status``), and what was odd about an event is
said in ``problems``. Who an event is for is never guessed by a source: an entry whose
``Resources`` cannot be read is handed on as ``Damaged`` and the core decides.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum


class StrEnum(str, Enum):
    """``enum.StrEnum`` as Python 3.11 has it (drainer runs on 3.10 too): ``str()`` and
    ``format()`` give the value."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)


class _AnyCase(StrEnum):
    @classmethod
    def _missing_(cls, value: object) -> _AnyCase | None:
        text = str(value).lower()
        return next((member for member in cls if member.value.lower() == text), None)


class EventType(_AnyCase):
    FREEZE = "Freeze"
    REBOOT = "Reboot"
    REDEPLOY = "Redeploy"
    PREEMPT = "Preempt"
    TERMINATE = "Terminate"
    # A cloud's hint that the VM is at higher risk of interruption (AWS's rebalance
    # recommendation): ignored by default, drained when configured (events.Rebalance).
    REBALANCE = "Rebalance"
    UNKNOWN = "Unknown"  # a type drainer does not know (yet): the rule events.Unknown applies


class EventStatus(_AnyCase):
    SCHEDULED = "Scheduled"
    STARTED = "Started"
    UNKNOWN = "Unknown"  # pending as far as drainer can tell: drained at once, never approved


@dataclass(frozen=True)
class MaintenanceEvent:
    """One event as a source reported it; ``not_before`` is epoch seconds or None (blank)."""

    event_id: str
    event_type: EventType
    status: EventStatus
    resources: tuple[str, ...]
    not_before: float | None = None
    duration: int = -1  # seconds of expected impact; 0 none, -1 unknown
    source: str = "Platform"
    description: str = ""
    # the type as listed, when it is UNKNOWN or the cloud names it otherwise (AWS's
    # "system-reboot" is a REBOOT)
    raw_type: str = ""
    raw_status: str = ""  # the EventStatus as listed, when it is UNKNOWN
    problems: tuple[str, ...] = ()  # what was odd about the event as listed

    @property
    def type_name(self) -> str:
        """The type as the source listed it (for logs and status, never for metrics)."""
        return self.raw_type or self.event_type.value

    @property
    def status_name(self) -> str:
        return self.raw_status or self.status.value

    def to_json(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type.value,
            "status": self.status.value,
            "resources": list(self.resources),
            "not_before": self.not_before,
            "duration": self.duration,
            "source": self.source,
            "description": self.description,
            "raw_type": self.raw_type,
            "raw_status": self.raw_status,
            "problems": list(self.problems),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> MaintenanceEvent:
        not_before = data.get("not_before")
        duration = data.get("duration", -1)
        resources = data.get("resources", [])
        problems = data.get("problems", [])
        kind, status = str(data["event_type"]), str(data["status"])
        known_kind = kind in {t.value for t in EventType}
        known_status = status in {s.value for s in EventStatus}
        return cls(
            event_id=str(data["event_id"]),
            event_type=EventType(kind) if known_kind else EventType.UNKNOWN,
            status=EventStatus(status) if known_status else EventStatus.UNKNOWN,
            resources=tuple(str(r) for r in resources) if isinstance(resources, list) else (),
            not_before=float(not_before) if isinstance(not_before, int | float) else None,
            duration=int(duration) if isinstance(duration, int) else -1,
            source=str(data.get("source", "")),
            description=str(data.get("description", "")),
            raw_type=str(data.get("raw_type") or ("" if known_kind else kind)),
            raw_status=str(data.get("raw_status") or ("" if known_status else status)),
            problems=tuple(str(p) for p in problems) if isinstance(problems, list) else (),
        )


@dataclass(frozen=True)
class Damaged:
    """A listed entry whose ``Resources`` could not be read, so whom it is for is unknown.

    ``event`` holds what could be read (its ``resources``: the names salvaged, maybe
    none); ``text`` is the entry as listed (JSON), in which the core looks for this
    VM's names: a source does not know them.
    """

    event: MaintenanceEvent
    text: str


@dataclass(frozen=True)
class Listing:
    """One answer of an event source: the events it could read, the document's
    incarnation (None: not reported) and the entries it could not read well enough.

    ``partial``: part of what the cloud lists could not be read this time (AWS's Spot
    path failed while its scheduled events were read), so an event missing here may
    still be on. A source whose reads all fail raises instead: a listing is never
    empty for want of an answer."""

    events: tuple[MaintenanceEvent, ...] = ()
    incarnation: int | None = None
    damaged: tuple[Damaged, ...] = ()
    partial: bool = False


class Approve(StrEnum):
    """When the core asks the cloud to start an event early, once the node is out: a
    policy of the core, named here so that a source's configuration can carry it."""

    NEVER = "never"
    SOLE = "sole"  # only when this VM is the event's only resource
    ALWAYS = "always"


class LBStatus(StrEnum):
    """Where the node stands at one load balancer."""

    IN_SERVICE = "in_service"  # gets new connections
    DRAINING = "draining"  # no new connections; existing ones may remain
    OUT = "out"  # fully out (maint/down)


@dataclass(frozen=True)
class LBView:
    """The node as one load balancer sees it now."""

    status: LBStatus
    sessions: int  # connections still open to the node through this load balancer
    detail: str = ""  # one line for ``drainer status``: the server's state as the LB shows it


@dataclass(frozen=True)
class PoolView:
    """A pool (backend) the node's server belongs to, as one load balancer sees it: how
    many servers it has, and how many of the others get new connections."""

    name: str
    size: int
    others_serving: int

    @property
    def others_out(self) -> int:
        return self.size - 1 - self.others_serving


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
MAX_DURATION = 8760 * 3600.0  # a year: longer is a typo, and would overflow times
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str | float) -> float:
    """``"30s"``, ``"5m"``, ``"1h"``, ``"250ms"`` or a bare number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text}")
        seconds = float(text) if text <= MAX_DURATION else math.inf  # no OverflowError
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise ValueError(f"not a duration: {text!r} (write it as 30s, 5m, 1h or 250ms)")
        seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if not seconds <= MAX_DURATION:  # also NaN
        raise ValueError(f"not a duration: {text!r} (at most {MAX_DURATION // 3600:.0f}h)")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{int(seconds * 1000)}ms"
