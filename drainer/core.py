"""The drain state machine: ``step(record, input, now, policy) -> (record, actions)``.

Pure: no I/O, no clock, nothing imported from adapters, sources or the CLI. The shell
(``drainer.engine``) saves the returned record *before* it runs the actions, so a crash
at any point leaves a record whose intent is already on disk; every action is
idempotent and the next tick re-derives whatever is missing from what the load
balancers report. Hence the invariants:

- ``owned`` names the load balancers drainer itself took the node out of and has not
  yet put it back into. Only those are ever put back automatically; a load balancer
  where an operator had already taken the node out is never owned. A drain the shell
  ran but could not record (a full disk) comes back through ``adopt_unrecorded``:
  owned, as drainer's own.
- A node leaves the pool only through ``draining`` and comes back only through
  ``recovering`` after ``policy.health_successes`` consecutive health checks, once no
  event for this node is left (or by an operator's ``undrain``).
- ``held`` and ``removed`` never end by themselves: a person runs ``drainer undrain``.
- An event the node is out for is over only once its disappearance held: it stayed
  unlisted on every poll for ``policy.gone_after``, or ``policy.gone_after_doubt`` when
  polls failed or the ``DocumentIncarnation`` went backwards since it was last listed
  (a re-enabled metadata service lists nothing for minutes). After the node rebooted
  while out for it, a newer document that does not list it is enough (no doubt). An
  event that is listed again within the window was never over. A partial listing
  (part of the cloud's notices unread) that does not list it counts as a failed poll,
  and like one it puts no node back: a notice may be on the part not read.
  When it vanishes while
  another event for this VM of the same type appears, that is the same maintenance
  under a new id.
- An event that names this VM is never dropped: one the source could not read well
  (``Damaged``) is for this VM when its text names the VM, and is then due now and
  never approved; an unknown status is pending, drained at once and never approved.

Phases (``TRANSITIONS`` holds every move; ``_enter`` refuses any other):
    in_service --event due / manual drain--> draining --drained or deadline--> drained
    drained --event started--> in_maintenance --event gone or reboot--> recovering
    draining/drained --event cancelled--> recovering --healthy, no event--> in_service
    recovering --health deadline--> held;  any --Preempt/Terminate drained--> removed
    any --undrain--> recovering

A turn goes on while its own results allow it: a health result that makes the node
healthy puts it back in the same turn, and the shell re-reads the load balancers right
after a drain (a ``Recheck``), so a drain with no session left ends at once. While the
node recovers, the load balancers' own health checks run too (``StartChecks``), with
the node still getting no request, so that both sides agree as soon as possible.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from drainer.model import (
    Approve,
    Damaged,
    EventStatus,
    EventType,
    LBStatus,
    LBView,
    MaintenanceEvent,
    StrEnum,
)


class Phase(StrEnum):
    IN_SERVICE = "in_service"
    DRAINING = "draining"
    DRAINED = "drained"
    IN_MAINTENANCE = "in_maintenance"
    RECOVERING = "recovering"
    HELD = "held"
    REMOVED = "removed"


OUT_PHASES = frozenset(
    {Phase.DRAINED, Phase.IN_MAINTENANCE, Phase.RECOVERING, Phase.HELD, Phase.REMOVED}
)

# The phases each phase may go to. An operator's undrain goes to recovering from
# anywhere; a node comes back in service only from recovering; an unrecorded drain found
# at the load balancers (``adopt_unrecorded``) takes an in-service node straight out.
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    Phase.IN_SERVICE: frozenset({Phase.DRAINING, Phase.DRAINED, Phase.HELD, Phase.RECOVERING}),
    Phase.DRAINING: frozenset(
        {Phase.DRAINED, Phase.IN_MAINTENANCE, Phase.HELD, Phase.REMOVED, Phase.RECOVERING}
    ),
    Phase.DRAINED: frozenset({Phase.IN_MAINTENANCE, Phase.REMOVED, Phase.RECOVERING}),
    Phase.IN_MAINTENANCE: frozenset({Phase.REMOVED, Phase.RECOVERING}),
    Phase.RECOVERING: frozenset({Phase.IN_SERVICE, Phase.DRAINING, Phase.HELD, Phase.RECOVERING}),
    Phase.HELD: frozenset({Phase.REMOVED, Phase.RECOVERING}),
    Phase.REMOVED: frozenset({Phase.RECOVERING}),
}


class DrainResult(StrEnum):
    """How a drain ended: the ``result`` of ``drainer_drains_total``."""

    DRAINED = "drained"  # no connections left
    DEADLINE = "deadline"  # the drain deadline passed first
    CANCELLED = "cancelled"  # back to recovering: the event went, a reboot, an undrain


class Reaction(StrEnum):
    """What an event type does to this node."""

    DRAIN = "drain"  # out of the pool, back after the maintenance
    REMOVE = "remove"  # out of the pool for good
    IGNORE = "ignore"


@dataclass(frozen=True)
class Rule:
    reaction: Reaction
    min_duration: float = 0.0  # react only if DurationInSeconds is -1 or at least this


@dataclass(frozen=True, kw_only=True)
class Policy:
    """The configuration as the core needs it."""

    node_names: frozenset[str]
    lbs: tuple[str, ...]
    rules: Mapping[EventType, Rule]
    approve: Approve = Approve.SOLE
    drain_timeout: float = 300.0
    drain_margin: float = 30.0  # a drain that will not be approved ends this long before NotBefore
    kill_at_deadline: bool = False
    health_interval: float = 2.0
    health_successes: int = 3
    health_deadline: float = 2700.0
    approve_retry: float = 60.0
    gone_after: float = 5.0  # an event the node is out for is over once unlisted this long
    gone_after_doubt: float = 120.0  # ...this long after failed polls or an incarnation reset
    budget: bool = False  # a fleet budget gates voluntary drains (slots: TakeSlot)


@dataclass(frozen=True, kw_only=True)
class Record:
    """Everything drainer must remember across a crash or a reboot."""

    phase: Phase = Phase.IN_SERVICE
    event: MaintenanceEvent | None = None  # the event handled or waited for
    boot_id: str = ""
    owned: frozenset[str] = frozenset()
    manual: bool = False  # an operator's drain: held until undrain
    undrain: bool = False  # an operator's undrain is putting the node back
    since: float = 0.0  # when the phase began
    drain_deadline: float = 0.0
    approved_at: float | None = None
    health_ok: int = 0  # consecutive passing health checks
    next_health: float = 0.0
    health_detail: str = ""
    rebooted: bool = False  # the node rebooted while out for ``event``
    dismissed: tuple[str, ...] = ()  # event ids an operator's undrain told us to let be
    alert: str = ""  # the last thing a person should know about
    note: str = ""  # why the last transition happened
    drain_result: DrainResult | None = None  # how the last drain ended
    # Load balancers whose own health check of the node runs while it recovers (it shows
    # there as draining, with no request sent to it): see StartChecks.
    checking: frozenset[str] = frozenset()
    blind: bool = False  # the last poll failed or was partial: a new event may be unseen
    # What the last documents said, to tell a vanished event from a blind metadata service:
    incarnation: int | None = None  # DocumentIncarnation of the last document read
    listed: tuple[str, ...] = ()  # this node's event ids in the last document read
    listed_in: int | None = None  # the DocumentIncarnation that last listed ``event``
    missing_since: float | None = None  # when ``event`` was first found unlisted
    missing_polls: int = 0  # documents in a row without ``event``
    doubt: bool = False  # polls failed or the incarnation went back since ``event`` was listed
    # For the metrics of a maintenance that spans a reboot: since when the node is out of
    # service (0: in service) and the type of the last event it was out for ("": none).
    out_since: float = 0.0
    out_for: str = ""
    # The fleet budget: the lease of the slot this node holds ("" none), whether it was
    # taken over budget (a drain the platform forced: never approved), why a voluntary
    # drain waits for one ("" when it does not).
    slot: str = ""
    over_budget: bool = False
    slot_wait: str = ""


# Inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """One look at the world. ``events`` is None when the source could not be read;
    ``lbs`` holds a view per load balancer read this tick (None: unreachable);
    ``incarnation``, ``damaged`` and ``partial`` come from the same listing as ``events``
    (``partial``: an event it does not list may still be on)."""

    boot_id: str
    events: tuple[MaintenanceEvent, ...] | None
    lbs: Mapping[str, LBView | None] = field(default_factory=dict)
    incarnation: int | None = None
    damaged: tuple[Damaged, ...] = ()
    partial: bool = False


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class PutBackDone:
    lb: str


@dataclass(frozen=True)
class ChecksStarted:
    """The load balancer ``lb`` runs its own health check of the node, which gets no
    request there: it shows as draining until put back."""

    lb: str


@dataclass(frozen=True)
class Approved:
    event_id: str


@dataclass(frozen=True)
class ApproveFailed:
    event_id: str
    detail: str


@dataclass(frozen=True)
class ManualDrain:
    slot: str = ""  # the budget slot the CLI took for it (the lease); "" none
    over_budget: bool = False  # ...taken with --force while the pool was full


@dataclass(frozen=True)
class ManualUndrain:
    pass


@dataclass(frozen=True)
class Recheck:
    """A look at the load balancers only, between two polls of the source, while the node
    should be out: re-asserts the drain (a reload or a restart forgot it) and, while
    draining, may finish the drain. Events are neither read nor forgotten."""

    lbs: Mapping[str, LBView | None]


@dataclass(frozen=True)
class SlotTaken:
    """The budget gave this node its slots (``lease`` holds them). ``lbs``: the views of
    the turn that asked, for the drain the slot lets start."""

    lease: str
    over_budget: bool = False
    lbs: Mapping[str, LBView | None] = field(default_factory=dict)


@dataclass(frozen=True)
class SlotRefused:
    """No slot now: none free, or the budget could not answer (never a free slot)."""

    detail: str


@dataclass(frozen=True)
class SlotDropped:
    """A reload moved the budget (engine, endpoints, prefix, pools, node id): the slot the
    record names was given back to the old one; a node out registers with the new one."""


Input = (
    Tick
    | SlotTaken
    | SlotRefused
    | SlotDropped
    | HealthResult
    | PutBackDone
    | ChecksStarted
    | Approved
    | ApproveFailed
    | ManualDrain
    | ManualUndrain
    | Recheck
)


# Actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drain:
    lbs: tuple[str, ...]


@dataclass(frozen=True)
class TakeOut:
    lbs: tuple[str, ...]
    kill: bool = False


@dataclass(frozen=True)
class PutBack:
    lbs: tuple[str, ...]


@dataclass(frozen=True)
class StartChecks:
    """Let each load balancer's own health check of the node run while the node still
    gets no request (idempotent; re-asserted while the node recovers)."""

    lbs: tuple[str, ...]


@dataclass(frozen=True)
class ApproveEvent:
    event_id: str
    slot: str = ""  # the budget slot to confirm still held first ("" no budget)


@dataclass(frozen=True)
class CheckHealth:
    pass


@dataclass(frozen=True)
class Alert:
    message: str


@dataclass(frozen=True)
class TakeSlot:
    """Ask the budget for this node's slots; ``force``: the platform takes the VM anyway,
    so take them even when full (marked over budget)."""

    event_id: str
    event_type: str
    force: bool = False
    # a voluntary ask: the latest start, when the drain goes anyway (an engine that
    # pauses before it answers never pauses past it)
    by: float | None = None


@dataclass(frozen=True)
class ReleaseSlot:
    lease: str  # "" whatever this node holds (an ask whose answer may have been lost)


Action = (
    Drain
    | TakeOut
    | PutBack
    | StartChecks
    | ApproveEvent
    | CheckHealth
    | Alert
    | TakeSlot
    | ReleaseSlot
)
Result = tuple[Record, list[Action]]


# Pure helpers -------------------------------------------------------------------------


def reaction(event: MaintenanceEvent, policy: Policy) -> Reaction:
    rule = policy.rules.get(event.event_type, Rule(Reaction.DRAIN))
    if rule.reaction is Reaction.IGNORE:
        return Reaction.IGNORE
    if event.duration != -1 and event.duration < rule.min_duration:
        return Reaction.IGNORE
    return rule.reaction


def _folded(names: Iterable[str]) -> set[str]:
    return {name.casefold() for name in names}  # Azure's VM names ignore case


def names_this_vm(event: MaintenanceEvent, policy: Policy) -> bool:
    return bool(_folded(policy.node_names) & _folded(event.resources))


def _mentions(text: str, name: str) -> bool:
    """``name`` as a whole word in ``text``: ``web-1`` in ``"web-1,web-2"``, not in ``web-10``."""
    return re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", text, re.IGNORECASE) is not None


def salvage(damaged: tuple[Damaged, ...], policy: Policy) -> tuple[MaintenanceEvent, ...]:
    """The damaged entries that may be for this VM, as events due now and never approved
    (whom else they are for is unknown). The others are skipped (the source logs them)."""
    out = []
    for entry in damaged:
        event = entry.event
        names = {n for n in policy.node_names if _mentions(entry.text, n)}
        if not names and not names_this_vm(event, policy):
            continue
        status = event.status if event.status is EventStatus.STARTED else EventStatus.UNKNOWN
        out.append(
            replace(
                event,
                resources=tuple(dict.fromkeys((*event.resources, *sorted(names)))),
                status=status,
                raw_status=event.raw_status or event.status.value,
                not_before=None,
                problems=(*event.problems, "it names this VM: due now, never approved"),
            )
        )
    return tuple(out)


def relevant(
    events: tuple[MaintenanceEvent, ...], policy: Policy, dismissed: tuple[str, ...] = ()
) -> list[MaintenanceEvent]:
    """The events this node must act on: naming this VM, not ignored, not dismissed."""
    return [
        e
        for e in events
        if names_this_vm(e, policy)
        and e.event_id not in dismissed
        and reaction(e, policy) is not Reaction.IGNORE
    ]


def approvable(event: MaintenanceEvent, policy: Policy) -> bool:
    if event.status is not EventStatus.SCHEDULED:
        return False
    sole = _folded(event.resources) <= _folded(policy.node_names)
    if policy.approve is Approve.ALWAYS:
        # Under a budget the other VMs the event names may be waiting in service for a
        # slot: an approval would start their maintenance undrained.
        return sole or not policy.budget
    return policy.approve is Approve.SOLE and sole


def drain_due(event: MaintenanceEvent, policy: Policy) -> float | None:
    """When the drain must start; None means at once. A drain that will not be approved,
    a removal's too, ends ``drain_margin`` before NotBefore: an AWS retirement announced
    weeks ahead does not take the node out for weeks."""
    if (
        event.status is not EventStatus.SCHEDULED  # started, or a status nobody knows
        or event.not_before is None
        or approvable(event, policy)
    ):
        return None
    return event.not_before - policy.drain_timeout - policy.drain_margin


def wants_lb_views(
    record: Record,
    events: tuple[MaintenanceEvent, ...] | None,
    policy: Policy,
    damaged: tuple[Damaged, ...] = (),
) -> bool:
    """Whether the shell should read the load balancers this tick (idle: no). A drain may
    start from a remembered event on a tick whose source failed: read them then too."""
    if record.phase is not Phase.IN_SERVICE or record.event is not None:
        return True
    if events is None:
        return False
    return bool(relevant(events + salvage(damaged, policy), policy, record.dismissed))


def wants_recheck(record: Record, policy: Policy) -> bool:
    """Whether the load balancers should be re-checked between polls: while the node is
    meant to be out of them, and while it recovers (health checks run at their own
    interval, and a put-back that waits for a load balancer's own check is tried again),
    not poll after poll."""
    return record.phase is not Phase.IN_SERVICE


def is_due(event: MaintenanceEvent, now: float, policy: Policy) -> bool:
    due = drain_due(event, policy)
    return due is None or now >= due


def waits_for_slot(event: MaintenanceEvent, now: float, policy: Policy) -> bool:
    """Whether the drain for ``event`` waits for a budget slot: a voluntary one (a
    scheduled Reboot, Redeploy or Freeze) before its latest start, NotBefore minus the
    drain timeout and margin. A removal, a started event, a Preempt or Terminate, and any
    drain at its latest start never wait: the platform takes the VM anyway."""
    if not policy.budget or reaction(event, policy) is not Reaction.DRAIN:
        return False
    if event.event_type in (EventType.PREEMPT, EventType.TERMINATE, EventType.UNKNOWN):
        return False
    latest = _latest_start(event, policy)
    if event.status is not EventStatus.SCHEDULED or latest is None:
        return False
    return now < latest


def _latest_start(event: MaintenanceEvent, policy: Policy) -> float | None:
    """NotBefore minus the drain timeout and margin: a drain that waits goes then anyway."""
    if event.not_before is None:
        return None
    return event.not_before - policy.drain_timeout - policy.drain_margin


def _pick(candidates: list[MaintenanceEvent], policy: Policy) -> MaintenanceEvent | None:
    """The most urgent event: a removal, then a started one, then the earliest drain."""

    def urgency(e: MaintenanceEvent) -> tuple[bool, bool, float, float, str]:
        due = drain_due(e, policy)
        return (
            reaction(e, policy) is not Reaction.REMOVE,
            e.status is not EventStatus.STARTED,
            -math.inf if due is None else due,
            e.not_before or 0.0,
            e.event_id,
        )

    return min(candidates, key=urgency, default=None)


def _listed(
    event: MaintenanceEvent | None, candidates: list[MaintenanceEvent]
) -> MaintenanceEvent | None:
    """``event`` as listed now, or None when it is gone."""
    if event is None:
        return None
    return next((e for e in candidates if e.event_id == event.event_id), None)


def _follow(record: Record, event: MaintenanceEvent | None) -> Record:
    """Follow ``event``; another event needs an approval of its own."""
    same = event is not None and record.event is not None
    same = same and record.event.event_id == event.event_id  # type: ignore[union-attr]
    if same:
        return replace(record, event=event)
    # listed in the document just read: as the next read would note (a drain may end,
    # and the node reboot, before there is a next one)
    listed = event is not None and event.event_id in record.listed
    return replace(
        record,
        event=event,
        approved_at=None,
        missing_since=None,
        missing_polls=0,
        rebooted=False,
        listed_in=record.incarnation if listed else None,
    )


@dataclass(frozen=True)
class _Seen:
    """The followed event as one tick sees it."""

    record: Record  # with what this listing taught (incarnation, ids, disappearance)
    event: MaintenanceEvent | None  # as listed now, re-issued, or remembered while its
    # disappearance does not hold yet; None when it is gone (or none is followed)
    gone: str  # why it is gone, for the note
    actions: list[Action]


def _inc(incarnation: int | None) -> str:
    return "?" if incarnation is None else str(incarnation)


def _moved_on(listed_in: int | None, incarnation: int | None) -> bool:
    return listed_in is not None and incarnation is not None and incarnation > listed_in


def _track(
    record: Record,
    candidates: list[MaintenanceEvent] | None,
    tick: Tick,
    now: float,
    policy: Policy,
    *,
    patient: bool,
) -> _Seen:
    """Where ``record.event`` went in this listing. ``patient``: the node is out for it,
    so its disappearance is believed only once it held (see the module docstring)."""
    event = record.event
    if candidates is None:
        if event is not None and patient and not record.doubt:
            record = replace(record, doubt=True)  # the next empty answer is trusted less
        return _Seen(record, event, "", [])
    known, before = set(record.listed), record.incarnation
    incarnation = tick.incarnation
    went_back = incarnation is not None and (
        (record.incarnation is not None and incarnation < record.incarnation)
        or (record.listed_in is not None and incarnation <= record.listed_in)
    )
    record = replace(
        record, incarnation=incarnation, listed=tuple(sorted(e.event_id for e in candidates))
    )
    listed = _listed(event, candidates)
    if event is not None and listed is None and tick.partial:
        # not read, rather than not listed: kept, as through a failed poll
        if patient and not record.doubt:
            record = replace(record, doubt=True)
        return _Seen(record, event, "", [])
    if event is None or listed is not None or not patient:
        actions: list[Action] = []
        if listed is not None and record.missing_since is not None:
            actions.append(
                Alert(
                    f"event {listed.event_id} ({listed.type_name}) is listed again after "
                    f"{now - record.missing_since:.0f}s unlisted (DocumentIncarnation "
                    f"{_inc(record.listed_in)} -> {_inc(before)} without it -> "
                    f"{_inc(incarnation)} with it): it was never over"
                )
            )
        record = replace(
            record,
            missing_since=None,
            missing_polls=0,
            doubt=False,
            listed_in=incarnation if listed is not None else None,
        )
        return _Seen(record, listed, "", actions)
    seen_in = f"DocumentIncarnation {_inc(record.listed_in)} -> {_inc(incarnation)}"
    # Microsoft's mock gives every status change a new id (Scheduled X, then Started Y):
    # a new event of the same type that has moved on is the same maintenance. A new
    # Scheduled one is another maintenance, with an approval of its own.
    reissued = [
        e
        for e in candidates
        if e.type_name == event.type_name
        and e.event_id not in known
        and e.status is not EventStatus.SCHEDULED
    ]
    if reissued:
        new = _pick(reissued, policy)
        assert new is not None
        record = replace(
            record, missing_since=None, missing_polls=0, doubt=False, listed_in=incarnation
        )
        message = (
            f"event {event.event_id} ({event.type_name}) is listed as {new.event_id} "
            f"({new.status_name}) now ({seen_in}): followed as the same maintenance"
        )
        return _Seen(record, new, "", [Alert(message)])
    doubt = record.doubt or went_back
    why_doubt = " and ".join(
        reason
        for reason, holds in (
            ("after failed polls", record.doubt),
            ("the DocumentIncarnation went back", went_back),
        )
        if holds
    )
    since = now if record.missing_since is None else record.missing_since
    polls = record.missing_polls + 1
    window = policy.gone_after_doubt if doubt else policy.gone_after
    if not doubt and record.rebooted and _moved_on(record.listed_in, incarnation):
        # The node rebooted while out for the event (its impact, seen by drainer itself),
        # and the document that no longer lists it is a newer one than the last that did:
        # over now; the window is for an unlisting that nothing else confirms.
        window = 0.0
    if now - since >= window:
        why = f"event {event.event_id} unlisted for {now - since:.0f}s over {polls} polls"
        why += f" ({seen_in}, {why_doubt})" if doubt else f" ({seen_in})"
        record = replace(record, missing_since=None, missing_polls=0, doubt=False)
        return _Seen(replace(record, event=None), None, why, [])
    actions = []
    if doubt and (record.missing_since is None or not record.doubt):
        actions.append(
            Alert(
                f"event {event.event_id} ({event.type_name}) is not listed ({seen_in}), "
                f"{why_doubt}: taken as over only if it stays unlisted for {window:g}s"
            )
        )
    record = replace(record, missing_since=since, missing_polls=polls, doubt=doubt)
    return _Seen(record, event, "", actions)


def _enter(record: Record, phase: Phase, now: float, note: str, **changes: object) -> Record:
    assert phase in TRANSITIONS[record.phase], f"{record.phase} -> {phase} is not a transition"
    if record.phase is Phase.DRAINING and phase is Phase.RECOVERING:
        changes["drain_result"] = DrainResult.CANCELLED
    assert record.phase is not Phase.DRAINING or "drain_result" in changes, "how it ended?"
    changes.update(_out_of_service(record, phase, now, changes.get("event", record.event)))
    if phase is not Phase.RECOVERING:  # the load balancers' own checks ran for a recovery
        changes.setdefault("checking", frozenset())
    return replace(record, phase=phase, since=now, note=note, **changes)  # type: ignore[arg-type]


def _out_of_service(record: Record, phase: Phase, now: float, event: object) -> dict[str, object]:
    """``out_since`` and ``out_for`` for a move of ``record`` to ``phase``."""
    if phase is Phase.IN_SERVICE:
        return {"out_since": 0.0, "out_for": ""}
    changes: dict[str, object] = {}
    if record.phase is Phase.IN_SERVICE or not record.out_since:
        changes["out_since"] = now
    if isinstance(event, MaintenanceEvent):
        changes["out_for"] = event.event_type.value
    return changes


# Transitions --------------------------------------------------------------------------


def step(record: Record, given: Input, now: float, policy: Policy) -> Result:
    """Advance ``record`` by one input; the caller saves the record, then runs the actions."""
    new, actions = _step(record, given, now, policy)
    return _budget(record, new, actions, given, policy)


def _budget(
    old: Record, new: Record, actions: list[Action], given: Input, policy: Policy
) -> Result:
    """The budget's side of every step: a node out of service without a slot registers
    the slot it takes anyway (forced: over budget if full), again on every tick until the
    budget has it; a node in service with no event left gives its slot back."""
    if not policy.budget:
        return new, actions
    if new.phase is Phase.IN_SERVICE:
        if new.event is None and (new.slot or new.slot_wait):
            # slot_wait alone: a refusal may be a lost answer to a take that went
            # through, so whatever this node holds ("" lease) is given back too
            release = ReleaseSlot(new.slot)
            return replace(new, slot="", over_budget=False, slot_wait=""), [*actions, release]
        return new, actions
    if new.phase is Phase.RECOVERING and new.undrain:
        return new, actions  # an operator puts it back: nothing to register
    new = replace(new, slot_wait="") if new.slot_wait else new
    if new.slot:
        return new, actions
    if old.phase is Phase.IN_SERVICE or isinstance(given, Tick | SlotDropped):
        event = new.event
        take = TakeSlot(
            event.event_id if event else "",
            event.type_name if event else "manual",
            force=True,
        )
        return new, [*actions, take]
    return new, actions


def _step(record: Record, given: Input, now: float, policy: Policy) -> Result:
    if isinstance(given, SlotDropped):
        return replace(record, slot="", over_budget=False, slot_wait=""), []
    if isinstance(given, SlotTaken):
        return _slot_taken(record, given, now, policy)
    if isinstance(given, SlotRefused):
        if record.phase is not Phase.IN_SERVICE or record.event is None:
            return record, []
        return replace(record, slot_wait=given.detail), []
    if isinstance(given, Tick):
        return _tick(record, given, now, policy)
    if isinstance(given, HealthResult):
        if record.phase not in (Phase.RECOVERING, Phase.HELD):
            return record, []
        count = record.health_ok + 1 if given.ok else 0
        became = record.health_ok < policy.health_successes <= count
        record = replace(record, health_ok=count, health_detail=given.detail)
        if became and record.phase is Phase.RECOVERING and not record.undrain:
            # healthy now: go on in this same turn (no views: none is re-asserted here)
            waiting = record.blind or record.event is not None
            return _recover(record, {}, now, policy, waiting=waiting)
        return record, []
    if isinstance(given, ChecksStarted):
        if record.phase is not Phase.RECOVERING or given.lb not in record.owned:
            return record, []
        return replace(record, checking=record.checking | {given.lb}), []
    if isinstance(given, PutBackDone):
        owned = record.owned - {given.lb}
        record = replace(record, checking=record.checking - {given.lb})
        if owned or record.phase is not Phase.RECOVERING:
            return replace(record, owned=owned), []
        return _back_in_service(replace(record, owned=owned), now), []
    if isinstance(given, Approved):
        if record.event is None or record.event.event_id != given.event_id:
            return record, []
        return replace(record, approved_at=now), []
    if isinstance(given, ApproveFailed):
        return replace(record, approved_at=None, alert=f"approval failed: {given.detail}"), [
            Alert(f"approving event {given.event_id} failed: {given.detail}")
        ]
    if isinstance(given, ManualDrain):
        return _manual_drain(record, given, now, policy)
    if isinstance(given, Recheck):
        return _recheck(record, given, now, policy)
    return _manual_undrain(record, now, policy)


def adopt_unrecorded(
    record: Record,
    *,
    lbs: frozenset[str] | None,
    at: float,
    draining: bool,
    manual: bool,
    event: MaintenanceEvent | None,
    now: float,
    policy: Policy,
) -> Record:
    """The node is out of ``lbs`` (None: all) by a drain drainer made at ``at`` but could
    not record (the state directory could not be written). Out, and drainer's own: own
    those load balancers, so the node comes back after the maintenance and its health
    checks like after any drain of ours, never left out as an operator's. An operator's
    unrecorded ``drainer drain`` (``manual``) stays held. Unchanged when ``record``
    already holds all of it."""
    mine = frozenset(policy.lbs) if lbs is None else lbs & frozenset(policy.lbs)
    covered = record.phase is not Phase.IN_SERVICE and mine <= record.owned
    if (covered and (record.manual or not manual)) or not mine:
        return record
    message = (
        f"the node was found out of {', '.join(sorted(mine))} by a drain that drainer"
        " could not record (the state could not be written): handled as drainer's own"
    )
    record = replace(record, owned=record.owned | mine, manual=record.manual or manual)
    record = replace(record, alert=message)
    if record.phase is not Phase.IN_SERVICE:
        return record
    note = "unrecorded drain found"
    record = _follow(record, event)
    if draining:
        return _enter(
            record,
            Phase.DRAINING,
            now,
            note,
            drain_deadline=at + policy.drain_timeout,
            health_ok=0,
            undrain=False,
        )
    return _enter(record, Phase.HELD if record.manual else Phase.DRAINED, now, note)


def _recheck(record: Record, given: Recheck, now: float, policy: Policy) -> Result:
    if not wants_recheck(record, policy):
        return record, []
    # No listing: what was known of the events stays, and nothing about them is learned
    # (a re-check is not a failed poll: it must not make a disappearance doubtful).
    tick = Tick(record.boot_id, None, given.lbs)
    if record.phase is Phase.DRAINING:
        return _draining(record, None, _Seen(record, record.event, "", []), tick, now, policy)
    if record.phase is Phase.RECOVERING:
        if record.undrain:
            if not record.owned:
                return _back_in_service(record, now), []
            return record, [PutBack(tuple(sorted(record.owned)))]
        # as at the last poll: waiting while an event is followed or the poll failed
        waiting = record.blind or record.event is not None
        return _recover(record, given.lbs, now, policy, waiting=waiting)
    return record, _reassert_out(record, tick.lbs)


def _manual_drain(record: Record, given: ManualDrain, now: float, policy: Policy) -> Result:
    if record.phase is Phase.IN_SERVICE:
        over = record.over_budget if record.slot else given.over_budget
        record = replace(record, manual=True, slot=record.slot or given.slot, over_budget=over)
        return _start_drain(record, {}, now, policy, "manual drain")
    if record.phase is Phase.RECOVERING:
        # Partly put back, maybe: own every load balancer again and let the next tick
        # drain wherever the node is in service (a drain where it is out would move it
        # towards service).
        return _enter(
            record,
            Phase.DRAINING,
            now,
            "manual drain",
            manual=True,
            undrain=False,
            owned=frozenset(policy.lbs),
            drain_deadline=now + policy.drain_timeout,
            health_ok=0,
        ), []
    return replace(record, manual=True, note="manual drain"), []


def _manual_undrain(record: Record, now: float, policy: Policy) -> Result:
    """An operator puts the node back everywhere, whoever took it out, and dismisses the
    event it was out for (the CLI has health-checked the node unless forced). An event
    whose drain is not due yet is not dismissed: the node was not out for it."""
    dismissed = record.dismissed
    event = record.event
    if event is not None and record.phase is not Phase.IN_SERVICE and is_due(event, now, policy):
        dismissed = (*dismissed, event.event_id)[-20:]
    new = _enter(
        record,
        Phase.RECOVERING,
        now,
        "manual undrain",
        owned=frozenset(policy.lbs),
        manual=False,
        undrain=True,
        dismissed=dismissed,
        alert="",
    )
    return new, [PutBack(policy.lbs)]


def _start_recovery(record: Record, now: float, note: str) -> Record:
    """Out of the pool, health-checked from now on, back once healthy and no event is left."""
    return _enter(record, Phase.RECOVERING, now, note, next_health=now, health_ok=0)


def _back_in_service(record: Record, now: float) -> Record:
    return _enter(
        record,
        Phase.IN_SERVICE,
        now,
        "back in service",
        owned=frozenset(),
        event=None,
        undrain=False,
        rebooted=False,
        approved_at=None,
        alert="",
    )


def _start_drain(
    record: Record, lbs: Mapping[str, LBView | None], now: float, policy: Policy, note: str
) -> Result:
    # A load balancer where the node is already out, and not by us, is an operator's:
    # leave it alone now and never put it back later.
    foreign = {
        name
        for name, view in lbs.items()
        if name not in record.owned and view is not None and view.status is not LBStatus.IN_SERVICE
    }
    owned = frozenset(policy.lbs) - foreign
    # Where the node is already out (an event during recovery), a drain would move it
    # back towards service: HAProxy's `state drain` from maint restarts health checks
    # and sends sticky clients to the node again. Drain only where it is in service.
    drain = tuple(
        sorted(
            name
            for name in owned
            if (view := lbs.get(name)) is None or view.status is LBStatus.IN_SERVICE
        )
    )
    new = _enter(
        record,
        Phase.DRAINING,
        now,
        note,
        owned=owned,
        drain_deadline=now + policy.drain_timeout,
        health_ok=0,
        approved_at=None,
        undrain=False,
    )
    return new, [Drain(drain)] if drain else []


def _tick(record: Record, tick: Tick, now: float, policy: Policy) -> Result:
    # a partial listing is blind too: a new notice may be on the part not read
    blind = tick.events is None or tick.partial
    if record.blind != blind:
        record = replace(record, blind=blind)
    if record.boot_id != tick.boot_id:
        record = _after_boot(record, tick.boot_id, now)
    # None: the source could not be read this tick; keep what we knew.
    candidates = None
    if tick.events is not None:
        listed = tick.events + salvage(tick.damaged, policy)
        candidates = relevant(listed, policy, record.dismissed)

    phase = record.phase
    patient = phase in (Phase.DRAINING, Phase.DRAINED, Phase.IN_MAINTENANCE) or (
        phase is Phase.RECOVERING and not record.undrain
    )
    seen = _track(record, candidates, tick, now, policy, patient=patient)
    record = seen.record
    kept = seen.event if tick.partial else None
    if kept is not None and candidates is not None and _listed(kept, candidates) is None:
        # kept by _track (not read, rather than not listed): still a candidate, so an
        # in-service node drains for it when due, as after a failed poll
        candidates = [*candidates, kept]
    if phase is Phase.IN_SERVICE:
        new, actions = _in_service(record, candidates, tick, now, policy)
    elif phase is Phase.DRAINING:
        new, actions = _draining(record, candidates, seen, tick, now, policy)
    elif phase in (Phase.DRAINED, Phase.IN_MAINTENANCE):
        new, actions = _out(record, candidates, seen, tick, now, policy)
    elif phase is Phase.RECOVERING:
        new, actions = _recovering(record, candidates, seen, tick, now, policy)
    else:
        new, actions = _held_or_removed(record, candidates, tick, now, policy)
    return new, seen.actions + actions


def _held_or_removed(
    record: Record,
    candidates: list[MaintenanceEvent] | None,
    tick: Tick,
    now: float,
    policy: Policy,
) -> Result:
    phase = record.phase
    # held, removed: stay out, keep approving what comes, keep checking health in held.
    if candidates is not None:
        event = _pick(candidates, policy)
        record = _follow(record, event)
        if (
            event is not None
            and reaction(event, policy) is Reaction.REMOVE
            and phase is not Phase.REMOVED
        ):
            record = _enter(record, Phase.REMOVED, now, "removal event: never back")
    actions = _reassert_out(record, tick.lbs)
    record, more = _maybe_approve(record, now, policy)
    actions += more
    if phase is Phase.HELD:
        record, more = _maybe_check_health(record, now, policy)
        actions += more
    return record, actions


def _after_boot(record: Record, boot_id: str, now: float) -> Record:
    if not record.boot_id:
        return replace(record, boot_id=boot_id)
    if record.phase in (Phase.DRAINING, Phase.DRAINED, Phase.IN_MAINTENANCE) or (
        record.phase is Phase.RECOVERING and not record.undrain
    ):
        # Health seen before the boot says nothing about the node now, nor do the load
        # balancers' own checks: not `checking`, so the recovery takes the node out again
        # (forgetting what passed) before they start over.
        record = replace(record, boot_id=boot_id, rebooted=True, checking=frozenset())
        return _start_recovery(record, now, "rebooted")
    return replace(record, boot_id=boot_id, rebooted=record.phase is not Phase.IN_SERVICE)


def _in_service(
    record: Record,
    candidates: list[MaintenanceEvent] | None,
    tick: Tick,
    now: float,
    policy: Policy,
) -> Result:
    event = record.event if candidates is None else _pick(candidates, policy)
    if event is None:
        if record.event is not None:
            return replace(record, event=None, note="event gone before its drain was due"), []
        return record, []
    if not is_due(event, now, policy):
        if record.event is None or record.event.event_id != event.event_id:
            return _follow(record, event), []
        return replace(record, event=event), []
    record = _follow(record, event)
    if not record.slot and waits_for_slot(event, now, policy):
        wait = record.slot_wait or "asking the budget for a slot"
        take = TakeSlot(event.event_id, event.type_name, by=_latest_start(event, policy))
        return replace(record, slot_wait=wait), [take]
    return _start_drain(record, tick.lbs, now, policy, _drain_note(record, event, now, policy))


def _drain_note(record: Record, event: MaintenanceEvent, now: float, policy: Policy) -> str:
    note = "drain started"
    if event.problems:
        note += f" ({'; '.join(event.problems)})"
    if policy.budget and not record.slot and record.slot_wait:
        note += "; no budget slot by its latest start: drained anyway"
    return note


def _slot_taken(record: Record, given: SlotTaken, now: float, policy: Policy) -> Result:
    record = replace(record, slot=given.lease, over_budget=given.over_budget, slot_wait="")
    if given.over_budget:
        message = "drained over the fleet budget: every slot was taken"
        record = replace(record, alert=message)
    event = record.event
    if record.phase is not Phase.IN_SERVICE or event is None or not is_due(event, now, policy):
        return record, [Alert(record.alert)] if given.over_budget else []
    note = "drain started (budget slot taken)"
    if event.problems:
        note += f" ({'; '.join(event.problems)})"
    return _start_drain(record, given.lbs, now, policy, note)


def _draining(
    record: Record,
    candidates: list[MaintenanceEvent] | None,
    seen: _Seen,
    tick: Tick,
    now: float,
    policy: Policy,
) -> Result:
    if candidates is not None:
        followed = seen.event
        due_now = _pick([e for e in candidates if is_due(e, now, policy)], policy)
        if followed is None and due_now is None and not record.manual:
            note = f"{seen.gone}; gone while draining" if seen.gone else "event gone while draining"
            return _start_recovery(replace(record, event=None), now, note), []
        record = _follow(record, due_now or followed)
    actions: list[Action] = []
    again = tuple(
        sorted(
            name
            for name in record.owned
            if (view := tick.lbs.get(name)) is not None and view.status is LBStatus.IN_SERVICE
        )
    )
    if again:
        actions.append(Drain(again))  # a reload or a restart forgot our drain
    views = [tick.lbs.get(name) for name in sorted(record.owned)]
    drained = all(
        v is not None and v.sessions == 0 and v.status is not LBStatus.IN_SERVICE for v in views
    )
    if not drained and now < record.drain_deadline:
        return record, actions
    kill = False
    if not drained:
        kill = policy.kill_at_deadline
        left = sum(v.sessions for v in views if v is not None)
        unreachable = sorted(n for n in record.owned if tick.lbs.get(n) is None)
        serving = sorted(
            n
            for n in record.owned
            if (v := tick.lbs.get(n)) is not None and v.status is LBStatus.IN_SERVICE
        )
        message = f"drain deadline passed with {left} sessions left"
        if unreachable:
            message += f"; unreachable: {', '.join(unreachable)}"
        if serving:
            message += f"; still in service (the drain was refused): {', '.join(serving)}"
        record = replace(record, alert=message)
        actions.append(Alert(message))
    if record.owned:
        actions.append(TakeOut(tuple(sorted(record.owned)), kill=kill))
    event = record.event
    note = "no connections left" if drained else "drain deadline passed"
    ended = DrainResult.DRAINED if drained else DrainResult.DEADLINE
    if record.manual:
        record = _enter(record, Phase.HELD, now, note, drain_result=ended)
    elif event is not None and reaction(event, policy) is Reaction.REMOVE:
        note += "; removal event: never back"
        record = _enter(record, Phase.REMOVED, now, note, drain_result=ended)
    elif event is not None and event.status is EventStatus.STARTED:
        record = _enter(record, Phase.IN_MAINTENANCE, now, note, drain_result=ended)
    else:
        record = _enter(record, Phase.DRAINED, now, note, drain_result=ended)
    record, more = _maybe_approve(record, now, policy)
    return record, actions + more


def _out(
    record: Record,
    candidates: list[MaintenanceEvent] | None,
    seen: _Seen,
    tick: Tick,
    now: float,
    policy: Policy,
) -> Result:
    if candidates is not None:
        followed = seen.event
        if followed is None:
            # The maintenance is over (or cancelled): recover even when other events
            # are listed; recovery drains again for one that is due.
            note = f"{seen.gone}: over" if seen.gone else "event gone"
            return _start_recovery(replace(record, event=None), now, note), []
        due_now = [e for e in candidates if is_due(e, now, policy)]
        record = _follow(record, _pick(due_now, policy) or followed)
    event = record.event
    if event is not None and reaction(event, policy) is Reaction.REMOVE:
        record = _enter(record, Phase.REMOVED, now, "removal event: never back")
    elif (
        record.phase is Phase.DRAINED and event is not None and event.status is EventStatus.STARTED
    ):
        record = _enter(record, Phase.IN_MAINTENANCE, now, "event started")
    actions = _reassert_out(record, tick.lbs)
    record, more = _maybe_approve(record, now, policy)
    return record, actions + more


def _recovering(
    record: Record,
    candidates: list[MaintenanceEvent] | None,
    seen: _Seen,
    tick: Tick,
    now: float,
    policy: Policy,
) -> Result:
    if record.undrain:
        if not record.owned:
            return _back_in_service(record, now), []
        return record, [PutBack(tuple(sorted(record.owned)))]
    if candidates is not None:
        followed_id = seen.event.event_id if seen.event else None
        fresh = [e for e in candidates if e.event_id != followed_id and is_due(e, now, policy)]
        if fresh:
            # Scheduled again straight after a maintenance: stay out and handle it.
            event = _pick(fresh, policy)
            return _start_drain(
                _follow(record, event), tick.lbs, now, policy, "new event during recovery"
            )
        # the maintained event while it is still listed (a Started one after a reboot),
        # or while its disappearance does not hold yet
        record = _follow(record, seen.event)
    waiting = record.blind or record.event is not None  # blind: this tick's poll
    return _recover(record, tick.lbs, now, policy, waiting=waiting)


def _recover(
    record: Record, lbs: Mapping[str, LBView | None], now: float, policy: Policy, *, waiting: bool
) -> Result:
    """Recovery once the listing is read (``waiting``: an event is still followed, or the
    source could not be read): put back when healthy, else keep the node out while the
    load balancers' own checks and drainer's run side by side."""
    healthy = record.health_ok >= policy.health_successes
    actions: list[Action] = []
    if healthy and not waiting:
        if record.manual:
            return _enter(record, Phase.HELD, now, "healthy, held by an operator"), []
        if not record.owned:  # every load balancer was an operator's: nothing to put back
            return _back_in_service(record, now), []
        actions.append(PutBack(tuple(sorted(record.owned))))
    elif not healthy:
        if now >= record.since + policy.health_deadline:
            message = (
                f"not healthy {int(policy.health_deadline)}s after the maintenance: "
                f"held out of the pool ({record.health_detail or 'no check passed'})"
            )
            return _enter(record, Phase.HELD, now, "health deadline passed", alert=message), [
                Alert(message)
            ]
        actions += _reassert_out(record, lbs)
    elif record.event is not None:
        # Healthy, but its event is still listed or its disappearance does not hold yet:
        # out until then, even where a reload brought it back.
        actions += _reassert_out(record, lbs)
    due = now >= record.next_health - policy.health_interval * HEALTH_EARLY
    last = due and not waiting and record.health_ok + 1 >= policy.health_successes
    if record.owned and not (healthy and not waiting) and not last:
        # Each load balancer's own check runs now, not only after drainer's passed: the
        # put-back then waits for neither in turn. Not when the check due now may make
        # the node healthy: the put-back follows in this turn, and a re-assert would set
        # back a load balancer whose check already passed.
        actions.append(StartChecks(tuple(sorted(record.owned))))
    # Health is checked while the put-back goes on too: a node that turns unhealthy
    # stops being put back.
    record, more = _maybe_check_health(record, now, policy)
    return record, actions + more


def _reassert_out(record: Record, lbs: Mapping[str, LBView | None]) -> list[Action]:
    """While the node is meant to be out, take it out again wherever it is not: a reload
    brought it back, or the take-out itself failed or was lost to a crash between the
    save and the call (the load balancer then still shows the drain). Where the load
    balancer's own check runs for a recovery (``checking``), draining is out enough."""
    checked_out = (LBStatus.OUT, LBStatus.DRAINING)
    back = tuple(
        sorted(
            name
            for name in record.owned
            if (view := lbs.get(name)) is not None
            and view.status not in (checked_out if name in record.checking else (LBStatus.OUT,))
        )
    )
    return [TakeOut(back)] if back else []


def _maybe_approve(record: Record, now: float, policy: Policy) -> Result:
    event = record.event
    if event is None or not approvable(event, policy):
        return record, []
    if policy.budget and (not record.slot or record.over_budget):
        return record, []  # early only within the budget; the platform starts it at NotBefore
    if record.missing_since is not None:  # unlisted, maybe over: approved once listed again
        return record, []
    if record.approved_at is not None and now - record.approved_at < policy.approve_retry:
        return record, []
    # approved_at is set only once the approval went through (Approved): a crash
    # between saving and sending must not delay the next try by approve_retry.
    return record, [ApproveEvent(event.event_id, record.slot)]


# A check due at most this share of its interval from now runs now: turns that come a
# few milliseconds early must not skip a whole interval.
HEALTH_EARLY = 0.1


def _maybe_check_health(record: Record, now: float, policy: Policy) -> Result:
    if now < record.next_health - policy.health_interval * HEALTH_EARLY:
        return record, []
    return replace(record, next_health=now + policy.health_interval), [CheckHealth()]
