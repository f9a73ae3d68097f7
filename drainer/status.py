"""What ``drainer status`` and ``drainer events`` show: the data (their ``--json``) and
the lines a person reads. Reads only: the record, the load balancers, the source."""

from __future__ import annotations

import time
from typing import Any

from drainer.core import OUT_PHASES, Phase, Record, names_this_vm, reaction, relevant, salvage
from drainer.model import LBStatus, LBView
from drainer.node import Node
from drainer.sidecar import inspect as inspect_sidecar

__all__ = ["event_lines", "event_rows", "needs_attention", "status_data", "status_lines"]


def _sidecar_data(node: Node, now: float) -> dict[str, Any]:
    sidecar = inspect_sidecar(node.config.state_dir)
    age = sidecar.age(now)
    return {
        "running": sidecar.running,
        "pid": sidecar.pid if sidecar.running else None,
        "last_turn": sidecar.last_turn,
        "age": None if age is None else round(age, 1),
        "stale": sidecar.stale(now),
    }


def sidecar_line(sidecar: dict[str, Any]) -> str:
    if not sidecar["running"]:
        return "not running: nothing watches this node for maintenance (start `drainer run`)"
    pid = f" (pid {sidecar['pid']})" if sidecar["pid"] else ""
    if sidecar["age"] is None:
        return f"running{pid}, no turn completed yet"
    turn = f"last turn {sidecar['age']:.0f} s ago"
    return (
        f"STALE{pid}: {turn}; is drainer run stuck?"
        if sidecar["stale"]
        else f"running{pid}, {turn}"
    )


def status_data(node: Node) -> dict[str, Any]:
    """What ``drainer status --json`` prints: the record, each load balancer's view, the
    sidecar's heartbeat, and whether a person is needed."""
    sidecar = _sidecar_data(node, time.time())
    record = node.engine.store.load()
    views = node.engine.views()
    lbs: dict[str, Any] = {}
    for name, view in views.items():
        if view is None:
            lbs[name] = {"error": node.engine.read_error(name)}
        else:
            lbs[name] = {
                "status": view.status.value,
                "sessions": view.sessions,
                "detail": view.detail,
                "owned": name in record.owned,
            }
    return {
        "node": sorted(node.engine.policy.node_names),
        "phase": record.phase.value,
        "since": record.since,
        "manual": record.manual,
        "event": record.event.to_json() if record.event else None,
        "owned": sorted(record.owned),
        "load_balancers": lbs,
        "health": {"consecutive_ok": record.health_ok, "last": record.health_detail},
        "alert": record.alert,
        "note": record.note,
        "budget": {
            "slot": record.slot,
            "over_budget": record.over_budget,
            "waiting": record.slot_wait,
        }
        if node.engine.policy.budget
        else None,
        "needs_attention": needs_attention(record, views),
        "sidecar": sidecar,
    }


def needs_attention(record: Record, views: dict[str, LBView | None]) -> bool:
    """Held as unhealthy, a load balancer unreachable, or one where the node is meant
    to be out and is not."""
    unhealthy_hold = record.phase is Phase.HELD and not record.manual
    unreachable = any(v is None for v in views.values())
    meant_out = record.phase in (Phase.DRAINED, Phase.IN_MAINTENANCE, Phase.HELD, Phase.REMOVED)
    not_out = meant_out and any(
        (v := views.get(name)) is not None and v.status is not LBStatus.OUT for name in record.owned
    )
    return unhealthy_hold or unreachable or not_out


def status_lines(data: dict[str, Any]) -> list[str]:
    """``status_data`` for a person, one line per thing."""
    lines = [f"node:   {', '.join(data['node'])}", f"sidecar: {sidecar_line(data['sidecar'])}"]
    held = " (manual)" if data["manual"] else ""
    if data["since"]:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["since"]))
        lines.append(f"phase:  {data['phase']}{held} since {since}: {data['note']}")
    else:
        lines.append(f"phase:  {data['phase']} (nothing has happened yet)")
    if data["event"]:
        e = data["event"]
        kind, state = e["raw_type"] or e["event_type"], e["raw_status"] or e["status"]
        lines.append(f"event:  {kind} {e['event_id']} {state}")
    for name, lb in data["load_balancers"].items():
        mine = " (drained by drainer)" if lb.get("owned") else ""
        text = lb.get("error") or f"{lb['status']}, {lb['sessions']} sessions: {lb['detail']}"
        lines.append(f"lb:     {name}: {text}{mine}")
    if data["phase"] in {p.value for p in OUT_PHASES}:
        lines.append(
            f"health: {data['health']['consecutive_ok']} ok in a row; "
            f"last: {data['health']['last'] or '-'}"
        )
    budget = data.get("budget")
    if budget and budget["waiting"]:
        lines.append(f"budget: waiting for a slot: {budget['waiting']}")
    elif budget and budget["slot"]:
        over = " (OVER BUDGET: not approved early)" if budget["over_budget"] else ""
        lines.append(f"budget: slot held{over}")
    if data["alert"]:
        lines.append(f"ALERT:  {data['alert']}")
    return lines


def event_rows(node: Node) -> tuple[list[dict[str, Any]], bool]:
    """The events the source lists now, each with what drainer would do about it, and
    whether the listing is partial (part of the cloud's notices could not be read)."""
    listing = node.source.events()
    policy = node.engine.policy
    # an entry the source could not read is listed only when it may be this VM's
    found = listing.events + salvage(listing.damaged, policy)
    mine = {e.event_id for e in relevant(found, policy)}
    rows = [
        {
            **e.to_json(),
            "for_this_node": names_this_vm(e, policy),
            "reaction": reaction(e, policy).value if e.event_id in mine else "ignore",
        }
        for e in found
    ]
    return rows, listing.partial


def event_lines(rows: list[dict[str, Any]]) -> list[str]:
    """``event_rows`` for a person: one line per event, one more per problem."""
    if not rows:
        return ["no scheduled events"]
    lines = []
    for row in rows:
        when = "now"
        if row["not_before"]:
            # AWS and Google Cloud announce days or weeks ahead: the date too, then
            far = abs(row["not_before"] - time.time()) > 12 * 3600
            when = time.strftime(
                "%Y-%m-%d %H:%M:%S" if far else "%H:%M:%S", time.localtime(row["not_before"])
            )
        lines.append(
            f"{row['raw_type'] or row['event_type']:<9} {row['raw_status'] or row['status']:<9} "
            f"not before {when}  {row['event_id']}  {','.join(row['resources'])}  "
            f"-> {row['reaction']}"
        )
        lines += [f"          ! {problem}" for problem in row["problems"]]
    return lines
