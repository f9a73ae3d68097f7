"""The effectful shell around the core: read the world, step, save, act.

One ``turn`` holds the state directory's lock from load to the last action, so the
daemon and a CLI command never interleave. Inside a turn the record is saved after
every step and *before* the step's actions run; an action's outcome (a health result,
a finished put-back, a failed approval) is fed back as the next input. A crash at any
point therefore leaves on disk an intent that the next turn, in this process or the
next one, carries out again: every action is idempotent. Right after a drain the turn
reads the load balancers once more (a ``Recheck``), so that a drain with no session
left ends in the turn that started it rather than at the next one.

One exception, because out is the safe direction: when the record cannot be saved (a
full disk), a step that drains or takes the node out still acts, after noting the drain
in ``<state_dir>/unrecorded`` (drainer.unrecorded), which the next turn of any process
reads back as drainer's own drain; the record stays in memory and every step tries to
save it again. A put-back never runs while its record is unsaved.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from drainer.adapters.base import AdapterConfig, AdapterContext, AnyAdapterPlugin, LoadBalancer
from drainer.budget import BudgetError, Slots, budget_moved
from drainer.config import Config, HealthConfig
from drainer.core import (
    Action,
    Alert,
    Approved,
    ApproveEvent,
    ApproveFailed,
    CheckHealth,
    ChecksStarted,
    Drain,
    HealthResult,
    Input,
    Phase,
    Policy,
    PutBack,
    PutBackDone,
    Recheck,
    Record,
    ReleaseSlot,
    SlotDropped,
    SlotRefused,
    SlotTaken,
    StartChecks,
    TakeOut,
    TakeSlot,
    Tick,
    adopt_unrecorded,
    step,
    wants_lb_views,
    wants_recheck,
)
from drainer.errors import AdapterError, ConfigError, DrainerError, SourceError, StateError
from drainer.health import HealthCheck
from drainer.metrics import Metrics
from drainer.model import LBView, Listing, MaintenanceEvent
from drainer.plugins import adapter_plugins
from drainer.sources.base import EventSource
from drainer.store import Store
from drainer.unrecorded import Note, Unrecorded

log = logging.getLogger("drainer")


def read_boot_id(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"node.boot_id_path: cannot read {path}: {exc.strerror}") from exc


def build_lbs(
    config: Config,
    node: str,
    *,
    plugins: Mapping[str, AnyAdapterPlugin] | None = None,
    entries: dict[str, AdapterConfig] | None = None,
) -> dict[str, LoadBalancer]:
    """One LoadBalancer per configured instance (``plugins``: the registered adapters);
    ``entries``, when given, receives each one's configuration entry by name."""
    if plugins is None:
        plugins = adapter_plugins({entry.type for entry in config.load_balancers})
    context = AdapterContext(node=node, state_dir=config.state_dir)
    lbs: dict[str, LoadBalancer] = {}
    for i, entry in enumerate(config.load_balancers):
        for lb in plugins[entry.type].create(entry, context):
            if not isinstance(lb, LoadBalancer):  # a third-party adapter written structurally
                raise ConfigError(
                    f"load_balancers[{i}]: the {entry.type!r} adapter's {type(lb).__name__}"
                    " does not implement drainer's LoadBalancer protocol: have it subclass"
                    " drainer.LoadBalancer, which supplies the optional methods"
                )
            if lb.name in lbs:
                raise ConfigError(
                    f"load_balancers[{i}]: the name {lb.name!r} is used twice; set `name`"
                )
            lbs[lb.name] = lb
            if entries is not None:
                entries[lb.name] = entry
    return lbs


