"""The fleet budget in the pure core: a voluntary drain waits for a slot (never past its
latest start), the platform's deadline drains anyway and never approves, removals never
wait, an approval needs the slot, a node back in service gives its slot back."""

from __future__ import annotations

from dataclasses import replace

from test_core import BOOT, IN, NOW, OUT, POLICY, at, both, event, tick

from drainer.core import (
    Alert,
    Approve,
    ApproveEvent,
    Drain,
    ManualDrain,
    ManualUndrain,
    Phase,
    PutBackDone,
    Record,
    ReleaseSlot,
    SlotDropped,
    SlotRefused,
    SlotTaken,
    TakeSlot,
    step,
    waits_for_slot,
)
from drainer.model import EventStatus, EventType

BUDGET = replace(POLICY, budget=True)
LATEST = NOW + 900 - 300 - 30  # NotBefore - drain timeout - margin


def test_a_voluntary_drain_asks_for_a_slot_and_stays_in_service_while_refused() -> None:
    record, actions = step(Record(boot_id=BOOT), tick(event(), lbs=both(IN)), NOW, BUDGET)
    assert record.phase is Phase.IN_SERVICE and record.event is not None
    assert actions == [TakeSlot("E1", "Reboot", by=LATEST)]
    record, actions = step(record, SlotRefused("no free slot in app"), NOW, BUDGET)
    assert record.phase is Phase.IN_SERVICE and record.slot_wait == "no free slot in app"
    record, actions = step(record, tick(event(), lbs=both(IN)), NOW + 1, BUDGET)
    assert record.phase is Phase.IN_SERVICE and actions == [TakeSlot("E1", "Reboot", by=LATEST)]


def test_a_slot_starts_the_drain_in_the_same_turn_and_lets_it_be_approved() -> None:
    record, _ = step(Record(boot_id=BOOT), tick(event(), lbs=both(IN)), NOW, BUDGET)
    record, actions = step(record, SlotTaken("L1", lbs=both(IN)), NOW, BUDGET)
    assert record.phase is Phase.DRAINING and record.slot == "L1"
    assert actions == [Drain(("lb-a", "lb-b"))]  # no TakeSlot: it holds one
    record, actions = step(record, tick(event(), lbs=both(OUT)), NOW + 1, BUDGET)
    assert record.phase is Phase.DRAINED
    assert ApproveEvent("E1", "L1") in actions


def test_without_a_slot_by_its_latest_start_it_drains_anyway_forced_and_never_approves() -> None:
    record, _ = step(Record(boot_id=BOOT), tick(event(), lbs=both(IN)), NOW, BUDGET)
    record, _ = step(record, SlotRefused("no free slot in app"), NOW, BUDGET)
    record, actions = step(record, tick(event(), lbs=both(IN)), LATEST, BUDGET)
    assert record.phase is Phase.DRAINING and "drained anyway" in record.note
    assert TakeSlot("E1", "Reboot", force=True) in actions
    record, actions = step(record, SlotTaken("L1", over_budget=True), LATEST, BUDGET)
    assert record.over_budget and "over the fleet budget" in record.alert
    assert any(isinstance(a, Alert) for a in actions)
    record, actions = step(record, tick(event(), lbs=both(OUT)), LATEST + 1, BUDGET)
    assert record.phase is Phase.DRAINED
    assert not any(isinstance(a, ApproveEvent) for a in actions)


def test_removals_and_started_events_never_wait() -> None:
    for early in (
        event(EventType.PREEMPT, not_before=NOW + 30),
        event(EventType.TERMINATE),
        event(status=EventStatus.STARTED),
        event(not_before=None),
    ):
        assert not waits_for_slot(early, NOW, BUDGET)
        record, actions = step(Record(boot_id=BOOT), tick(early, lbs=both(IN)), NOW, BUDGET)
        assert record.phase is Phase.DRAINING, early
        assert any(isinstance(a, TakeSlot) and a.force for a in actions), early


def test_an_out_node_without_a_slot_asks_again_every_tick_until_the_budget_has_it() -> None:
    record = at(Phase.DRAINED, event=event(status=EventStatus.STARTED))
    _, actions = step(record, tick(event(status=EventStatus.STARTED), lbs=both(OUT)), NOW, BUDGET)
    assert TakeSlot("E1", "Reboot", force=True) in actions
    record = replace(record, slot="L1")
    _, actions = step(record, tick(event(status=EventStatus.STARTED), lbs=both(OUT)), NOW, BUDGET)
    assert not any(isinstance(a, TakeSlot) for a in actions)


def test_back_in_service_gives_the_slot_back() -> None:
    record = at(Phase.RECOVERING, slot="L1", owned=frozenset({"lb-a"}), health_ok=3)
    record, actions = step(record, PutBackDone("lb-a"), NOW, BUDGET)
    assert record.phase is Phase.IN_SERVICE and record.slot == ""
    assert actions == [ReleaseSlot("L1")]


