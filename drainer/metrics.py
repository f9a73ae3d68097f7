"""Prometheus metrics and the daemon's probes, on one small HTTP listener.

Low cardinality: labels are phases, event types, results, kinds and load-balancer names
(configuration, so bounded); never event ids or times. ``metrics.listen`` serves:

- ``/metrics``: the Prometheus text format;
- ``/healthz``: 200 while the loop completed a turn recently (``Probes.limit`` seconds,
  a few poll intervals) and the state directory could be used (read, locked, written)
  at the last turn; else 503 and one line saying why;
- ``/readyz``: 200 in service, 503 from the moment a drain starts until the node is
  back, so a cloud load balancer's own probe can follow drainer;
- anything else: 404.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter as Counter_
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, cast

from drainer.core import DrainResult, Phase, Record
from drainer.model import EventType, LBStatus, LBView

# prometheus_client and the HTTP server are imported where metrics are served only: a CLI
# command, or a daemon without a listener, records nothing (NullMetrics)
if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from drainer._http import Server, ServerThread
    from drainer.adapters.base import AdapterConfig
    from drainer.budget import Holder, PoolCount


def build_version() -> str:
    try:
        return version("drainer")
    except PackageNotFoundError:
        return "unknown"


class Probes:
    """What ``/healthz`` and ``/readyz`` answer; written by the loop, read by the listener."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_turn = time.monotonic()  # the start counts: a first turn needs time
        self.limit = 30.0  # seconds without a completed turn before /healthz fails
        self._state_error = ""
        self._phase = Phase.IN_SERVICE

    def turned(self) -> None:
        with self._lock:
            self._last_turn = time.monotonic()

    def state_error(self, message: str) -> None:
        """Why the state cannot be used now ("" once it can again)."""
        with self._lock:
            self._state_error = message

    def phase(self, phase: Phase) -> None:
        with self._lock:
            self._phase = phase

    def health(self) -> str:
        """Empty when healthy, else the reason in one line."""
        with self._lock:
            age = time.monotonic() - self._last_turn
            if self._state_error:
                return f"state: {self._state_error}"
            if age > self.limit:
                return f"no completed turn for {age:.0f}s (limit {self.limit:.0f}s)"
            return ""

    def ready(self) -> str:
        with self._lock:
            if self._phase is Phase.IN_SERVICE:
                return ""
            return f"not in service: {self._phase.value}"


