"""Every transition of the pure state machine: no I/O, no sleeping."""

from __future__ import annotations

from dataclasses import replace

import pytest

from drainer.core import (
    TRANSITIONS,
    Alert,
    Approve,
    Approved,
    ApproveEvent,
    ApproveFailed,
    CheckHealth,
    Drain,
    DrainResult,
    HealthResult,
    ManualDrain,
    ManualUndrain,
    Phase,
    Policy,
    PutBack,
    PutBackDone,
    Reaction,
    Recheck,
    Record,
    Rule,
    StartChecks,
    TakeOut,
    Tick,
    _enter,
    drain_due,
    relevant,
    step,
    wants_lb_views,
)
from drainer.model import (
    Damaged,
    EventStatus,
    EventType,
    LBStatus,
    LBView,
    MaintenanceEvent,
)

NOW = 1_000_000.0
BOOT = "boot-1"
LBS = ("lb-a", "lb-b")
POLICY = Policy(
    node_names=frozenset({"web-1"}),
    lbs=LBS,
    rules={
        EventType.REBOOT: Rule(Reaction.DRAIN),
        EventType.REDEPLOY: Rule(Reaction.DRAIN),
        EventType.FREEZE: Rule(Reaction.DRAIN, min_duration=10),
        EventType.PREEMPT: Rule(Reaction.REMOVE),
        EventType.TERMINATE: Rule(Reaction.REMOVE),
    },
    approve=Approve.SOLE,
    drain_timeout=300,
    drain_margin=30,
    health_interval=2,
    health_successes=3,
    health_deadline=2700,
    gone_after=0,  # an event is gone once unlisted: the windows have tests of their own
    gone_after_doubt=0,
)

IN = LBView(LBStatus.IN_SERVICE, 0)
OUT = LBView(LBStatus.OUT, 0)


def event(
    kind: EventType = EventType.REBOOT,
    *,
    eid: str = "E1",
    status: EventStatus = EventStatus.SCHEDULED,
    resources: tuple[str, ...] = ("web-1",),
    not_before: float | None = NOW + 900,
    duration: int = -1,
) -> MaintenanceEvent:
    return MaintenanceEvent(eid, kind, status, resources, not_before, duration)


def draining_view(sessions: int) -> LBView:
    return LBView(LBStatus.DRAINING, sessions)


def tick(
    *events: MaintenanceEvent,
    lbs: dict[str, LBView | None] | None = None,
    boot: str = BOOT,
    unknown: bool = False,
    incarnation: int | None = None,
    damaged: tuple[Damaged, ...] = (),
    partial: bool = False,
) -> Tick:
    views = lbs if lbs is not None else {}
    listed = None if unknown else tuple(events)
    return Tick(boot, listed, views, incarnation, damaged, partial)


def both(view: LBView | None) -> dict[str, LBView | None]:
    return dict.fromkeys(LBS, view)


