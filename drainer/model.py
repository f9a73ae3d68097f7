"""Values shared by sources, the core and the shell: maintenance events and durations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class EventType(StrEnum):
    FREEZE = "Freeze"
    REBOOT = "Reboot"
    REDEPLOY = "Redeploy"
    PREEMPT = "Preempt"
    TERMINATE = "Terminate"


class EventStatus(StrEnum):
    SCHEDULED = "Scheduled"
    STARTED = "Started"


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
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> MaintenanceEvent:
        not_before = data.get("not_before")
        duration = data.get("duration", -1)
        resources = data.get("resources", [])
        return cls(
            event_id=str(data["event_id"]),
            event_type=EventType(str(data["event_type"])),
            status=EventStatus(str(data["status"])),
            resources=tuple(str(r) for r in resources) if isinstance(resources, list) else (),
            not_before=float(not_before) if isinstance(not_before, int | float) else None,
            duration=int(duration) if isinstance(duration, int) else -1,
            source=str(data.get("source", "")),
            description=str(data.get("description", "")),
        )


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


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str | float) -> float:
    """``"30s"``, ``"5m"``, ``"1h"``, ``"250ms"`` or a bare number of seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text}")
        return float(text)
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r} (write it as 30s, 5m, 1h or 250ms)")
    return float(match.group(1)) * _UNIT[match.group(2)]


def format_duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{int(seconds * 1000)}ms"