def test_an_event_gone_while_waiting_for_a_slot_gives_back_what_it_got() -> None:
    record, _ = step(Record(boot_id=BOOT), tick(event(), lbs=both(IN)), NOW, BUDGET)
    record, _ = step(record, SlotRefused("no free slot"), NOW, BUDGET)
    record, actions = step(record, tick(lbs=both(IN)), NOW + 1, BUDGET)
    # A refusal may be an answer lost after the budget granted (a timeout, a crash before
    # the save): whatever this node may hold for the ask is given back, not left to its
    # lease (which no one keeps alive, but which runs for lease_ttl).
    assert record.event is None and record.slot_wait == "" and actions == [ReleaseSlot("")]
    # a slot granted for an event that went meanwhile is given back at once
    record = Record(boot_id=BOOT)
    record, actions = step(record, SlotTaken("L2"), NOW, BUDGET)
    assert record.slot == "" and actions == [ReleaseSlot("L2")]


def test_a_manual_drain_keeps_the_slot_the_cli_took() -> None:
    record, actions = step(Record(boot_id=BOOT), ManualDrain(slot="L9"), NOW, BUDGET)
    assert record.phase is Phase.DRAINING and record.slot == "L9"
    assert not any(isinstance(a, TakeSlot) for a in actions)


def test_without_a_budget_nothing_changes() -> None:
    record, actions = step(Record(boot_id=BOOT), tick(event(), lbs=both(IN)), NOW, POLICY)
    assert record.phase is Phase.DRAINING and not any(isinstance(a, TakeSlot) for a in actions)


def test_a_manual_drain_forced_over_the_budget_is_over_budget_and_never_approves() -> None:
    record, _ = step(Record(boot_id=BOOT), ManualDrain(slot="L9", over_budget=True), NOW, BUDGET)
    assert record.slot == "L9" and record.over_budget
    held = replace(record, phase=Phase.HELD)
    record, actions = step(held, tick(event(), lbs=both(OUT)), NOW + 1, BUDGET)
    assert record.event is not None and not any(isinstance(a, ApproveEvent) for a in actions)


def test_an_undrain_of_a_node_in_service_takes_no_slot() -> None:
    # `drainer undrain` on a node that is in service (or waiting for a slot) puts it
    # back: nothing is out, so nothing registers, let alone over budget.
    waiting = replace(Record(boot_id=BOOT), event=event(), slot_wait="no free slot in app")
    for record in (Record(boot_id=BOOT), waiting):
        record, actions = step(record, ManualUndrain(), NOW, BUDGET)
        assert not any(isinstance(a, TakeSlot) for a in actions), actions
        record, actions = step(record, tick(lbs=both(IN)), NOW + 1, BUDGET)
        assert not any(isinstance(a, TakeSlot) for a in actions), actions
    # back in service, what the wait may have been granted is given back
    record, actions = step(record, PutBackDone("lb-a"), NOW + 2, BUDGET)
    record, actions = step(record, PutBackDone("lb-b"), NOW + 2, BUDGET)
    assert record.phase is Phase.IN_SERVICE and ReleaseSlot("") in actions


def test_an_event_naming_other_vms_is_not_approved_early_while_they_may_wait() -> None:
    # approve: always, an update-domain event naming web-1 and web-2. Under a budget
    # web-2 may be waiting in service for a slot: approving starts the maintenance for
    # both, web-2 would go down undrained. Such an event is handled as approve: sole
    # does: drained at its latest start by every VM it names, never approved.
    always = replace(BUDGET, approve=Approve.ALWAYS)
    batch = event(resources=("web-1", "web-2"))
    record, actions = step(Record(boot_id=BOOT), tick(batch, lbs=both(IN)), NOW, always)
    assert record.phase is Phase.IN_SERVICE and actions == []
    record, actions = step(record, tick(batch, lbs=both(IN)), LATEST, always)
    assert record.phase is Phase.DRAINING and TakeSlot("E1", "Reboot", force=True) in actions
    record, _ = step(record, SlotTaken("L1"), LATEST, always)
    record, actions = step(record, tick(batch, lbs=both(OUT)), LATEST + 1, always)
    assert record.phase is Phase.DRAINED and record.slot == "L1"
    assert not any(isinstance(a, ApproveEvent) for a in actions)
    # this VM's own event is approved early, as before
    record, _ = step(Record(boot_id=BOOT), tick(event(), lbs=both(IN)), NOW, always)
    record, _ = step(record, SlotTaken("L1", lbs=both(IN)), NOW, always)
    _, actions = step(record, tick(event(), lbs=both(OUT)), NOW + 1, always)
    assert ApproveEvent("E1", "L1") in actions


def test_a_slot_dropped_by_a_reload_is_taken_again_from_the_new_budget_while_out() -> None:
    record, _ = step(Record(boot_id=BOOT), tick(event(), lbs=both(IN)), NOW, BUDGET)
    record, _ = step(record, SlotTaken("L1", lbs=both(IN)), NOW, BUDGET)
    record, actions = step(record, SlotDropped(), NOW + 1, BUDGET)
    assert record.slot == "" and record.phase is Phase.DRAINING
    assert actions == [TakeSlot("E1", "Reboot", force=True)]
    # without a budget any more: dropped, nothing to take
    plain, actions = step(replace(record, slot="L1"), SlotDropped(), NOW + 1, POLICY)
    assert plain.slot == "" and actions == []