class Metrics:
    """The daemon's metrics, served by ``serve()``."""

    registry: CollectorRegistry
    phase: Gauge
    phase_since: Gauge
    last_poll: Gauge
    last_turn: Gauge
    lb_up: Gauge
    lb_sessions: Gauge
    lb_status: Gauge
    events: Counter
    drains: Counter
    errors: Counter
    budget_slots: Gauge
    budget_waits: Counter
    budget_over: Counter
    notifications: Counter
    notification_queue: Gauge
    out_since: Gauge
    out_for: Gauge
    manual: Gauge
    out_seconds: Histogram
    lb_info: Gauge

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.probes = Probes()
        self._listener: ServerThread[Server[Metrics]] | None = None
        self.phase = Gauge(
            "drainer_phase",
            "1 for the phase the node is in, 0 for the others",
            ["phase"],
            registry=self.registry,
        )
        self.phase_since = Gauge(
            "drainer_phase_since_timestamp_seconds",
            "When the current phase began (0: nothing has happened yet)",
            registry=self.registry,
        )
        self.last_poll = Gauge(
            "drainer_last_poll_success_timestamp_seconds",
            "When the event source last answered a poll",
            registry=self.registry,
        )
        self.last_turn = Gauge(
            "drainer_last_turn_timestamp_seconds",
            "When the loop last completed a turn",
            registry=self.registry,
        )
        Gauge(
            "drainer_build_info", "drainer's version", ["version"], registry=self.registry
        ).labels(build_version()).set(1)
        # a restart loop (systemd's watchdog, a crash) shows as this value changing: each
        # run may turn and answer scrapes well enough for the other alerts to stay quiet
        Gauge(
            "drainer_start_timestamp_seconds",
            "When this drainer process started serving metrics",
            registry=self.registry,
        ).set(time.time())
        self.lb_up = Gauge(
            "drainer_lb_up",
            "1 when the load balancer answered the last read, 0 when it did not",
            ["lb"],
            registry=self.registry,
        )
        self.lb_sessions = Gauge(
            "drainer_lb_sessions",
            "Sessions open to the node at the load balancer, as last read",
            ["lb"],
            registry=self.registry,
        )
        self.lb_status = Gauge(
            "drainer_lb_status",
            "1 for where the node stands at the load balancer as last read, 0 for the others",
            ["lb", "status"],
            registry=self.registry,
        )
        self.events = Counter(
            "drainer_events",
            "Maintenance events seen for this node",
            ["type"],
            registry=self.registry,
        )
        self.drains = Counter(
            "drainer_drains",
            "Drains that ended, by how they ended",
            ["result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "drainer_errors", "Errors met, by kind", ["kind"], registry=self.registry
        )
        self._counted: set[str] = set()  # the pools engine local last reported
        self.budget_slots = Gauge(
            "drainer_budget_slots",
            "Slots of each budget pool held and free, as this node last read them",
            ["pool", "state"],
            registry=self.registry,
        )
        self.budget_waits = Counter(
            "drainer_budget_waits",
            "Times a voluntary drain asked the budget for a slot and found none free",
            registry=self.registry,
        )
        self.budget_over = Counter(
            "drainer_budget_over_budget",
            "Drains that took a slot over budget, by pool full (the platform takes the VM anyway)",
            ["pool"],
            registry=self.registry,
        )
        for phase in Phase:
            self.phase.labels(phase.value).set(0)
        # webhook notifications (drainer.notify): each result is there from the start
        self.notifications = Counter(
            "drainer_notifications",
            "Webhook notifications, by how they ended: delivered, failed (refused or"
            " given up after retrying), dropped (the queue was full)",
            ["result"],
            registry=self.registry,
        )
        for result in ("delivered", "failed", "dropped"):
            self.notifications.labels(result)
        self.notification_queue = Gauge(
            "drainer_notification_queue",
            "Notifications waiting to be delivered",
            registry=self.registry,
        )
        self._fleet_metrics()

    def set_phase(self, phase: Phase, since: float | None = None) -> None:
        for each in Phase:
            self.phase.labels(each.value).set(1 if each is phase else 0)
        if since is not None:
            self.phase_since.set(since)
        self.probes.phase(phase)

    def set_lb(self, name: str, view: LBView | None) -> None:
        """What one read of load balancer ``name`` showed (None: it did not answer)."""
        self.lb_up.labels(name).set(0 if view is None else 1)
        if view is None:
            return
        self.lb_sessions.labels(name).set(view.sessions)
        for status in LBStatus:
            self.lb_status.labels(name, status.value).set(1 if status is view.status else 0)

    def set_budget(self, max_out: Mapping[str, int], holders: Iterable[Holder]) -> None:
        """Each pool's slots as one read of the budget showed them."""
        held = Counter_(h.pool for h in holders)
        for pool, allowed in max_out.items():
            self._set_slots(pool, held[pool], allowed)

    def set_budget_counts(self, counts: Iterable[PoolCount]) -> None:
        """Each pool's servers out (engine local), as one read of its load balancers
        showed them: every pool they report, so a pool no longer among them (a backend
        renamed, ``budget.pools`` reloaded) loses its series instead of showing its last
        count for ever."""
        counted = set()
        for count in counts:
            counted.add(count.pool)
            self._set_slots(count.pool, count.out, count.max_out)
        for pool in self._counted - counted:
            for state in ("held", "free"):
                with contextlib.suppress(KeyError):  # dropped already (forget_budget)
                    self.budget_slots.remove(pool, state)
        self._counted = counted

    def _set_slots(self, pool: str, out: int, allowed: int) -> None:
        self.budget_over.labels(pool)  # 0 until a drain goes over in this pool
        self.budget_slots.labels(pool, "held").set(out)
        self.budget_slots.labels(pool, "free").set(max(0, allowed - out))

    def budget_pools(self, pools: Iterable[str]) -> None:
        """The budget's pools, at 0 over budget: a counter that appears only at its first
        increase is one that ``increase()`` never sees rise."""
        for pool in pools:
            self.budget_over.labels(pool)

    def forget_budget(self) -> None:
        """Drop every pool's slot series (a reload moved the budget: the new one's pools
        appear at its first read)."""
        self.budget_slots.clear()
        self._counted = set()

    def keep_lbs(self, names: Iterable[str]) -> None:
        """Drop the series of load balancers no longer configured (after a reload)."""
        keep = set(names)
        for gauge in (self.lb_up, self.lb_sessions):
            for (name,) in _label_sets(gauge):
                if name not in keep:
                    gauge.remove(name)
        for name, status in _label_sets(self.lb_status):
            if name not in keep:
                self.lb_status.remove(name, status)

    def serve(self, listen: str) -> int:
        """Serve /metrics, /healthz and /readyz on ``listen`` in a thread; the port."""
        from prometheus_client import disable_created_metrics

        from drainer.listener import listen_thread

        # no *_created series (a child's creation time): no rule reads them, and with every
        # label value created at start they would double the counters a scrape carries
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self._listener = listen_thread(self, listen)
        return self._listener.port

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop(join_timeout=1.0)
            self._listener = None

    # -- for fleet alerts and dashboards (deploy/prometheus, deploy/grafana) -------------

    def _fleet_metrics(self) -> None:
        from prometheus_client import Gauge, Histogram

        self.out_since = Gauge(
            "drainer_out_of_service_since_timestamp_seconds",
            "When the node last left service (0: in service)",
            registry=self.registry,
        )
        self.out_for = Gauge(
            "drainer_out_for_event",
            "1 for the type of the last event the node is out for, 0 for the others",
            ["type"],
            registry=self.registry,
        )
        self.manual = Gauge(
            "drainer_manual_drain",
            "1 while the node is out by an operator's drainer drain, else 0",
            registry=self.registry,
        )
        self.out_seconds = Histogram(
            "drainer_out_of_service_seconds",
            "Time out of service per maintenance, observed when the node is back in service",
            ["type"],
            buckets=(60, 300, 600, 1200, 1800, 3600, 7200),
            registry=self.registry,
        )
        self.lb_info = Gauge(
            "drainer_lb_info",
            "1 for each configured load balancer: its adapter type and backend",
            ["lb", "type", "backend"],
            registry=self.registry,
        )
        # every label value a rule or a panel reads exists from the start, at 0, so that
        # increase() sees the first one (a series born at 1 shows no increase)
        for kind in EventType:
            self.events.labels(kind.value)
            self.out_for.labels(kind.value).set(0)
            self.out_seconds.labels(kind.value)
        self.out_seconds.labels(NO_EVENT)
        for result in DrainResult:
            self.drains.labels(result.value)
        for error in ERROR_KINDS:
            self.errors.labels(error)

    def set_record(self, new: Record, old: Record | None = None) -> None:
        """What the record says beyond its phase; ``old``: the record before a move,
        to observe the time out of service when the node is back."""
        self.out_since.set(new.out_since)
        for kind in EventType:
            self.out_for.labels(kind.value).set(1 if kind.value == new.out_for else 0)
        self.manual.set(1 if new.manual and new.phase is not Phase.IN_SERVICE else 0)
        if old is not None and old.out_since and new.phase is Phase.IN_SERVICE:
            out = max(0.0, new.since - old.out_since)
            self.out_seconds.labels(old.out_for or NO_EVENT).observe(out)

    def describe_lbs(self, entries: Mapping[str, AdapterConfig]) -> None:
        """``drainer_lb_info`` for the load balancers configured now, by name."""
        self.lb_info.clear()
        for name, entry in entries.items():
            self.lb_info.labels(name, entry.type, backend_of(entry)).set(1)


NO_EVENT = "none"  # the type of a time out of service without an event (a manual drain)
ERROR_KINDS = (
    "adapter",  # a load balancer refused (or failed) a drain, take-out, put-back...
    "adapter_read",  # a load balancer's state could not be read (drainer_lb_up says where)
    "approve", "budget", "budget_batch", "internal", "payload", "source", "state",
)  # fmt: skip


def backend_of(entry: AdapterConfig) -> str:
    """The pool the node is in at one load balancer: its backend, upstream, or the
    load balancer of ``drainer serve``; else the entry's name or type."""
    for key in ("backend", "upstream", "load_balancer"):
        value = getattr(entry, key, None)
        if isinstance(value, str) and value:
            return value
    return entry.name or entry.type


def _label_sets(gauge: Gauge) -> set[tuple[str, ...]]:
    """The label values of every series ``gauge`` has (in the order of its labels)."""
    return {
        tuple(sample.labels.values()) for metric in gauge.collect() for sample in metric.samples
    }


class NullMetrics(Metrics):
    """Records nothing, serves nothing: for a CLI command, whose process ends before
    anything could read its metrics, and a daemon with ``metrics.listen: null``. Same
    interface, no prometheus_client."""

    def __init__(self) -> None:  # Metrics.__init__ would register real metrics
        discard = cast(Any, _Discard())
        self.registry = discard
        self.probes = Probes()
        self._listener = None
        for name in Metrics.__annotations__:
            if name != "registry":
                setattr(self, name, discard)

    def keep_lbs(self, names: Iterable[str]) -> None:
        pass

    def forget_budget(self) -> None:
        pass

    def set_budget_counts(self, counts: Iterable[PoolCount]) -> None:
        pass

    def serve(self, listen: str) -> int:
        raise TypeError("NullMetrics serves nothing: use Metrics")


class _Discard:
    """A gauge, counter or histogram, with or without labels, that drops every value."""

    def labels(self, *values: str) -> _Discard:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, value: float) -> None:
        pass

    def remove(self, *values: str) -> None:
        pass

    def clear(self) -> None:
        pass
