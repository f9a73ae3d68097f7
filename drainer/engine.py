"""The effectful shell around the core: read the world, step, save, act.

One ``turn`` holds the state directory's lock from load to the last action, so the
daemon and a CLI command never interleave. Inside a turn the record is saved after
every step and *before* the step's actions run; an action's outcome (a health result,
a finished put-back, a failed approval) is fed back as the next input. A crash at any
point therefore leaves on disk an intent that the next turn, in this process or the
next one, carries out again: every action is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from drainer.adapters.base import AdapterContext, LoadBalancer
from drainer.config import Config, HealthConfig, adapter_plugins
from drainer.core import (
    Action,
    Alert,
    Approved,
    ApproveEvent,
    ApproveFailed,
    CheckHealth,
    Drain,
    HealthResult,
    Input,
    Phase,
    Policy,
    PutBack,
    PutBackDone,
    Record,
    TakeOut,
    Tick,
    step,
    wants_lb_views,
)
from drainer.errors import AdapterError, ConfigError, SourceError
from drainer.health import check_health
from drainer.metrics import Metrics
from drainer.model import LBView, Listing
from drainer.sources.base import EventSource
from drainer.store import Store

log = logging.getLogger("drainer")


def read_boot_id(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"node.boot_id_path: cannot read {path}: {exc.strerror}") from exc


def build_lbs(config: Config, node: str) -> dict[str, LoadBalancer]:
    plugins = adapter_plugins()
    context = AdapterContext(node=node, state_dir=config.state_dir)
    lbs: dict[str, LoadBalancer] = {}
    for i, entry in enumerate(config.load_balancers):
        for lb in plugins[entry.type].create(entry, context):
            if lb.name in lbs:
                raise ConfigError(
                    f"load_balancers[{i}]: the name {lb.name!r} is used twice; set `name`"
                )
            lbs[lb.name] = lb
    return lbs


@dataclass
class Engine:
    policy: Policy
    lbs: dict[str, LoadBalancer]
    store: Store
    source: EventSource
    boot_id: str
    health: HealthConfig
    metrics: Metrics = field(default_factory=Metrics)
    clock: Callable[[], float] = time.time
    check: Callable[[HealthConfig], tuple[bool, str]] = check_health
    _errors: dict[str, str] = field(default_factory=dict)

    def views(self) -> dict[str, LBView | None]:
        """Each load balancer's view of the node; None where it could not be read."""
        out: dict[str, LBView | None] = {}
        for name, lb in self.lbs.items():
            try:
                out[name] = lb.state()
                if self._errors.pop(name, None):
                    log.info("%s: reachable again", name, extra={"lb": name})
            except AdapterError as exc:
                out[name] = None
                self._error("adapter", name, f"{name}: cannot read state: {exc}")
        return out

    def read_error(self, name: str) -> str:
        """Why the last read of load balancer ``name`` failed."""
        return self._errors.get(name, "unreachable")

    def turn(
        self, listing: Listing | None, given: Input | None = None
    ) -> tuple[Record, dict[str, LBView | None]]:
        """Run one input (a Tick when none is given) and everything it leads to."""
        with self.store.locked():
            record = self.store.load()
            views: dict[str, LBView | None] = {}
            if given is None:
                events = listing.events if listing is not None else None
                damaged = listing.damaged if listing is not None else ()
                if wants_lb_views(record, events, self.policy, damaged):
                    views = self.views()
                incarnation = listing.incarnation if listing is not None else None
                given = Tick(self.boot_id, events, views, incarnation, damaged)
            inputs: deque[Input] = deque([given])
            while inputs:
                now = self.clock()
                new, actions = step(record, inputs.popleft(), now, self.policy)
                if new != record:
                    self.store.save(new)
                    self._observe(record, new)
                record = new
                for action in actions:
                    inputs.extend(self._run(action))
            return record, views

    def _run(self, action: Action) -> list[Input]:
        if isinstance(action, Drain | TakeOut | PutBack):
            return self._on_lbs(action)
        if isinstance(action, ApproveEvent):
            try:
                self.source.approve(action.event_id)
            except SourceError as exc:
                self.metrics.errors.labels("approve").inc()
                return [ApproveFailed(action.event_id, str(exc))]
            log.info(
                "approved event %s: the maintenance may start now",
                action.event_id,
                extra={"event_id": action.event_id},
            )
            return [Approved(action.event_id)]
        if isinstance(action, CheckHealth):
            ok, detail = self.check(self.health)
            log.debug("health check: %s", detail)
            return [HealthResult(ok, detail)]
        assert isinstance(action, Alert)
        log.warning("%s", action.message)
        return []

    def _on_lbs(self, action: Drain | TakeOut | PutBack) -> list[Input]:
        done: list[Input] = []
        verb = {Drain: "drain", TakeOut: "take out", PutBack: "put back"}[type(action)]
        for name in action.lbs:
            lb = self.lbs.get(name)
            if lb is None:  # removed from the configuration since it was drained
                log.warning("%s: no longer configured; forgetting it", name)
                done.append(PutBackDone(name))
                continue
            try:
                if isinstance(action, Drain):
                    self._warn_breach(lb)
                    lb.drain()
                elif isinstance(action, TakeOut):
                    lb.take_out(kill=action.kill)
                elif lb.put_back():
                    done.append(PutBackDone(name))
            except AdapterError as exc:
                self._error("adapter", f"{name}:{verb}", f"{name}: {verb}: {exc}", lb=name)
            else:
                if self._errors.pop(f"{name}:{verb}", None):
                    log.info("%s: %s succeeded", name, verb, extra={"lb": name})
        return done

    def _warn_breach(self, lb: LoadBalancer) -> None:
        """A maintenance drains even below an adapter's minimum (the VM goes down anyway),
        but says so; ``drainer drain`` refuses instead (see the CLI)."""
        check = getattr(lb, "check_manual_drain", None)
        reason = check() if callable(check) else None
        if reason:
            log.warning(
                "%s; draining anyway: the maintenance takes the node down regardless",
                reason,
                extra={"lb": lb.name},
            )

    def _error(self, kind: str, key: str, message: str, *, lb: str = "") -> None:
        """Count every error, log it once: read errors are keyed by the load balancer's
        name (``drainer status`` shows them), action errors by name and verb."""
        self.metrics.errors.labels(kind).inc()
        if self._errors.get(key) != message:
            self._errors[key] = message
            log.error("%s", message, extra={"lb": lb or key})

    def _observe(self, old: Record, new: Record) -> None:
        if new.event is not None and (
            old.event is None or old.event.event_id != new.event.event_id
        ):
            self.metrics.events.labels(new.event.event_type.value).inc()
        if new.phase is old.phase:
            return
        self.metrics.set_phase(new.phase)
        if old.phase is Phase.DRAINING:
            result = "deadline" if "deadline" in new.note else "drained"
            if new.phase is Phase.RECOVERING:
                result = "cancelled"
            self.metrics.drains.labels(result).inc()
        event = new.event
        extra = {
            "phase": new.phase.value,
            "event_id": event.event_id if event else "",
            "event_type": event.type_name if event else "",
            "note": new.note,
        }
        about = f" [{event.type_name} {event.event_id}]" if event else ""
        level = logging.WARNING if new.phase is Phase.HELD and not new.manual else logging.INFO
        log.log(level, "%s: %s%s", new.phase.value, new.note, about, extra=extra)