class Watcher(Protocol):
    """Told of every transition, whoever made it, and of every alert (the daemon's
    notifications, drainer.notify). Called inside the turn: must not block or raise."""

    def changed(self, old: Record, new: Record) -> None: ...

    def alert(self, record: Record, message: str) -> None: ...


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
    # one HTTP client for the engine's life (the daemon's: until a reload replaces it)
    check: Callable[[HealthConfig], tuple[bool, str]] = field(default_factory=HealthCheck)
    follow_disk: bool = False  # the daemon: log and count what other processes changed
    # The fleet budget (None: none configured); a voluntary drain re-asks it at most
    # every ``slot_retry`` seconds while it waits.
    slots: Slots | None = None
    slot_retry: float = 2.0
    _slot_asked: float = -1e18
    _slot_refusal: str = ""
    _slot_failed: bool = False  # the last ask got no answer: forced asks wait too
    _turn_views: Mapping[str, LBView | None] = field(default_factory=dict)
    # slots whose release failed: given back again at the next keep-alive while the node
    # is in service without a slot (else they block the pool until their lease expires)
    unreleased: set[str] = field(default_factory=set)
    _errors: dict[str, str] = field(default_factory=dict)
    # The last refusal of a drain, take-out or put-back, per load balancer (cleared by a
    # success): the CLI reports it instead of claiming an action that did not happen.
    refused: dict[str, str] = field(default_factory=dict)
    # Why the record could not be saved ("" while it can); _unsaved is the record the
    # disk should hold, _unsaved_over the one it holds instead.
    unsaved: str = ""
    _unsaved: Record | None = None
    _unsaved_over: Record | None = None
    _note: Note | None = None
    _noted: bool = False
    _adopted: Unrecorded | None = None  # the note last adopted: never adopted twice
    _seen: Record | None = None  # the record as this engine last loaded or saved it
    watchers: list[Watcher] = field(default_factory=list)

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
                # its own kind: DrainerLoadBalancerRefusing counts refused actions only
                self._error("adapter_read", name, f"{name}: cannot read state: {exc}")
            self.metrics.set_lb(name, out[name])
        return out

    def read_error(self, name: str) -> str:
        """Why the last read of load balancer ``name`` failed."""
        return self._errors.get(name, "unreachable")

    def turn(
        self, listing: Listing | None, given: Input | None = None
    ) -> tuple[Record, dict[str, LBView | None]]:
        """Run one input (a Tick when none is given) and everything it leads to."""
        with self.store.locked():
            saved = self._load()
            record = self._resume(saved)
            views: dict[str, LBView | None] = {}
            if given is None:
                events = listing.events if listing is not None else None
                damaged = listing.damaged if listing is not None else ()
                if wants_lb_views(record, events, self.policy, damaged):
                    views = self.views()
                self._turn_views = views
                incarnation = listing.incarnation if listing is not None else None
                partial = listing is not None and listing.partial
                given = Tick(self.boot_id, events, views, incarnation, damaged, partial)
            inputs: deque[Input] = deque([given])
            reread = False  # the load balancers were read again after a drain
            while inputs:
                now = self.clock()
                new, actions = step(record, inputs.popleft(), now, self.policy)
                if new != saved:
                    if self._save(new, saved):
                        saved = new
                    else:
                        actions = self._unrecorded(new, actions, now)
                began = new.phase is Phase.DRAINING and record.phase is not Phase.DRAINING
                if new != record:
                    self._observe(record, new)
                record = new
                for action in actions:
                    inputs.extend(self._run(action))
                if not reread and (began or any(isinstance(a, Drain) for a in actions)):
                    reread = True  # once: a load balancer that refuses must not loop
                    inputs.append(Recheck(self.views()))
            return record, views

    # -- a state that cannot be saved ------------------------------------------------------
    # Out is the safe direction: a drain or take-out whose record cannot be saved still
    # runs, noted in a pre-allocated file (drainer.unrecorded) that a restart reads; a
    # put-back never runs unrecorded. The record is kept in memory and saved again on
    # every step until the disk takes it.

    def _resume(self, saved: Record) -> Record:
        record = saved
        if self._unsaved is not None:
            if saved == self._unsaved_over:
                record = self._unsaved
            else:  # another process saved since: the disk takes writes again
                log.warning("the state on disk changed since it could not be saved; following it")
                self._unsaved = None
                self.unsaved = ""  # and the next time it cannot be saved is said again
                for key in ("state", "state:alert", "state:put back", "state:note"):
                    self._errors.pop(key, None)
        note = self._notes()
        found = note.read()
        try:
            note.prepare()
        except OSError as exc:
            log.debug("cannot allocate %s: %s", note.path, exc.strerror)
        if found is not None:
            self._noted = True
        # Once adopted, a note that cannot be blanked (or read) must not take the node out
        # again at every turn after it recovered or an operator put it back.
        if found is not None and found != self._adopted:
            self._adopted = found
            adopted = adopt_unrecorded(
                record,
                lbs=found.lbs,
                at=found.at,
                draining=found.draining,
                manual=found.manual,
                event=found.event,
                now=self.clock(),
                policy=self.policy,
            )
            if adopted != record:
                log.error("%s", adopted.alert, extra={"phase": adopted.phase.value})
                self._observe(record, adopted)
            record = adopted
        return record

    def _notes(self) -> Note:
        if self._note is None:
            self._note = Note(self.store.state_dir)
        return self._note

    def _save(self, new: Record, saved: Record) -> bool:
        try:
            self.store.save(new)
        except StateError as exc:
            if self._unsaved is None:
                self._unsaved_over = saved
            self._unsaved = new
            self.unsaved = str(exc)
            self._error("state", "state", f"{exc}; the node is still drained when needed")
            return False
        if self._unsaved is not None:
            log.info("the state is saved again", extra={"phase": new.phase.value})
        self._unsaved = self._unsaved_over = None
        self.unsaved = ""
        for key in ("state", "state:alert", "state:put back", "state:note"):
            self._errors.pop(key, None)
        if self._noted:
            try:
                self._notes().clear()
                self._noted = False
            except OSError as exc:
                log.warning("cannot blank %s: %s", self._notes().path, exc.strerror)
        return True

    def _unrecorded(self, new: Record, actions: list[Action], now: float) -> list[Action]:
        kept: list[Action] = [a for a in actions if not isinstance(a, PutBack)]
        if len(kept) < len(actions):
            self._error(
                "state",
                "state:put back",
                "not putting the node back while its state cannot be saved",
            )
        drains = any(isinstance(a, Drain | TakeOut) for a in actions)
        # An operator's drain of a node already out has no action to run, but its hold
        # must reach the note too, or the node goes back after the maintenance.
        if drains or (new.manual and new.phase is not Phase.IN_SERVICE):
            note = Unrecorded(
                lbs=new.owned,
                at=now,
                draining=new.phase is Phase.DRAINING,
                manual=new.manual,
                event=new.event,
            )
            try:
                self._notes().write(note)
                self._noted = True
            except OSError as exc:
                self._error(
                    "state",
                    "state:note",
                    f"cannot note the unrecorded drain in {self._notes().path} either:"
                    f" {exc.strerror}",
                )
        if drains:
            message = (
                f"the state cannot be saved ({self.unsaved}): taking the node out of"
                f" {', '.join(sorted(new.owned)) or 'nothing'} anyway; free the state directory"
            )
            if self._errors.get("state:alert") != message:
                self._errors["state:alert"] = message
                kept.append(Alert(message))
        return kept

    def should_recheck(self) -> bool:
        """Whether the record last seen says the node should be out (see ``recheck``)."""
        return self._seen is not None and wants_recheck(self._seen, self.policy)

    def recheck(self) -> Record | None:
        """Between two polls, while the node should be out: read the load balancers only
        and re-assert the drain where a reload or a restart forgot it; the source is not
        polled. Does nothing (None) unless the record last seen says the node is out."""
        if not self.should_recheck():
            return None
        record, _ = self.turn(None, Recheck(self.views()))  # the core checks the fresh record
        return record

    def adopt(self, old: Engine, *, budget_moved: bool = False) -> None:
        """Carry on from ``old`` (a configuration reload): the record it saw, its errors.
        ``budget_moved`` (``old.hand_over_slots``): the record's slot is dropped, and a
        node out registers with this engine's budget at once."""
        self._seen = old._seen
        self.unsaved, self._unsaved = old.unsaved, old._unsaved
        self._unsaved_over = old._unsaved_over
        self._noted, self._adopted = old._noted, old._adopted
        self.unreleased = set(old.unreleased)
        self._errors = {k: v for k, v in old._errors.items() if k.partition(":")[0] in self.lbs}
        if budget_moved:
            try:
                self.turn(None, SlotDropped())
            except DrainerError as exc:  # the next keep-alive or tick finds the slot gone
                log.error("budget: cannot drop the old budget's slot from the record: %s", exc)

    def hand_over_slots(self, new: Engine) -> bool:
        """Before a reload replaces this engine by ``new``: if the budget moved (engine,
        cluster, prefix or node id: ``budget_moved``), give back what this one holds (the
        record's slot, a take whose answer may have been lost, releases that failed), or
        its keys would hold a slot until their lease ends. True when the record names a
        slot or a wait for one, which ``new.adopt(..., budget_moved=True)`` then drops.
        Other pools in the same place keep the slot (the next keep-alive takes the new
        ones): given back, a node out would leave its slot free for a moment."""
        if not budget_moved(self.slots, new.slots):
            pools = [{p.name for p in s.pools} if s else set() for s in (self.slots, new.slots)]
            if pools[0] != pools[1]:
                self.metrics.forget_budget()  # the new pools' series appear at the next read
            return False
        before = self.slots.where if self.slots is not None else ("none",)
        after = new.slots.where if new.slots is not None else ("none",)
        try:
            record = self.store.load()
        except StateError:
            record = self._seen or Record()
        moved = f"budget: moved by the reload ({before[0]} -> {after[0]})"
        if self.slots is not None:
            try:
                for lease in sorted({record.slot, *self.unreleased}):
                    self.slots.release(lease)
            except BudgetError as exc:
                self._error(
                    "budget",
                    "budget:release",
                    f"{moved}: cannot give back the old budget's slot ({exc}); its lease frees it",
                )
            else:
                log.info("%s: gave back what the old budget held", moved)
        self.unreleased.clear()
        self.metrics.forget_budget()
        held = bool(record.slot or record.slot_wait)
        if held and record.phase is not Phase.IN_SERVICE:
            log.info("%s: the node is out, registering it with the new budget", moved)
        return held

    def _load(self) -> Record:
        record = self.store.load()
        if self._unsaved is not None and record == self._unsaved_over:
            return record  # our own record that could not be saved is the one in memory
        if self.follow_disk and self._seen is not None and record != self._seen:
            self._changed_elsewhere(self._seen, record)
        self._seen = record
        return record

    def _run(self, action: Action) -> list[Input]:
        if isinstance(action, Drain | TakeOut | PutBack | StartChecks):
            return self._on_lbs(action)
        if isinstance(action, TakeSlot | ReleaseSlot):
            return self._on_slot(action)
        if isinstance(action, ApproveEvent):
            refused = self._fence(action)
            if refused:
                self.metrics.errors.labels("approve").inc()
                return [ApproveFailed(action.event_id, refused)]
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
        self._alert(action.message)
        return []

    # -- the fleet budget ---------------------------------------------------------------

    def _on_slot(self, action: TakeSlot | ReleaseSlot) -> list[Input]:
        if self.slots is None:
            return []
        if isinstance(action, ReleaseSlot):
            try:
                self.slots.release(action.lease)
            except BudgetError as exc:  # tried again by keep_slot; its lease frees it else
                self.unreleased.add(action.lease)
                self._error("budget", "budget:release", f"budget: cannot give the slot back: {exc}")
            else:
                self.unreleased.discard(action.lease)
                log.info("budget: slot given back", extra={"phase": "in_service"})
            return []
        now = self.clock()
        # A forced ask (the node is out) goes at once after a refusal, but not at every
        # poll while the budget does not answer: each try costs timeout x endpoints.
        patient = not action.force or self._slot_failed
        if patient and now - self._slot_asked < self.slot_retry:
            return [SlotRefused(self._slot_refusal)]
        self._slot_asked = now
        self._slot_failed = False
        try:
            within = None if action.by is None else action.by - now
            admission = self.slots.take(
                action.event_id, action.event_type, force=action.force, within=within
            )
        except BudgetError as exc:
            self._slot_failed = True
            self._error("budget", "budget", f"budget: {exc}")
            self._slot_refusal = f"the budget cannot answer: {exc}"
            return [SlotRefused(self._slot_refusal)]
        self._errors.pop("budget", None)
        if admission.counts:  # local: what the load balancers showed
            self.metrics.set_budget_counts(admission.counts)
        else:
            max_out = {p.name: p.max_out for p in self.slots.pools}
            self.metrics.set_budget(max_out, admission.holders)
        if not admission.admitted:
            self.metrics.budget_waits.inc()
            held = ", ".join(sorted({h.node for h in admission.holders})) or "none"
            refusal = f"no free slot in {', '.join(admission.full)} (held by {held})"
            if refusal != self._slot_refusal:
                log.info("budget: waiting: %s", refusal)
            self._slot_refusal = refusal
            return [SlotRefused(refusal)]
        self.unreleased.clear()  # what this node holds is its slot again: never released
        over = bool(admission.full)
        if over:
            self._count_over(admission.full)
            log.warning("budget: over budget in %s: drained anyway", ", ".join(admission.full))
        else:
            log.info("budget: slot taken for %s", action.event_id or "a manual drain")
        self._slot_refusal = ""
        return [SlotTaken(admission.lease, over_budget=over, lbs=self._turn_views)]

    def _count_over(self, full: Sequence[str]) -> None:
        for pool in full:  # per pool: the alert names the pool with more out than allowed
            self.metrics.budget_over.labels(pool).inc()

    def _fence(self, action: ApproveEvent) -> str:
        """Why the approval must not go out ("" it may): the slot it relies on is gone."""
        if self.slots is None or not action.slot:
            return ""
        try:
            if self.slots.holds():
                return ""
        except BudgetError as exc:
            return f"the budget cannot confirm this node's slot: {exc}"
        return "this node's budget slot is gone (released or expired): not approved"

    def _warn_batch(self, event: MaintenanceEvent) -> None:
        """An event naming more VMs than a pool may have out: say so as soon as it is
        seen (the platform takes them together whatever the budget says)."""
        pools = self.slots.pools if self.slots is not None else ()
        if not pools or len(event.resources) <= min(p.max_out for p in pools):
            return
        allowed = min(p.max_out for p in pools)
        self.metrics.errors.labels("budget_batch").inc()
        log.warning(
            "event %s names %d VMs, more than the %d the budget lets %s have out at once:"
            " drains at their latest start will go over budget",
            event.event_id,
            len(event.resources),
            allowed,
            ", ".join(p.name for p in pools),
            extra={"event_id": event.event_id},
        )

    def keep_slot(self, record: Record) -> Input | None:
        """Keep the slot's lease alive (the daemon calls it every keep-alive interval);
        a lease that expired while the sidecar was down, or whose keys are gone, is taken
        again, forced (the node is out already), and fed back as ``SlotTaken``. A slot
        whose release failed is given back again while the node is in service without
        one."""
        in_service = record.phase is Phase.IN_SERVICE and not record.slot
        if self.slots is not None and in_service:
            for lease in sorted(self.unreleased):
                self._on_slot(ReleaseSlot(lease))
        if self.slots is None or not record.slot:
            return None
        try:
            alive = self.slots.keepalive(record.slot)
            if alive and self.slots.holds():
                return None
            why = "the slot's keys are gone" if alive else "the slot's lease expired"
            log.warning("budget: %s; registering the node again", why)
            event = record.event
            admission = self.slots.take(
                event.event_id if event else "", event.type_name if event else "manual", force=True
            )
        except BudgetError as exc:
            self._error("budget", "budget:keepalive", f"budget: keep-alive: {exc}")
            return None
        if not record.over_budget:  # newly over (its slot was lost, the pool filled up)
            self._count_over(admission.full)
        return SlotTaken(admission.lease, over_budget=bool(admission.full))

    def _on_lbs(self, action: Drain | TakeOut | PutBack | StartChecks) -> list[Input]:
        done: list[Input] = []
        verb = {
            Drain: "drain",
            TakeOut: "take out",
            PutBack: "put back",
            StartChecks: "start checks",
        }[type(action)]
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
                elif isinstance(action, StartChecks):
                    if lb.start_checks():
                        done.append(ChecksStarted(name))
                elif lb.put_back():
                    done.append(PutBackDone(name))
            except AdapterError as exc:
                self.refused[name] = str(exc)
                message = f"{name}: {verb}: {exc}"
                if self._errors.get(f"{name}:{verb}") != message:
                    self._alert(message)  # a load balancer refusing, once per message
                self._error("adapter", f"{name}:{verb}", message, lb=name)
            else:
                self.refused.pop(name, None)
                if self._errors.pop(f"{name}:{verb}", None):
                    log.info("%s: %s succeeded", name, verb, extra={"lb": name})
        return done

    def _warn_breach(self, lb: LoadBalancer) -> None:
        """A maintenance drains even below an adapter's minimum (the VM goes down anyway),
        but says so; ``drainer drain`` refuses instead (see the CLI)."""
        reason = lb.check_manual_drain()
        if reason:
            log.warning(
                "%s: %s; draining anyway: the maintenance takes the node down regardless",
                lb.name,
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

    def _changed_elsewhere(self, old: Record, new: Record) -> None:
        """Another process (``drainer drain``, ``undrain``) changed the record since this
        engine last saw it: say so in this process's log and metrics. A slot that process
        gave back is given back here too (its release may have failed, and that process
        has exited with the retry)."""
        self._tell(old, new)
        self.metrics.set_phase(new.phase, new.since)
        self.metrics.set_record(new, old)
        if old.slot and not new.slot and new.phase is Phase.IN_SERVICE:
            self.unreleased.add(old.slot)
        if new.phase is old.phase and new.manual == old.manual:
            return
        extra = {"phase": new.phase.value, "note": new.note}
        held = " (manual)" if new.manual else ""
        log.info(
            "%s -> %s%s by another process: %s",
            old.phase.value,
            new.phase.value,
            held,
            new.note or "no note",
            extra=extra,
        )

    def _observe(self, old: Record, new: Record) -> None:
        self._seen = new
        self._tell(old, new)
        if new.event is not None and (
            old.event is None or old.event.event_id != new.event.event_id
        ):
            self.metrics.events.labels(new.event.event_type.value).inc()
            self._warn_batch(new.event)
        self.metrics.set_record(new, old)
        if new.phase is old.phase:
            return
        self.metrics.set_phase(new.phase, new.since)
        if old.phase is Phase.DRAINING and new.drain_result is not None:
            self.metrics.drains.labels(new.drain_result.value).inc()
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

    # -- watchers (notifications) ----------------------------------------------------------

    def _tell(self, old: Record, new: Record) -> None:
        if new.phase is old.phase:
            return
        for watcher in self.watchers:
            try:
                watcher.changed(old, new)
            except Exception:  # a notification must never stop a drain
                log.exception("telling %s of a transition failed", type(watcher).__name__)

    def _alert(self, message: str) -> None:
        record = self._seen or Record()
        for watcher in self.watchers:
            try:
                watcher.alert(record, message)
            except Exception:
                log.exception("telling %s of an alert failed", type(watcher).__name__)
