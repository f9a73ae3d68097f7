"""What operators do with the budget by hand: ``drainer budget status``, ``drainer budget
release NODE``, and the slot ``drainer drain`` takes before it drains."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from drainer.budget import BudgetError, Slots
from drainer.errors import ConfigError, DrainerError

if TYPE_CHECKING:
    from drainer.budget.etcd import EtcdBudget
    from drainer.config import Config


def connect(config: Config) -> EtcdBudget:
    """The budget's engine as configured; ConfigError when none is."""
    if config.budget is None:
        raise ConfigError("no budget is configured (add a `budget:` section)")
    if config.budget.etcd is None:
        raise ConfigError(
            "engine local keeps no holders (each node counts the servers its load balancers"
            " show out): `drainer status` shows this node; holders need engine etcd"
        )
    from drainer.budget.etcd import EtcdBudget

    return EtcdBudget(config.budget.etcd)


def status_data(config: Config, *, now: float | None = None) -> dict[str, Any]:
    """Every pool this node belongs to and every pool with a holder: its holders (node,
    kind, age, over budget, event), free slots, and whether the read is stale (no quorum:
    the last data a member had)."""
    budget = connect(config)
    now = time.time() if now is None else now
    assert config.budget is not None and isinstance(config.budget.max_out, int)
    try:
        names = sorted(set(config.pools()) | set(budget.pools()))
        held, stale = budget.holders(names, stale_ok=True)
    except BudgetError:
        names = config.pools()
        held, stale = budget.holders(names, stale_ok=True)
    finally:
        budget.close()
    pools = []
    for name in names:
        holders = held.get(name, [])
        pools.append(
            {
                "pool": name,
                "max_out": config.budget.max_out,
                "free": max(0, config.budget.max_out - len(holders)),
                "holders": [
                    {
                        "node": h.node,
                        "kind": h.kind,
                        "age": round(now - h.since, 1) if h.since else None,
                        "over_budget": h.over_budget,
                        "event_id": h.event_id,
                        "event_type": h.event_type,
                    }
                    for h in sorted(holders, key=lambda h: h.since)
                ],
            }
        )
    return {"stale": stale, "pools": pools}


def status_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    if data["stale"]:
        lines.append("STALE: etcd has no quorum; these are the last holders a member knew")
    for pool in data["pools"]:
        held = len(pool["holders"])
        lines.append(
            f"{pool['pool']}: {held} out of {pool['max_out']} allowed, {pool['free']} free"
        )
        for h in pool["holders"]:
            age = "?" if h["age"] is None else f"{h['age']:.0f}s"
            over = "  OVER BUDGET" if h["over_budget"] else ""
            about = f" {h['event_type']} {h['event_id']}".rstrip() if h["event_id"] else ""
            lines.append(f"  {h['node']}  {h['kind']}  {age}{about}{over}")
    return lines


def release(config: Config, node: str) -> int:
    """Free every slot ``node`` holds (and revoke its lease); how many. DrainerError when
    it holds none."""
    budget = connect(config)
    try:
        held, _ = budget.holders(sorted(set(config.pools()) | set(budget.pools())))
        leases = {h.lease for hs in held.values() for h in hs if h.node == node and h.lease}
        freed = budget.release(node)
        for lease in leases:
            budget.revoke(lease)
    finally:
        budget.close()
    if not freed:
        holders = sorted({h.node for hs in held.values() for h in hs}) or ["none"]
        raise DrainerError(f"{node} holds no slot (holders: {', '.join(holders)})")
    return freed


def slot_for_manual_drain(
    slots: Slots, *, timeout: float, force: bool, say: Callable[[str], None]
) -> tuple[str, bool]:
    """The lease of a slot for an operator's drain, and whether it is over budget: waits
    up to ``timeout`` for one; refuses then unless ``force`` (taken over budget, or none
    when the engine cannot answer: the drain is registered by the daemon once it can).
    A refusal (or Ctrl-C) gives back what a take whose answer was lost may have written."""
    try:
        return _wait_for_slot(slots, timeout=timeout, force=force, say=say)
    except (DrainerError, KeyboardInterrupt):
        _abandon(slots, say)
        raise


def _abandon(slots: Slots, say: Callable[[str], None]) -> None:
    try:
        if slots.abandon("", "manual"):
            say("budget: gave back the slot a lost answer had taken")
    except BudgetError as exc:
        say(
            f"budget: cannot check that no slot was taken ({exc}); if `drainer budget status`"
            " lists this node, `drainer budget release NODE` frees it (else its lease does)"
        )


def _wait_for_slot(
    slots: Slots, *, timeout: float, force: bool, say: Callable[[str], None]
) -> tuple[str, bool]:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            admission = slots.take("", "manual", force=force)
            if admission.admitted:
                if admission.full:
                    say(f"budget: over budget in {', '.join(admission.full)} (--force)")
                return admission.lease, bool(admission.full)
            held = sorted({h.node for h in admission.holders})
            why = f"no free slot in {', '.join(admission.full)} (held by {', '.join(held)})"
        except BudgetError as exc:
            if force:
                say(f"budget: {exc}; draining anyway (--force)")
                return "", False
            why = f"the budget cannot answer: {exc}"
        if time.monotonic() >= deadline:
            raise DrainerError(
                f"not draining: {why} after {timeout:.0f}s; wait and try again, or --force"
            )
        if why != last:
            say(f"waiting for a budget slot: {why}")
            last = why
        time.sleep(1.0)
