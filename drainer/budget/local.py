"""The ``local`` budget: the load balancers' own view, no coordination engine.

A voluntary drain waits while a pool already has ``max_out`` of its other servers out
of service (down, drained or in maintenance for whatever reason) at any of this node's
load balancers. There is nothing to hold: two nodes that look at the same moment may
both go; only ``etcd`` makes admission safe under races. To make that rarer, a node
that finds room pauses a random part of ``settle`` and looks again: of nodes whose
events came in the same second, the first to go shows as draining to those that look
after it (two that look again within the same few milliseconds still both go). The
"slot" is a marker, the re-check before an approval reads the load balancers again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence

from drainer.adapters.base import LoadBalancer
from drainer.budget import Admission, BudgetError, Pool, PoolCount, max_out
from drainer.errors import AdapterError
from drainer.model import PoolView

__all__ = ["LOCAL", "LocalSlots"]

LOCAL = "local"  # the lease of a local slot: nothing to keep alive or give back


class LocalSlots:
    def __init__(
        self,
        lbs: Mapping[str, LoadBalancer],
        spec: int | str,
        only: Sequence[str] = (),
        *,
        settle: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.lbs = lbs
        self.spec = spec
        self.only = frozenset(only)
        self.settle = settle
        self.sleep = sleep
        self.random: Callable[[], float] = random.random
        # none named ahead: the pools are what the load balancers report at each read
        # (so no per-pool slot metrics: a local budget holds nothing)
        self.pools: tuple[Pool, ...] = ()
        self.where: tuple[str, ...] = ("local",)  # holds nothing to give back
        self.members: frozenset[str] = frozenset()

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

    def _counts(self) -> tuple[PoolCount, ...]:
        """Each pool's other servers out, at the load balancer that leaves the least room."""
        worst: dict[str, PoolCount] = {}
        for view in self._views():
            count = PoolCount(view.name, view.others_out, max_out(self.spec, view.size))
            seen = worst.get(view.name)
            if seen is None or count.max_out - count.out < seen.max_out - seen.out:
                worst[view.name] = count
        return tuple(worst[name] for name in sorted(worst))

    def _full(self) -> tuple[tuple[str, ...], tuple[PoolCount, ...]]:
        """The pools where this node out with the others that are would be more than
        the allowed servers out (the same count before a drain and before an approval,
        when the node is out already), and the counts."""
        counts = self._counts()
        return tuple(c.pool for c in counts if c.out + 1 > c.max_out), counts

    def take(
        self, event_id: str, event_type: str, *, force: bool, within: float | None = None
    ) -> Admission:
        full, counts = self._full()
        if full and not force:
            return Admission(False, full=full, counts=counts)
        pause = self.random() * self.settle
        if within is not None:  # never past the latest start: the drain would start late
            pause = min(pause, within)
        if not force and pause > 0:
            self.sleep(pause)
            full, counts = self._full()
            if full:
                return Admission(False, full=full, counts=counts)
        return Admission(True, LOCAL, full=full, counts=counts)

    def holds(self) -> bool:
        return not self._full()[0]

    def abandon(self, event_id: str, event_type: str) -> int:
        return 0

    def keepalive(self, lease: str) -> bool:
        return True

    def release(self, lease: str) -> None:
        return

    def close(self) -> None:
        return
