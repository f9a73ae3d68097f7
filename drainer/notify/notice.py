"""One notice: what happened to the node, as a value, and the bodies sent for it.

Pure: a notice is built from the records before and after a transition (or from an
alert's message) by the caller, who passes the time and the id in. The same notice is
kept in the outbox file across a restart (``to_json``/``from_json``), so its id and
timestamp are those of the moment it happened: a receiver can de-duplicate by ``id``
(delivery is at least once: a notice sent just before a crash is sent again).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from drainer.core import Record

__all__ = ["KINDS", "Notice", "alert_notice", "body", "transition_notice"]

KINDS = ("transition", "alert", "test")


def _iso(seconds: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{whole}.{int(seconds % 1 * 1000):03d}Z"


@dataclass(frozen=True, kw_only=True)
class Notice:
    id: str
    kind: str  # one of KINDS
    node: str
    phase: str
    previous_phase: str = ""  # "" unless a transition
    note: str = ""  # why the transition happened
    alert: str = ""  # the alert's message; on a transition, a new alert that came with it
    manual: bool = False  # held by an operator's drain
    event: dict[str, Any] | None = None  # id, type, status, not_before (ISO 8601 or null)
    load_balancers: tuple[str, ...] = ()  # the configured ones
    out_of: tuple[str, ...] = ()  # those drainer took the node out of and still owns
    at: float = field(default=0.0)  # epoch seconds

    @property
    def trigger(self) -> str:
        """What a webhook's ``on`` must name to get this notice: the phase of a transition,
        ``alert`` for an alert (a test notice goes to every webhook)."""
        return self.phase if self.kind == "transition" else self.kind

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["load_balancers"] = list(self.load_balancers)
        data["out_of"] = list(self.out_of)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Notice:
        """A notice as ``to_json`` wrote it; KeyError/TypeError/ValueError when it is not."""
        fields = dict(data)
        fields["load_balancers"] = tuple(str(x) for x in fields.get("load_balancers", ()))
        fields["out_of"] = tuple(str(x) for x in fields.get("out_of", ()))
        notice = cls(**fields)
        if notice.kind not in KINDS or not isinstance(notice.at, int | float):
            raise ValueError(f"not a notice: {data!r:.200}")
        return notice


def _event(record: Record) -> dict[str, Any] | None:
    event = record.event
    if event is None:
        return None
    return {
        "id": event.event_id,
        "type": event.type_name,
        "status": event.status_name,
        "not_before": None if event.not_before is None else _iso(event.not_before),
    }


def transition_notice(
    old: Record, new: Record, *, node: str, lbs: tuple[str, ...], at: float, id: str
) -> Notice:
    alert = new.alert if new.alert != old.alert else ""
    return Notice(
        id=id,
        kind="transition",
        node=node,
        phase=new.phase.value,
        previous_phase=old.phase.value,
        note=new.note,
        alert=alert,
        manual=new.manual,
        event=_event(new) or _event(old),
        load_balancers=lbs,
        out_of=tuple(sorted(new.owned)),
        at=at,
    )


def alert_notice(
    record: Record, message: str, *, node: str, lbs: tuple[str, ...], at: float, id: str
) -> Notice:
    return Notice(
        id=id,
        kind="alert",
        node=node,
        phase=record.phase.value,
        note=record.note,
        alert=message,
        manual=record.manual,
        event=_event(record),
        load_balancers=lbs,
        out_of=tuple(sorted(record.owned)),
        at=at,
    )


def body(notice: Notice, fmt: str) -> dict[str, Any]:
    """What a webhook is sent: the documented JSON object, or Slack's ``{"text": ...}``."""
    if fmt == "slack":
        return {"text": _slack_escaped(_text(notice))}
    return {
        "id": notice.id,
        "type": notice.kind,
        "node": notice.node,
        "phase": notice.phase,
        "previous_phase": notice.previous_phase or None,
        "note": notice.note,
        "alert": notice.alert or None,
        "manual": notice.manual,
        "event": notice.event,
        "load_balancers": list(notice.load_balancers),
        "out_of": list(notice.out_of),
        "timestamp": _iso(notice.at),
    }


def _slack_escaped(text: str) -> str:
    """Slack reads ``<...>`` as a link or a mention (``<!channel>``) and ``&`` as an
    entity; a note or a load balancer's error page must arrive as written."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _text(notice: Notice) -> str:
    event = notice.event
    about = f" [{event['type']} {event['id']}]" if event else ""
    if notice.kind == "test":
        return f"drainer on {notice.node}: a test notification ({notice.phase})"
    if notice.kind == "alert":
        return f"drainer on {notice.node} ({notice.phase}){about}: {notice.alert}"
    line = f"drainer on {notice.node}: {notice.previous_phase} -> {notice.phase}{about}"
    if notice.note:
        line += f": {notice.note}"
    if notice.out_of:
        line += f" (out of {', '.join(notice.out_of)})"
    if notice.alert:
        line += f"\n{notice.alert}"
    return line