def at(phase: Phase, **changes: object) -> Record:
    base = Record(
        phase=phase,
        boot_id=BOOT,
        owned=frozenset(LBS),
        since=NOW,
        event=event(),
        drain_deadline=NOW + 300,
        listed=("E1",),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def run(record: Record, given: object, now: float = NOW, policy: Policy = POLICY):  # type: ignore[no-untyped-def]
    return step(record, given, now, policy)  # type: ignore[arg-type]


# -- in service ------------------------------------------------------------------------


def test_idle_tick_changes_nothing() -> None:
    record = Record(boot_id=BOOT)
    assert run(record, tick()) == (record, [])


def test_first_tick_learns_the_boot_id() -> None:
    new, actions = run(Record(), tick())
    assert new.boot_id == BOOT and new.phase is Phase.IN_SERVICE and actions == []


def test_approvable_event_drains_at_once() -> None:
    new, actions = run(Record(boot_id=BOOT), tick(event(), lbs=both(IN)))
    assert new.phase is Phase.DRAINING
    assert new.owned == frozenset(LBS)
    assert new.drain_deadline == NOW + 300
    assert actions == [Drain(LBS)]


def test_event_for_another_vm_is_ignored() -> None:
    record = Record(boot_id=BOOT)
    new, actions = run(record, tick(event(resources=("web-2",))))
    assert new == record and actions == []


def test_shared_event_not_approvable_waits_until_due() -> None:
    shared = event(resources=("web-1", "web-2"), not_before=NOW + 900)
    new, actions = run(Record(boot_id=BOOT), tick(shared))
    assert new.phase is Phase.IN_SERVICE and new.event == shared and actions == []
    due = drain_due(shared, POLICY)
    assert due == NOW + 900 - 300 - 30
    later, actions = run(new, tick(shared, lbs=both(IN)), now=due)
    assert later.phase is Phase.DRAINING and actions == [Drain(LBS)]


def test_approve_never_waits_even_for_sole_event() -> None:
    policy = replace(POLICY, approve=Approve.NEVER)
    new, actions = run(Record(boot_id=BOOT), tick(event()), policy=policy)
    assert new.phase is Phase.IN_SERVICE and actions == []


def test_started_without_notice_drains_at_once() -> None:
    sudden = event(status=EventStatus.STARTED, not_before=None, resources=("web-1", "web-2"))
    new, actions = run(Record(boot_id=BOOT), tick(sudden, lbs=both(IN)))
    assert new.phase is Phase.DRAINING and actions == [Drain(LBS)]


def test_blank_not_before_while_scheduled_drains_at_once() -> None:
    odd = event(not_before=None, resources=("web-1", "web-2"))
    new, _ = run(Record(boot_id=BOOT), tick(odd, lbs=both(IN)))
    assert new.phase is Phase.DRAINING


def test_short_freeze_is_ignored_and_long_or_unknown_freeze_drains() -> None:
    short = event(EventType.FREEZE, duration=5)
    assert run(Record(boot_id=BOOT), tick(short))[0].phase is Phase.IN_SERVICE
    for duration in (10, -1):
        long = event(EventType.FREEZE, duration=duration)
        assert run(Record(boot_id=BOOT), tick(long))[0].phase is Phase.DRAINING


def test_ignored_event_type() -> None:
    policy = replace(POLICY, rules={**POLICY.rules, EventType.REDEPLOY: Rule(Reaction.IGNORE)})
    assert relevant((event(EventType.REDEPLOY),), policy) == []


def test_pending_event_cancelled_before_drain() -> None:
    shared = event(resources=("web-1", "web-2"))
    pending, _ = run(Record(boot_id=BOOT), tick(shared))
    new, actions = run(pending, tick())
    assert new.phase is Phase.IN_SERVICE and new.event is None and actions == []


def test_operator_drained_lb_is_not_owned() -> None:
    lbs: dict[str, LBView | None] = {"lb-a": IN, "lb-b": OUT}
    new, actions = run(Record(boot_id=BOOT), tick(event(), lbs=lbs))
    assert new.owned == frozenset({"lb-a"}) and actions == [Drain(("lb-a",))]


def test_unreadable_lb_is_owned_and_drained() -> None:
    lbs: dict[str, LBView | None] = {"lb-a": IN, "lb-b": None}
    new, actions = run(Record(boot_id=BOOT), tick(event(), lbs=lbs))
    assert new.owned == frozenset(LBS) and actions == [Drain(LBS)]


def test_lb_views_only_wanted_when_something_is_going_on() -> None:
    idle = Record(boot_id=BOOT)
    assert not wants_lb_views(idle, (), POLICY)
    assert not wants_lb_views(idle, None, POLICY)
    assert not wants_lb_views(idle, (event(resources=("web-2",)),), POLICY)
    assert wants_lb_views(idle, (event(),), POLICY)
    assert wants_lb_views(at(Phase.DRAINED), (), POLICY)


# -- draining --------------------------------------------------------------------------


def test_draining_waits_for_sessions() -> None:
    record = at(Phase.DRAINING)
    new, actions = run(
        record, tick(event(), lbs={"lb-a": draining_view(2), "lb-b": draining_view(0)})
    )
    assert new == replace(record, event=event()) and actions == []


def test_drained_everywhere_takes_out_and_approves() -> None:
    new, actions = run(at(Phase.DRAINING), tick(event(), lbs=both(draining_view(0))))
    assert new.phase is Phase.DRAINED
    assert actions == [TakeOut(LBS), ApproveEvent("E1")]
    assert new.approved_at is None  # not before the approval went through
    approved, actions = run(new, Approved("E1"), now=NOW + 1)
    assert approved.approved_at == NOW + 1 and actions == []
    assert run(new, Approved("other"))[0] == new


def test_an_approval_lost_to_a_crash_is_sent_again_next_tick() -> None:
    # saved as drained, killed before the POST: the record has no approval time
    drained, _ = run(at(Phase.DRAINING), tick(event(), lbs=both(draining_view(0))))
    _, actions = run(drained, tick(event(), lbs=both(OUT)), now=NOW + 1)
    assert actions == [ApproveEvent("E1")]


def test_unreadable_lb_blocks_drained() -> None:
    lbs: dict[str, LBView | None] = {"lb-a": draining_view(0), "lb-b": None}
    new, actions = run(at(Phase.DRAINING), tick(event(), lbs=lbs))
    assert new.phase is Phase.DRAINING and actions == []


def test_drain_reasserted_where_a_reload_forgot_it() -> None:
    lbs: dict[str, LBView | None] = {"lb-a": IN, "lb-b": draining_view(1)}
    new, actions = run(at(Phase.DRAINING), tick(event(), lbs=lbs))
    assert new.phase is Phase.DRAINING and actions == [Drain(("lb-a",))]


def test_drain_deadline_takes_out_and_names_unreachable() -> None:
    lbs: dict[str, LBView | None] = {"lb-a": draining_view(4), "lb-b": None}
    new, actions = run(at(Phase.DRAINING), tick(event(), lbs=lbs), now=NOW + 300)
    assert new.phase is Phase.DRAINED
    alert = actions[0]
    assert isinstance(alert, Alert)
    assert "4 sessions left" in alert.message and "unreachable: lb-b" in alert.message
    assert actions[1] == TakeOut(LBS, kill=False)
    assert new.alert == alert.message


def test_drain_deadline_kills_when_configured() -> None:
    policy = replace(POLICY, kill_at_deadline=True)
    _, actions = run(
        at(Phase.DRAINING), tick(event(), lbs=both(draining_view(1))), now=NOW + 301, policy=policy
    )
    assert TakeOut(LBS, kill=True) in actions


def test_drained_while_started_goes_to_maintenance_without_approval() -> None:
    started = event(status=EventStatus.STARTED, not_before=None)
    new, actions = run(at(Phase.DRAINING), tick(started, lbs=both(draining_view(0))))
    assert new.phase is Phase.IN_MAINTENANCE and actions == [TakeOut(LBS)]


def test_cancelled_while_draining_recovers() -> None:
    new, actions = run(at(Phase.DRAINING), tick(lbs=both(draining_view(3))))
    assert new.phase is Phase.RECOVERING and actions == []


def test_unknown_events_are_not_a_cancellation() -> None:
    record = at(Phase.DRAINING)
    new, _ = run(record, tick(unknown=True, lbs=both(draining_view(3))))
    assert new.phase is Phase.DRAINING and new.event == record.event


def test_preempt_drained_is_removed() -> None:
    preempt = event(EventType.PREEMPT)
    new, actions = run(at(Phase.DRAINING, event=preempt), tick(preempt, lbs=both(draining_view(0))))
    assert new.phase is Phase.REMOVED
    assert actions == [TakeOut(LBS), ApproveEvent("E1")]


def test_preempt_outranks_a_reboot_being_handled() -> None:
    preempt = event(EventType.PREEMPT, eid="P1")
    new, _ = run(at(Phase.DRAINED), tick(event(), preempt, lbs=both(OUT)))
    assert new.phase is Phase.REMOVED and new.event == preempt


# -- drained, in maintenance -----------------------------------------------------------


def test_drained_reapproves_only_after_the_retry_interval() -> None:
    record = at(Phase.DRAINED, approved_at=NOW)
    assert run(record, tick(event(), lbs=both(OUT)), now=NOW + 10)[1] == []
    _, actions = run(record, tick(event(), lbs=both(OUT)), now=NOW + 61)
    assert actions == [ApproveEvent("E1")]


def test_failed_approval_is_retried_next_tick() -> None:
    record = at(Phase.DRAINED, approved_at=NOW)
    failed, actions = run(record, ApproveFailed("E1", "HTTP 500"))
    assert failed.approved_at is None and isinstance(actions[0], Alert)
    _, actions = run(failed, tick(event(), lbs=both(OUT)), now=NOW + 1)
    assert actions == [ApproveEvent("E1")]


def test_event_started_enters_maintenance() -> None:
    started = event(status=EventStatus.STARTED, not_before=None)
    new, actions = run(at(Phase.DRAINED, approved_at=NOW), tick(started, lbs=both(OUT)))
    assert new.phase is Phase.IN_MAINTENANCE and actions == []


def test_out_reasserted_after_reload() -> None:
    lbs: dict[str, LBView | None] = {"lb-a": IN, "lb-b": OUT}
    started = event(status=EventStatus.STARTED, not_before=None)
    _, actions = run(at(Phase.IN_MAINTENANCE, event=started), tick(started, lbs=lbs))
    assert actions == [TakeOut(("lb-a",))]


@pytest.mark.parametrize("phase", [Phase.DRAINED, Phase.IN_MAINTENANCE, Phase.HELD])
def test_out_taken_again_where_the_take_out_did_not_happen(phase: Phase) -> None:
    # the take-out failed, or a crash came between saving the phase and the call
    lbs: dict[str, LBView | None] = {"lb-a": draining_view(0), "lb-b": OUT}
    _, actions = run(at(phase, approved_at=NOW), tick(event(), lbs=lbs))
    assert [a for a in actions if not isinstance(a, CheckHealth)] == [TakeOut(("lb-a",))]


def test_event_gone_without_reboot_recovers() -> None:
    new, actions = run(at(Phase.IN_MAINTENANCE), tick(lbs=both(OUT)))
    assert new.phase is Phase.RECOVERING and new.next_health == NOW and actions == []


def test_reboot_detected_recovers_even_while_event_listed() -> None:
    started = event(status=EventStatus.STARTED, not_before=None)
    new, actions = run(
        at(Phase.IN_MAINTENANCE, event=started), tick(started, boot="boot-2", lbs=both(OUT))
    )
    assert new.phase is Phase.RECOVERING and new.rebooted and new.boot_id == "boot-2"
    assert actions == [StartChecks(LBS), CheckHealth()]


def test_reboot_while_in_service_is_only_noted() -> None:
    new, actions = run(Record(boot_id=BOOT), tick(boot="boot-2"))
    assert new.phase is Phase.IN_SERVICE and new.boot_id == "boot-2" and actions == []


# -- recovering ------------------------------------------------------------------------


def recovering(**changes: object) -> Record:
    return at(Phase.RECOVERING, **{"next_health": NOW, **changes})


def test_recovering_checks_health_on_its_interval() -> None:
    new, actions = run(recovering(event=None), tick(lbs=both(OUT)))
    assert actions == [StartChecks(LBS), CheckHealth()] and new.next_health == NOW + 2
    _, actions = run(new, tick(lbs=both(OUT)), now=NOW + 1)
    assert actions == [StartChecks(LBS)]


def test_health_results_count_consecutive_successes() -> None:
    record = recovering()
    for _ in range(2):
        record, _ = run(record, HealthResult(True, "200"))
    assert record.health_ok == 2
    record, _ = run(record, HealthResult(False, "503"))
    assert record.health_ok == 0 and record.health_detail == "503"


def test_healthy_and_no_event_puts_back() -> None:
    record = recovering(event=None, health_ok=3)
    _, actions = run(record, tick(lbs=both(OUT)))
    assert actions == [PutBack(LBS), CheckHealth()]  # health is still watched meanwhile


def test_healthy_but_event_still_listed_stays_out() -> None:
    started = event(status=EventStatus.STARTED, not_before=None)
    record = recovering(event=started, health_ok=5)
    new, actions = run(record, tick(started, lbs=both(OUT)), now=NOW + 1)
    assert new.phase is Phase.RECOVERING and not any(isinstance(a, PutBack) for a in actions)


def test_healthy_but_source_unreadable_stays_out() -> None:
    record = recovering(event=None, health_ok=5)
    _, actions = run(record, tick(unknown=True, lbs=both(OUT)), now=NOW + 1)
    assert not any(isinstance(a, PutBack) for a in actions)


def test_put_back_completes_per_lb() -> None:
    record = recovering(event=None, health_ok=3)
    half, _ = run(record, PutBackDone("lb-a"))
    assert half.phase is Phase.RECOVERING and half.owned == frozenset({"lb-b"})
    _, actions = run(half, tick(lbs={"lb-a": IN, "lb-b": OUT}), now=NOW + 1)
    assert actions[0] == PutBack(("lb-b",))
    done, _ = run(half, PutBackDone("lb-b"))
    assert done.phase is Phase.IN_SERVICE and done.owned == frozenset() and done.event is None


def test_unhealthy_never_put_back_and_held_at_deadline() -> None:
    record = recovering(event=None, health_ok=1)
    _, actions = run(record, tick(lbs=both(OUT)), now=NOW + 100)
    assert not any(isinstance(a, PutBack) for a in actions)
    held, actions = run(record, tick(lbs=both(OUT)), now=NOW + 2700)
    assert held.phase is Phase.HELD and not held.manual
    assert isinstance(actions[0], Alert) and "held" in held.alert


def test_new_event_during_recovery_drains_again() -> None:
    second = event(eid="E2")
    record = recovering(health_ok=2)
    new, actions = run(record, tick(second, lbs=both(OUT)))
    assert new.phase is Phase.DRAINING and new.event == second
    # already out everywhere: no drain, which would move it back towards service
    assert new.owned == frozenset(LBS) and actions == []
    drained, actions = run(new, tick(second, lbs=both(OUT)))
    assert drained.phase is Phase.DRAINED and actions[0] == TakeOut(LBS)


def test_new_event_after_partial_put_back_reclaims_the_lb() -> None:
    record = recovering(owned=frozenset({"lb-b"}), health_ok=3)
    new, actions = run(record, tick(event(eid="E2"), lbs={"lb-a": IN, "lb-b": OUT}))
    assert new.owned == frozenset(LBS) and actions == [Drain(("lb-a",))]


def test_unhealthy_recovering_reasserts_out() -> None:
    _, actions = run(recovering(event=None), tick(lbs={"lb-a": IN, "lb-b": OUT}))
    assert TakeOut(("lb-a",)) in actions


# -- manual drain and undrain ------------------------------------------------------------


def test_manual_drain_ends_held() -> None:
    new, actions = run(Record(boot_id=BOOT), ManualDrain())
    assert new.phase is Phase.DRAINING and new.manual and actions == [Drain(LBS)]
    held, actions = run(new, tick(lbs=both(draining_view(0))))
    assert held.phase is Phase.HELD and actions == [TakeOut(LBS)]


def test_held_manual_survives_events_reboots_and_health() -> None:
    record = at(Phase.HELD, manual=True, event=None)
    record, _ = run(record, tick(event(), lbs=both(OUT)))
    assert record.phase is Phase.HELD
    record, _ = run(record, tick(lbs=both(OUT), boot="boot-2"), now=NOW + 5)
    assert record.phase is Phase.HELD
    for _ in range(5):
        record, _ = run(record, HealthResult(True))
    record, actions = run(record, tick(lbs=both(OUT)), now=NOW + 10)
    assert record.phase is Phase.HELD and not any(isinstance(a, PutBack) for a in actions)


def test_held_approves_events_since_the_node_is_out() -> None:
    _, actions = run(at(Phase.HELD, manual=True, event=None), tick(event(), lbs=both(OUT)))
    assert ApproveEvent("E1") in actions


def test_manual_drain_during_maintenance_holds_after_it() -> None:
    record, _ = run(at(Phase.IN_MAINTENANCE), ManualDrain())
    assert record.manual and record.phase is Phase.IN_MAINTENANCE
    record, _ = run(record, tick(lbs=both(OUT)))
    assert record.phase is Phase.RECOVERING
    record = replace(record, health_ok=3)
    held, actions = run(record, tick(lbs=both(OUT)), now=NOW + 1)
    assert held.phase is Phase.HELD and actions == []


def test_manual_drain_not_undone_by_event_cancel_while_draining() -> None:
    record, _ = run(Record(boot_id=BOOT), ManualDrain())
    new, _ = run(record, tick(lbs=both(draining_view(2))))
    assert new.phase is Phase.DRAINING


def test_undrain_puts_back_everywhere_and_dismisses_the_event() -> None:
    record = at(Phase.HELD, manual=True, owned=frozenset({"lb-a"}))
    new, actions = run(record, ManualUndrain())
    assert new.phase is Phase.RECOVERING and new.undrain and not new.manual
    assert actions == [PutBack(LBS)] and "E1" in new.dismissed
    for lb in LBS:
        new, _ = run(new, PutBackDone(lb))
    assert new.phase is Phase.IN_SERVICE
    again, actions = run(new, tick(event(), lbs=both(IN)), now=NOW + 1)
    assert again.phase is Phase.IN_SERVICE and actions == []


def test_undrain_in_service_does_not_dismiss_a_pending_event() -> None:
    pending = Record(boot_id=BOOT, event=event(resources=("web-1", "web-2")))
    new, _ = run(pending, ManualUndrain())
    assert new.dismissed == ()


def test_interrupted_undrain_resumes_put_back() -> None:
    new, _ = run(at(Phase.HELD, manual=True), ManualUndrain())
    _, actions = run(new, tick(lbs=both(OUT)), now=NOW + 1)
    assert actions == [PutBack(LBS)]


def test_removed_is_final_until_undrain() -> None:
    record = at(Phase.REMOVED, event=event(EventType.PREEMPT))
    new, actions = run(record, tick(lbs={"lb-a": IN, "lb-b": OUT}))
    assert new.phase is Phase.REMOVED and TakeOut(("lb-a",)) in actions
    new, _ = run(new, tick(lbs=both(OUT), boot="boot-9"), now=NOW + 3600)
    assert new.phase is Phase.REMOVED


@pytest.mark.parametrize("phase", list(Phase))
def test_health_results_outside_recovery_are_ignored_or_counted(phase: Phase) -> None:
    new, actions = run(at(phase), HealthResult(True))
    assert actions == []
    assert new.health_ok == (1 if phase in (Phase.RECOVERING, Phase.HELD) else 0)


# -- found in review: each once let a maintenance hit a node in service, or stranded it --


def test_a_due_event_is_not_hidden_by_a_pending_one() -> None:
    far = event(eid="A", resources=("web-1", "web-2"), not_before=NOW + 3 * 3600)
    pending, _ = run(Record(boot_id=BOOT), tick(far))
    assert pending.phase is Phase.IN_SERVICE and pending.event == far
    sudden = event(eid="B", status=EventStatus.STARTED, not_before=None)
    new, actions = run(pending, tick(far, sudden, lbs=both(IN)), now=NOW + 5)
    assert new.phase is Phase.DRAINING and new.event == sudden and actions == [Drain(LBS)]
    sole = event(eid="C", not_before=NOW + 900)
    new, _ = run(pending, tick(far, sole, lbs=both(IN)), now=NOW + 5)
    assert new.phase is Phase.DRAINING and new.event == sole


def test_undrain_keeps_an_event_the_node_was_not_out_for() -> None:
    pending = event(resources=("web-1", "web-2"), not_before=NOW + 3600)
    record, _ = run(Record(boot_id=BOOT), tick(pending))
    record, _ = run(record, ManualDrain(), now=NOW + 10)
    record, _ = run(record, tick(pending, lbs=both(draining_view(0))), now=NOW + 20)
    assert record.phase is Phase.HELD
    record, _ = run(record, ManualUndrain(), now=NOW + 100)
    assert record.dismissed == ()
    for lb in LBS:
        record, _ = run(record, PutBackDone(lb), now=NOW + 100)
    due = drain_due(pending, POLICY)
    assert due is not None
    record, actions = run(record, tick(pending, lbs=both(IN)), now=due)
    assert record.phase is Phase.DRAINING and actions == [Drain(LBS)]


def test_manual_drain_during_a_partial_put_back_takes_the_node_out_again() -> None:
    record = at(Phase.RECOVERING, event=None, health_ok=3, owned=frozenset({"lb-b"}))
    record, actions = run(record, ManualDrain())
    assert record.phase is Phase.DRAINING and record.manual and actions == []
    assert record.owned == frozenset(LBS)
    record, actions = run(record, tick(lbs={"lb-a": IN, "lb-b": OUT}), now=NOW + 1)
    assert actions == [Drain(("lb-a",))]  # only where it was back; lb-b stays out
    record, actions = run(record, tick(lbs={"lb-a": draining_view(0), "lb-b": OUT}), NOW + 2)
    assert record.phase is Phase.HELD and actions == [TakeOut(LBS)]


def test_drain_from_a_remembered_event_reads_the_load_balancers() -> None:
    pending = Record(boot_id=BOOT, event=event(resources=("web-1", "web-2")))
    assert wants_lb_views(pending, None, POLICY)


def test_a_reboot_during_recovery_forgets_health_seen_before_it() -> None:
    started = event(status=EventStatus.STARTED, not_before=None)
    record = at(Phase.RECOVERING, event=started, health_ok=3, next_health=NOW + 2)
    new, actions = run(record, tick(lbs=both(OUT), boot="boot-2"), now=NOW + 60)
    assert new.health_ok == 0 and new.since == NOW + 60
    assert actions == [StartChecks(LBS), CheckHealth()]


def test_a_reboot_during_recovery_forgets_the_lb_checks_passed_before_it() -> None:
    # HAProxy's check passed before the reboot (its adapter noted it for a quick
    # put-back): after the boot that says nothing. Out again, which forgets the note,
    # and the checks start over.
    started = event(status=EventStatus.STARTED, not_before=None)
    record = at(Phase.RECOVERING, event=started, checking=frozenset(LBS), next_health=NOW + 2)
    new, actions = run(record, tick(lbs=both(draining_view(0)), boot="boot-2"), now=NOW + 60)
    assert new.checking == frozenset()
    assert actions[0] == TakeOut(LBS) and StartChecks(LBS) in actions


def test_a_failing_put_back_of_a_healthy_node_is_retried_not_held() -> None:
    record = at(Phase.RECOVERING, event=None, health_ok=3, owned=frozenset({"lb-b"}))
    new, actions = run(record, tick(lbs={"lb-a": IN, "lb-b": None}), now=NOW + 2700)
    assert new.phase is Phase.RECOVERING and PutBack(("lb-b",)) in actions


def test_nothing_owned_goes_back_in_service_without_touching_anything() -> None:
    e = event()
    record, _ = run(Record(boot_id=BOOT), tick(e, lbs=both(OUT)))
    assert record.owned == frozenset()
    record, _ = run(record, tick(e, lbs=both(OUT)))
    record, _ = run(record, tick(lbs=both(OUT)), now=NOW + 5)
    assert record.phase is Phase.RECOVERING
    for _ in range(3):
        record, _ = run(record, HealthResult(True, "200"))
    record, actions = run(record, tick(lbs=both(OUT)), now=NOW + 10)
    assert record.phase is Phase.IN_SERVICE and actions == []


def test_the_next_event_is_approved_without_waiting() -> None:
    freeze = event(EventType.FREEZE, eid="F", status=EventStatus.STARTED, not_before=None)
    reboot = event(eid="R", not_before=NOW + 900)
    record = at(Phase.DRAINED, event=event(eid="R0"), approved_at=NOW - 5)
    new, actions = run(record, tick(freeze, reboot, lbs=both(OUT)), now=NOW)
    # R0 is gone: recover first, then R (due: approvable) is drained for again
    assert new.phase is Phase.RECOVERING
    new, actions = run(new, tick(reboot, lbs=both(OUT)), now=NOW + 1)
    assert new.phase is Phase.DRAINING and new.approved_at is None
    new, actions = run(new, tick(reboot, lbs=both(OUT)), now=NOW + 2)
    assert ApproveEvent("R") in actions


def test_a_far_event_does_not_keep_the_node_out_after_its_maintenance() -> None:
    freeze = event(EventType.FREEZE, eid="F", status=EventStatus.STARTED, not_before=None)
    later = event(eid="R", resources=("web-1", "web-2"), not_before=NOW + 6 * 3600)
    record = at(Phase.IN_MAINTENANCE, event=freeze)
    record, _ = run(record, tick(later, lbs=both(OUT)))
    assert record.phase is Phase.RECOVERING
    record = replace(record, health_ok=3)
    record, actions = run(record, tick(later, lbs=both(OUT)), now=NOW + 1)
    assert PutBack(LBS) in actions


# -- events, fail-safe -------------------------------------------------------------------


def unknown_status(**changes: object) -> MaintenanceEvent:
    odd = replace(event(), status=EventStatus.UNKNOWN, raw_status="InProgress")
    return replace(odd, **changes)  # type: ignore[arg-type]


def test_unknown_status_drains_at_once_and_is_never_approved() -> None:
    odd = unknown_status()  # sole, NotBefore far away: a Scheduled one would be approved
    new, actions = run(Record(boot_id=BOOT), tick(odd, lbs=both(IN)))
    assert new.phase is Phase.DRAINING and actions == [Drain(LBS)]
    drained, actions = run(new, tick(odd, lbs=both(draining_view(0))), now=NOW + 1)
    assert drained.phase is Phase.DRAINED and actions == [TakeOut(LBS)]
    always = replace(POLICY, approve=Approve.ALWAYS)
    _, actions = run(drained, tick(odd, lbs=both(OUT)), now=NOW + 2, policy=always)
    assert actions == []


def test_unknown_type_follows_its_rule_drain_by_default() -> None:
    odd = replace(event(), event_type=EventType.UNKNOWN, raw_type="HotPatch")
    no_rule = replace(POLICY, rules={k: v for k, v in POLICY.rules.items()})
    assert EventType.UNKNOWN not in no_rule.rules
    assert run(Record(boot_id=BOOT), tick(odd), policy=no_rule)[0].phase is Phase.DRAINING
    ignore = replace(POLICY, rules={**POLICY.rules, EventType.UNKNOWN: Rule(Reaction.IGNORE)})
    assert relevant((odd,), ignore) == []
    remove = replace(POLICY, rules={**POLICY.rules, EventType.UNKNOWN: Rule(Reaction.REMOVE)})
    drained, _ = run(
        at(Phase.DRAINING, event=odd), tick(odd, lbs=both(draining_view(0))), policy=remove
    )
    assert drained.phase is Phase.REMOVED


def test_problems_of_the_event_are_in_the_note_of_the_drain() -> None:
    odd = replace(event(not_before=None), problems=("NotBefore 'soon' unreadable: due now",))
    new, _ = run(Record(boot_id=BOOT), tick(odd, lbs=both(IN)))
    assert new.phase is Phase.DRAINING and "NotBefore 'soon'" in new.note


def damaged(text: str, *, eid: str = "D1", names: tuple[str, ...] = ()) -> Damaged:
    broken = MaintenanceEvent(eid, EventType.REBOOT, EventStatus.SCHEDULED, names, NOW + 900)
    return Damaged(replace(broken, problems=("Resources unreadable",)), text)


def test_a_damaged_entry_naming_this_vm_drains_at_once_and_is_never_approved() -> None:
    entry = damaged('{"EventId": "D1", "Resources": "web-1,web-2", "EventType": "Reboot"}')
    new, actions = run(Record(boot_id=BOOT), tick(damaged=(entry,), lbs=both(IN)))
    assert new.phase is Phase.DRAINING and actions == [Drain(LBS)]
    assert new.event is not None and new.event.event_id == "D1"
    assert new.event.resources == ("web-1",)  # would be "sole": never approved all the same
    drained, actions = run(new, tick(damaged=(entry,), lbs=both(draining_view(0))), now=NOW + 1)
    assert drained.phase is Phase.DRAINED and actions == [TakeOut(LBS)]


@pytest.mark.parametrize(
    "text",
    [
        '{"EventId": "D1", "Resources": "web-10"}',  # another VM whose name starts like ours
        '{"EventId": "D1", "Resources": {"name": "web-2"}, "NotBefore": "soon"}',
        '"not an object"',
    ],
)
def test_a_damaged_neighbour_is_skipped_and_hides_nothing(text: str) -> None:
    mine = event(eid="MINE")
    record = Record(boot_id=BOOT)
    idle, actions = run(record, tick(damaged=(damaged(text),)))
    assert idle == record and actions == []
    new, actions = run(record, tick(mine, damaged=(damaged(text),), lbs=both(IN)))
    assert new.phase is Phase.DRAINING and new.event == mine
    _, actions = run(new, tick(mine, damaged=(damaged(text),), lbs=both(draining_view(0))))
    assert actions == [TakeOut(LBS), ApproveEvent("MINE")]  # this VM's sole event: approved


def test_damaged_names_salvaged_from_resources_count() -> None:
    entry = damaged('{"Resources": ["web-1", null]}', names=("web-1",))
    assert run(Record(boot_id=BOOT), tick(damaged=(entry,)))[0].phase is Phase.DRAINING


def test_vm_names_are_compared_without_case() -> None:
    shouting = event(resources=("WEB-1",))
    _, actions = run(at(Phase.DRAINING, event=shouting), tick(shouting, lbs=both(draining_view(0))))
    assert actions == [TakeOut(LBS), ApproveEvent("E1")]


# several events at once ----------------------------------------------------------------


def test_freeze_and_reboot_listed_together_each_approved_node_out_throughout() -> None:
    freeze = event(EventType.FREEZE, eid="F", duration=30, not_before=NOW + 600)
    reboot = event(EventType.REBOOT, eid="R", not_before=NOW + 900)
    record, actions = run(Record(boot_id=BOOT), tick(freeze, reboot, lbs=both(IN)))
    assert record.phase is Phase.DRAINING and actions == [Drain(LBS)]
    record, actions = run(record, tick(freeze, reboot, lbs=both(draining_view(0))), now=NOW + 1)
    assert record.phase is Phase.DRAINED and actions == [TakeOut(LBS), ApproveEvent("F")]
    record, _ = run(record, Approved("F"), now=NOW + 1)
    started = replace(freeze, status=EventStatus.STARTED, not_before=None)
    record, actions = run(record, tick(started, reboot, lbs=both(OUT)), now=NOW + 2)
    assert record.phase is Phase.IN_MAINTENANCE and record.event == started
    assert actions == []  # the Reboot waits for its turn: one maintenance at a time
    # the Freeze is over: the node does not go back, the Reboot is drained for and approved
    record, actions = run(record, tick(reboot, lbs=both(OUT)), now=NOW + 3)
    record, actions = run(replace(record, health_ok=3), tick(reboot, lbs=both(OUT)), now=NOW + 4)
    assert record.phase is Phase.DRAINING and record.event == reboot
    assert not any(isinstance(a, PutBack) for a in actions)
    record, actions = run(record, tick(reboot, lbs=both(OUT)), now=NOW + 5)
    assert record.phase is Phase.DRAINED and ApproveEvent("R") in actions


def test_a_neighbours_event_is_never_approved_ours_is() -> None:
    neighbours = event(eid="N", resources=("web-2",), not_before=NOW + 60)
    ours = event(eid="MINE", not_before=NOW + 900)
    record, _ = run(Record(boot_id=BOOT), tick(neighbours, ours, lbs=both(IN)))
    assert record.event == ours
    approvals = []
    for i in range(1, 4):
        record, actions = run(
            record, tick(neighbours, ours, lbs=both(draining_view(0))), now=NOW + i * 100
        )
        approvals += [a.event_id for a in actions if isinstance(a, ApproveEvent)]
    assert set(approvals) == {"MINE"}


# disappearance is believed only when it holds --------------------------------------------

WINDOWS = replace(POLICY, gone_after=5, gone_after_doubt=120)
STARTED = event(status=EventStatus.STARTED, not_before=None)


def maintained(**changes: object) -> Record:
    return at(Phase.IN_MAINTENANCE, event=STARTED, incarnation=7, listed_in=7, **changes)


def test_an_event_gone_is_believed_after_gone_after() -> None:
    record, actions = run(maintained(), tick(lbs=both(OUT), incarnation=8), policy=WINDOWS)
    assert record.phase is Phase.IN_MAINTENANCE and actions == []
    assert record.missing_since == NOW and record.event == STARTED
    record, _ = run(record, tick(lbs=both(OUT), incarnation=8), now=NOW + 4.9, policy=WINDOWS)
    assert record.phase is Phase.IN_MAINTENANCE
    record, _ = run(record, tick(lbs=both(OUT), incarnation=8), now=NOW + 5, policy=WINDOWS)
    assert record.phase is Phase.RECOVERING and record.event is None
    assert "unlisted for 5s over 3 polls" in record.note and "7 -> 8" in record.note


def test_an_event_listed_again_within_the_window_never_was_gone() -> None:
    record, _ = run(maintained(), tick(lbs=both(OUT), incarnation=8), policy=WINDOWS)
    record, actions = run(
        record, tick(STARTED, lbs=both(OUT), incarnation=9), now=NOW + 3, policy=WINDOWS
    )
    assert record.phase is Phase.IN_MAINTENANCE and record.missing_since is None
    (alert,) = actions
    assert isinstance(alert, Alert) and "listed again after 3s" in alert.message
    # the window starts over: a later disappearance waits its full gone_after again
    record, _ = run(record, tick(lbs=both(OUT), incarnation=10), now=NOW + 6, policy=WINDOWS)
    record, _ = run(record, tick(lbs=both(OUT), incarnation=10), now=NOW + 10, policy=WINDOWS)
    assert record.phase is Phase.IN_MAINTENANCE


def test_after_failed_polls_the_longer_window_applies() -> None:
    record, _ = run(maintained(), tick(unknown=True, lbs=both(OUT)), policy=WINDOWS)
    assert record.doubt
    record, actions = run(record, tick(lbs=both(OUT), incarnation=8), now=NOW + 1, policy=WINDOWS)
    assert any(isinstance(a, Alert) and "120s" in a.message for a in actions)
    record, _ = run(record, tick(lbs=both(OUT), incarnation=8), now=NOW + 60, policy=WINDOWS)
    assert record.phase is Phase.IN_MAINTENANCE
    record, _ = run(record, tick(lbs=both(OUT), incarnation=8), now=NOW + 121, policy=WINDOWS)
    assert record.phase is Phase.RECOVERING and "failed polls" in record.note


def test_a_partial_listing_without_the_event_is_no_disappearance() -> None:
    # AWS: the scheduled path failed while a rebalance recommendation was read
    rebalance = event(EventType.REBALANCE, eid="R1", not_before=None)
    partial = tick(rebalance, lbs=both(OUT), partial=True)
    rules = {**WINDOWS.rules, EventType.REBALANCE: Rule(Reaction.IGNORE)}  # as by default
    policy = replace(WINDOWS, rules=rules)
    record = maintained()
    for later in (0, 10, 200):  # past both windows
        record, actions = run(record, partial, now=NOW + later, policy=policy)
        assert record.phase is Phase.IN_MAINTENANCE and record.event == STARTED
        assert record.missing_since is None and not any(isinstance(a, PutBack) for a in actions)
    # a whole answer without it: gone, after the window of doubt (like a failed poll)
    assert record.doubt
    record, _ = run(record, tick(lbs=both(OUT)), now=NOW + 300, policy=policy)
    record, _ = run(record, tick(lbs=both(OUT)), now=NOW + 360, policy=policy)
    assert record.phase is Phase.IN_MAINTENANCE
    record, _ = run(record, tick(lbs=both(OUT)), now=NOW + 421, policy=policy)
    assert record.phase is Phase.RECOVERING


def test_a_partial_listing_keeps_a_drain_going_and_drains_for_what_it_lists() -> None:
    draining = at(Phase.DRAINING, owned=frozenset(LBS))
    record, _ = run(draining, tick(lbs=both(draining_view(3)), partial=True), policy=WINDOWS)
    assert record.phase is Phase.DRAINING and record.event == event()
    # in service, the event a partial listing holds drains the node at once
    spot = event(EventType.PREEMPT, eid="S1", not_before=NOW + 120)
    record, actions = run(Record(boot_id=BOOT), tick(spot, lbs=both(IN), partial=True))
    assert record.phase is Phase.DRAINING and any(isinstance(a, Drain) for a in actions)


def test_a_partial_listing_keeps_the_event_an_in_service_node_waits_for() -> None:
    # AWS: a retirement weeks ahead is followed; its path fails while a rebalance
    # recommendation (ignored) is read. Kept as through a failed poll: drained when due.
    retire = event(EventType.TERMINATE, not_before=NOW + 900)
    rebalance = event(EventType.REBALANCE, eid="R1", not_before=None)
    rules = {**POLICY.rules, EventType.REBALANCE: Rule(Reaction.IGNORE)}
    policy = replace(POLICY, rules=rules, approve=Approve.NEVER)  # as on AWS
    record, _ = run(Record(boot_id=BOOT), tick(retire, lbs=both(IN)), policy=policy)
    assert record.event == retire
    partial = tick(rebalance, lbs=both(IN), partial=True)
    kept, actions = run(record, partial, now=NOW + 1, policy=policy)
    assert kept.event == retire and actions == []
    due = drain_due(retire, policy)
    assert due is not None
    drained, actions = run(kept, partial, now=due, policy=policy)
    assert drained.phase is Phase.DRAINING and actions == [Drain(LBS)]


def test_a_held_node_keeps_its_event_through_a_partial_listing() -> None:
    rebalance = event(EventType.REBALANCE, eid="R1", not_before=None)
    rules = {**POLICY.rules, EventType.REBALANCE: Rule(Reaction.IGNORE)}
    policy = replace(POLICY, rules=rules)
    held = at(Phase.HELD, manual=True)
    record, _ = run(held, tick(rebalance, lbs=both(OUT), partial=True), policy=policy)
    assert record.event == held.event


def test_a_partial_listing_puts_no_node_back() -> None:
    # the Spot path failed, the scheduled one lists another VM's event: a Spot notice
    # may be unread, as through a failed poll
    other = event(resources=("web-2",))
    record = recovering(event=None, health_ok=5)
    record, actions = run(record, tick(other, lbs=both(OUT), partial=True), now=NOW + 1)
    assert record.blind and not any(isinstance(a, PutBack) for a in actions)
    _, actions = run(record, Recheck(both(OUT)), now=NOW + 2)  # nor between polls
    assert not any(isinstance(a, PutBack) for a in actions)
    _, actions = run(record, tick(other, lbs=both(OUT)), now=NOW + 3)
    assert PutBack(LBS) in actions  # every path read: back


def test_an_incarnation_that_went_back_makes_the_longer_window_apply() -> None:
    # the metadata service was re-enabled: Events [] and DocumentIncarnation 1
    record, actions = run(maintained(), tick(lbs=both(OUT), incarnation=1), policy=WINDOWS)
    assert record.doubt and any("7 -> 1" in a.message for a in actions if isinstance(a, Alert))
    record, _ = run(record, tick(lbs=both(OUT), incarnation=1), now=NOW + 30, policy=WINDOWS)
    assert record.phase is Phase.IN_MAINTENANCE
    record, actions = run(
        record, tick(STARTED, lbs=both(OUT), incarnation=2), now=NOW + 40, policy=WINDOWS
    )
    assert record.phase is Phase.IN_MAINTENANCE and not record.doubt
    assert not any(isinstance(a, PutBack) for a in actions)


def test_an_unchanged_incarnation_without_the_event_is_doubted_too() -> None:
    record, _ = run(maintained(), tick(lbs=both(OUT), incarnation=7), policy=WINDOWS)
    record, _ = run(record, tick(lbs=both(OUT), incarnation=7), now=NOW + 10, policy=WINDOWS)
    assert record.phase is Phase.IN_MAINTENANCE and record.doubt


def test_a_drained_node_waits_out_the_window_before_recovering() -> None:
    drained = at(Phase.DRAINED, incarnation=3, listed_in=3)
    record, _ = run(drained, tick(lbs=both(OUT), incarnation=4), policy=WINDOWS)
    assert record.phase is Phase.DRAINED
    record, _ = run(record, tick(lbs=both(OUT), incarnation=4), now=NOW + 5, policy=WINDOWS)
    assert record.phase is Phase.RECOVERING


def test_a_recovering_node_waiting_on_its_event_waits_out_the_window() -> None:
    record = recovering(event=STARTED, health_ok=3, incarnation=7, listed_in=7)
    record, actions = run(record, tick(lbs=both(OUT), incarnation=1), policy=WINDOWS)
    assert record.event == STARTED and not any(isinstance(a, PutBack) for a in actions)
    record, actions = run(record, tick(lbs=both(OUT), incarnation=1), now=NOW + 119, policy=WINDOWS)
    assert not any(isinstance(a, PutBack) for a in actions)
    record, actions = run(record, tick(lbs=both(OUT), incarnation=1), now=NOW + 120, policy=WINDOWS)
    assert record.event is None and PutBack(LBS) in actions


def test_draining_waits_out_the_window_too() -> None:
    record = at(Phase.DRAINING, incarnation=3, listed_in=3)
    record, _ = run(record, tick(lbs=both(draining_view(1)), incarnation=4), policy=WINDOWS)
    assert record.phase is Phase.DRAINING and record.event == event()
    record, _ = run(
        record, tick(lbs=both(draining_view(1)), incarnation=4), now=NOW + 5, policy=WINDOWS
    )
    assert record.phase is Phase.RECOVERING


def test_the_window_state_survives_a_save_and_a_load() -> None:
    from drainer.store import record_from_json, record_to_json

    record, _ = run(maintained(), tick(unknown=True, lbs=both(OUT)), policy=WINDOWS)
    record, _ = run(record, tick(lbs=both(OUT), incarnation=1), now=NOW + 1, policy=WINDOWS)
    assert record.missing_since is not None and record.doubt and record.listed == ()
    odd = replace(
        record,
        event=replace(STARTED, event_type=EventType.UNKNOWN, raw_type="X", problems=("odd",)),
        listed=("E1", "E2"),
    )
    assert record_from_json(record_to_json(odd)) == odd


# re-issued ids (Microsoft's mock) ---------------------------------------------------------


def test_a_reissued_id_that_started_is_the_same_maintenance() -> None:
    record = at(Phase.DRAINED, approved_at=NOW - 1, incarnation=3, listed_in=3)
    reissued = event(eid="E1-started", status=EventStatus.STARTED, not_before=None)
    new, actions = run(record, tick(reissued, lbs=both(OUT), incarnation=4), policy=WINDOWS)
    assert new.phase is Phase.IN_MAINTENANCE and new.event == reissued
    assert [type(a) for a in actions] == [Alert] and "E1-started" in actions[0].message
    # ...and again when the mock re-issues the Started one: still no recovery, no drain
    again = replace(reissued, event_id="E1-again")
    new, actions = run(new, tick(again, lbs=both(OUT), incarnation=5), policy=WINDOWS)
    assert new.phase is Phase.IN_MAINTENANCE and new.event == again


def test_a_reissued_id_during_recovery_causes_no_second_drain() -> None:
    record = recovering(event=STARTED, incarnation=7, listed_in=7)
    reissued = replace(STARTED, event_id="E1-b")
    new, actions = run(record, tick(reissued, lbs=both(OUT), incarnation=8), policy=WINDOWS)
    assert new.phase is Phase.RECOVERING and new.event == reissued
    assert not any(isinstance(a, Drain | TakeOut | PutBack) for a in actions)


def test_a_new_scheduled_event_of_the_same_type_is_another_maintenance() -> None:
    record = at(Phase.IN_MAINTENANCE, event=STARTED, incarnation=7, listed_in=7)
    later = event(eid="E2", resources=("web-1", "web-2"), not_before=NOW + 6 * 3600)
    new, _ = run(record, tick(later, lbs=both(OUT), incarnation=8), policy=POLICY)
    assert new.phase is Phase.RECOVERING  # not followed as a re-issue of E1


def test_an_event_listed_before_is_no_reissue() -> None:
    other = event(EventType.REBOOT, eid="E2", status=EventStatus.STARTED, not_before=None)
    record = at(Phase.IN_MAINTENANCE, event=STARTED, listed=("E1", "E2"))
    new, _ = run(record, tick(other, lbs=both(OUT)))
    assert new.phase is Phase.RECOVERING


def test_a_healthy_node_waiting_out_the_window_is_kept_out_where_a_reload_forgot_it() -> None:
    # Healthy, but its event is unlisted only since an incarnation reset: not over yet.
    # A reload puts the node back in the pool meanwhile; the tick and the re-check
    # between polls must take it out again, or the maintenance finds it serving when the
    # event is listed again.
    from drainer.core import Recheck, wants_recheck

    record = recovering(event=STARTED, health_ok=3, incarnation=7, listed_in=7)
    record, _ = run(record, tick(lbs=both(OUT), incarnation=1), policy=WINDOWS)
    assert record.event == STARTED and record.doubt
    reloaded = {"lb-a": IN, "lb-b": OUT}
    _, actions = run(record, tick(lbs=reloaded, incarnation=1), now=NOW + 10, policy=WINDOWS)
    assert TakeOut(("lb-a",)) in actions and not any(isinstance(a, PutBack) for a in actions)
    assert wants_recheck(record, WINDOWS)
    actions = run(record, Recheck(reloaded), now=NOW + 10, policy=WINDOWS)[1]
    assert actions == [TakeOut(("lb-a",)), StartChecks(LBS), CheckHealth()]
    # still listed (a Started event after the reboot): the same
    _, actions = run(record, tick(STARTED, lbs=reloaded, incarnation=2), now=NOW + 11)
    assert TakeOut(("lb-a",)) in actions


def test_an_event_unlisted_in_its_window_is_not_approved_until_listed_again() -> None:
    # The drain ends while the event is unlisted (its disappearance does not hold yet):
    # approving an id the service does not list only fails and raises a false alert.
    from drainer.core import Recheck

    record = at(Phase.DRAINING, incarnation=3, listed_in=3)
    record, actions = run(record, tick(lbs=both(draining_view(1)), incarnation=4), policy=WINDOWS)
    assert record.missing_since is not None
    done = both(draining_view(0))
    for given in (Recheck(done), tick(lbs=done, incarnation=4)):
        new, actions = run(record, given, now=NOW + 1, policy=WINDOWS)
        assert new.phase is Phase.DRAINED and not any(isinstance(a, ApproveEvent) for a in actions)
        _, actions = run(new, tick(lbs=both(OUT), incarnation=4), now=NOW + 2, policy=WINDOWS)
        assert not any(isinstance(a, ApproveEvent) for a in actions)
        _, actions = run(
            new, tick(event(), lbs=both(OUT), incarnation=5), now=NOW + 3, policy=WINDOWS
        )
        assert ApproveEvent("E1") in actions  # listed again: approved at once


def test_an_undrain_dismisses_an_entry_without_an_id_not_whatever_later_takes_its_place() -> None:
    # An entry without an EventId is known by its place ("Events[0]"). An operator's
    # undrain dismissed the one listed then; a different event for this VM listed later
    # in the same place is another maintenance and must drain.
    from drainer.sources.azure import parse_events

    def listing(**entry: object) -> Tick:
        parsed = parse_events({"DocumentIncarnation": 1, "Events": [entry]})
        return tick(*parsed.events, lbs=both(IN), damaged=parsed.damaged)

    first = listing(EventType="Reboot", EventStatus="Scheduled", Resources=["web-1", 7])
    record, actions = run(Record(boot_id=BOOT), first)
    assert record.phase is Phase.DRAINING and actions == [Drain(LBS)]
    record, _ = run(record, ManualUndrain())
    for lb in LBS:
        record, _ = run(record, PutBackDone(lb))
    assert record.phase is Phase.IN_SERVICE
    record, actions = run(record, first)  # the dismissed entry: left alone
    assert record.phase is Phase.IN_SERVICE and actions == []
    record, _ = run(record, tick(lbs=both(IN)), now=NOW + 3600)  # it is over
    later = listing(EventType="Redeploy", EventStatus="Started", Resources=["web-1"])
    record, actions = run(record, later, now=NOW + 86400)
    assert record.phase is Phase.DRAINING and actions == [Drain(LBS)]


# -- the transitions table ---------------------------------------------------------------


def test_the_table_names_every_phase_and_only_recovering_leads_back_in_service() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert {p for p, to in TRANSITIONS.items() if Phase.IN_SERVICE in to} == {Phase.RECOVERING}
    assert all(Phase.RECOVERING in to for p, to in TRANSITIONS.items())  # undrain, from anywhere
    assert TRANSITIONS[Phase.HELD] == {Phase.REMOVED, Phase.RECOVERING}  # never by itself
    assert TRANSITIONS[Phase.REMOVED] == {Phase.RECOVERING}


def test_a_move_outside_the_table_is_refused() -> None:
    # Every move ``step`` makes in this file goes through ``_enter`` and its check.
    with pytest.raises(AssertionError, match="held -> in_service"):
        _enter(at(Phase.HELD), Phase.IN_SERVICE, NOW, "back")


def test_how_a_drain_ended_is_a_field_not_the_note() -> None:
    views = both(draining_view(0))
    drained, _ = run(at(Phase.DRAINING), tick(event(), lbs=both(OUT)))
    late, _ = run(at(Phase.DRAINING), tick(event(), lbs=both(draining_view(2))), now=NOW + 300)
    gone, _ = run(at(Phase.DRAINING), tick(lbs=views))
    manual, _ = run(at(Phase.DRAINING, manual=True), tick(event(), lbs=views))
    assert drained.drain_result is DrainResult.DRAINED and drained.phase is Phase.DRAINED
    assert late.drain_result is DrainResult.DEADLINE
    assert gone.drain_result is DrainResult.CANCELLED and gone.phase is Phase.RECOVERING
    assert manual.drain_result is DrainResult.DRAINED and manual.phase is Phase.HELD


def test_a_removal_that_will_not_be_approved_drains_in_time_for_not_before() -> None:
    # AWS announces a retirement weeks ahead and cannot approve: out in time, not for weeks
    policy = replace(POLICY, approve=Approve.NEVER)
    retire = event(EventType.TERMINATE, not_before=NOW + 14 * 86400)
    new, actions = run(Record(boot_id=BOOT), tick(retire, lbs=both(IN)), policy=policy)
    assert new.phase is Phase.IN_SERVICE and actions == []
    due = drain_due(retire, policy)
    assert due == NOW + 14 * 86400 - 300 - 30
    later, actions = run(new, tick(retire, lbs=both(IN)), now=due, policy=policy)
    assert later.phase is Phase.DRAINING and actions == [Drain(LBS)]


# -- a turn goes on while its own results allow it -----------------------------------------


def test_the_health_result_that_makes_the_node_healthy_puts_it_back_in_the_same_turn() -> None:
    record = recovering(event=None, health_ok=2, next_health=NOW + 2)
    new, actions = run(record, HealthResult(True, "200"))
    assert new.health_ok == 3 and actions == [PutBack(LBS)]


def test_the_health_result_puts_nothing_back_while_an_event_is_followed_or_polls_fail() -> None:
    for record in (
        recovering(health_ok=2, next_health=NOW + 2),  # the event is still listed
        recovering(event=None, health_ok=2, next_health=NOW + 2, blind=True),
    ):
        new, actions = run(record, HealthResult(True, "200"))
        assert new.health_ok == 3 and not any(isinstance(a, PutBack) for a in actions)


def test_a_failed_poll_is_remembered_until_the_next_one_reads() -> None:
    record = recovering(event=None, health_ok=0)
    record, _ = run(record, tick(unknown=True, lbs=both(OUT)))
    assert record.blind
    record, _ = run(record, tick(lbs=both(OUT)), now=NOW + 1)
    assert not record.blind


def test_a_tick_a_few_milliseconds_early_still_checks_health() -> None:
    record = recovering(event=None, next_health=NOW + 2)
    _, actions = run(record, tick(lbs=both(OUT)), now=NOW + 1.995)
    assert CheckHealth() in actions
    _, actions = run(record, tick(lbs=both(OUT)), now=NOW + 1)
    assert CheckHealth() not in actions


def test_health_is_checked_between_polls_and_a_waiting_put_back_is_tried_again() -> None:
    from drainer.core import Recheck, wants_recheck

    record = recovering(event=None, next_health=NOW)
    assert wants_recheck(record, POLICY)
    _, actions = run(record, Recheck(both(OUT)))
    assert actions == [StartChecks(LBS), CheckHealth()]
    healthy = recovering(event=None, health_ok=3, next_health=NOW + 2)
    assert wants_recheck(healthy, POLICY)  # the put-back may wait for the LB's own check
    _, actions = run(healthy, Recheck(both(OUT)))
    assert actions == [PutBack(LBS)]
    blind = replace(healthy, blind=True)  # the last poll failed: not between polls either
    _, actions = run(blind, Recheck(both(OUT)))
    assert not any(isinstance(a, PutBack) for a in actions)


def test_where_the_lb_checks_the_node_itself_draining_is_out_enough() -> None:
    from drainer.core import ChecksStarted

    record, actions = run(recovering(event=None), tick(lbs=both(OUT)))
    assert StartChecks(LBS) in actions
    record, _ = run(record, ChecksStarted("lb-a"))
    assert record.checking == frozenset({"lb-a"})
    checking = {"lb-a": draining_view(0), "lb-b": draining_view(0)}
    _, actions = run(record, tick(lbs=checking), now=NOW + 1)
    assert TakeOut(("lb-b",)) in actions  # lb-b did not say it checks: out again
    _, actions = run(record, tick(lbs={"lb-a": IN, "lb-b": OUT}), now=NOW + 1)
    assert TakeOut(("lb-a",)) in actions  # a reload put it in service: out again
    # an LB not owned, or a phase other than recovering, is not noted
    assert run(record, ChecksStarted("lb-x"))[0].checking == record.checking
    assert run(at(Phase.DRAINED), ChecksStarted("lb-a"))[0].checking == frozenset()
    # put back there: no longer checking; back in service: none is
    record, _ = run(record, PutBackDone("lb-a"))
    assert record.checking == frozenset()
    record, _ = run(replace(record, checking=frozenset({"lb-b"})), PutBackDone("lb-b"))
    assert record.phase is Phase.IN_SERVICE and record.checking == frozenset()


def test_a_new_drain_during_recovery_forgets_the_checks() -> None:
    record = recovering(event=None, checking=frozenset(LBS))
    e2 = event(eid="E2")
    new, _ = run(record, tick(e2, lbs=both(draining_view(0))))
    assert new.phase is Phase.DRAINING and new.checking == frozenset()


def test_healthy_and_free_starts_no_checks() -> None:
    record = recovering(event=None, health_ok=3)
    _, actions = run(record, tick(lbs=both(OUT)))
    assert not any(isinstance(a, StartChecks) for a in actions)


def test_after_a_reboot_a_newer_document_without_the_event_ends_it_at_once() -> None:
    record = at(Phase.IN_MAINTENANCE, event=STARTED, incarnation=7, listed_in=7)
    record, _ = run(
        record, tick(STARTED, lbs=both(OUT), boot="boot-2", incarnation=7), policy=WINDOWS
    )
    assert record.phase is Phase.RECOVERING and record.rebooted
    # the same document without it (no newer incarnation): the window holds
    same, _ = run(record, tick(lbs=both(OUT), boot="boot-2", incarnation=7), policy=WINDOWS)
    assert same.event == STARTED
    # an incarnation that went back: doubt, the long window
    back, _ = run(record, tick(lbs=both(OUT), boot="boot-2", incarnation=1), policy=WINDOWS)
    assert back.event == STARTED and back.doubt
    # a newer one: over
    new, _ = run(record, tick(lbs=both(OUT), boot="boot-2", incarnation=8), policy=WINDOWS)
    assert new.event is None
    # without the reboot, a newer document waits out the window as before
    out = at(Phase.IN_MAINTENANCE, event=STARTED, incarnation=7, listed_in=7)
    out, _ = run(out, tick(lbs=both(OUT), incarnation=8), policy=WINDOWS)
    assert out.phase is Phase.IN_MAINTENANCE and out.event == STARTED


def test_a_reboot_for_one_event_does_not_end_the_next_one_early() -> None:
    record = recovering(event=STARTED, rebooted=True, incarnation=7, listed_in=7)
    e2 = event(eid="E2")
    record, _ = run(record, tick(STARTED, e2, lbs=both(OUT), incarnation=8), policy=WINDOWS)
    assert record.phase is Phase.DRAINING and not record.rebooted


def test_an_event_drained_in_the_turn_that_first_listed_it_knows_its_document() -> None:
    # The drain ends in the turn that first saw the event, and the VM reboots before the
    # next poll: the incarnation that listed it is known all the same.
    from drainer.core import Recheck

    record, _ = run(Record(boot_id=BOOT), tick(event(), lbs=both(IN), incarnation=1))
    assert record.listed_in == 1
    record, _ = run(record, Recheck(both(draining_view(0))), policy=WINDOWS)
    assert record.phase is Phase.DRAINED
    record, _ = run(record, tick(lbs=both(OUT), boot="boot-2", incarnation=3), policy=WINDOWS)
    assert record.phase is Phase.RECOVERING and record.event is None


def test_no_checks_restarted_when_the_check_due_now_may_make_the_node_healthy() -> None:
    # A re-assert now could set back a load balancer whose own check has passed, just
    # before the health result puts the node back in this same turn.
    record = recovering(event=None, health_ok=2, next_health=NOW)
    _, actions = run(record, tick(lbs=both(OUT)))
    assert actions == [CheckHealth()]
    _, actions = run(replace(record, health_ok=1), tick(lbs=both(OUT)))
    assert actions == [StartChecks(LBS), CheckHealth()]
