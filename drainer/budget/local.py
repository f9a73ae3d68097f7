"""The ``local`` budget: the load balancers' own view, no coordination engine.

A voluntary drain waits while a pool already has ``max_out`` of its other servers out
of service (down, drained or in maintenance for whatever reason) at any of this node's
load balancers. There is nothing to hold: two nodes that look at the same moment may
both go; only ``etcd`` makes admission safe under races. The "slot" is a marker, the
re-check before an approval reads the load balancers again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from drainer.adapters.base import LoadBalancer
from drainer.budget import Admission, BudgetError, Pool, max_out
from drainer.errors import AdapterError
from drainer.model import PoolView

__all__ = ["LOCAL", "LocalSlots"]

LOCAL = "local"  # the lease of a local slot: nothing to keep alive or give back


class LocalSlots:
    def __init__(
        self, lbs: Mapping[str, LoadBalancer], spec: int | str, only: Sequence[str] = ()
    ) -> None:
        self.lbs = lbs
        self.spec = spec
        self.only = frozenset(only)
        # none named ahead: the pools are what the load balancers report at each read
        # (so no per-pool slot metrics: a local budget holds nothing)
        self.pools: tuple[Pool, ...] = ()
        self.where: tuple[str, ...] = ("local",)  # holds nothing to give back

    def _views(self) -> list[PoolView]:
        views: list[PoolView] = []
        for name, lb in self.lbs.items():
            try:
                views += [v for v in lb.pools() if not self.only or v.name in self.only]
            except AdapterError as exc:
                raise BudgetError(f"{name}: cannot count the pool's servers: {exc}") from exc
        # Nothing counted is not room: an adapter that cannot report its pool (only
        # HAProxy's runtime API does), or a pool named in `budget.pools` that no load
        # balancer reports, would otherwise let every drain go.
        unseen = sorted(self.only - {v.name for v in views}) or ([] if views else ["any"])
        if unseen:
            raise BudgetError(
                f"no load balancer reports pool {', '.join(unseen)} (engine local counts"
                " servers through HAProxy's runtime API): fix budget.pools, or use engine etcd"
            )
        return views

    def _full(self) -> tuple[str, ...]:
        """The pools where this node out with the others that are would be more than
        the allowed servers out (the same count before a drain and before an approval,
        when the node is out already)."""
        full = []
        for view in self._views():
            allowed = max_out(self.spec, view.size)
            if view.others_out + 1 > allowed:
                full.append(view.name)
        return tuple(sorted(set(full)))

    def take(self, event_id: str, event_type: str, *, force: bool) -> Admission:
        full = self._full()
        if full and not force:
            return Admission(False, full=full)
        return Admission(True, LOCAL, full=full)

    def holds(self) -> bool:
        return not self._full()

    def abandon(self, event_id: str, event_type: str) -> int:
        return 0

    def keepalive(self, lease: str) -> bool:
        return True

    def release(self, lease: str) -> None:
        return

    def close(self) -> None:
        return
