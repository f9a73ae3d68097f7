"""The engine's decisions, in-process and in milliseconds.

``drainer.engine.Engine`` driven by the test kit: an in-memory event source and load
balancer, a fake clock, an injected health check and a real ``Store`` in ``tmp_path``.
Each ``turn`` is what one poll of ``drainer run`` does; a reboot or a crash is a new
``Engine`` on the same state directory. tests/test_daemon.py runs the same stories with
``drainer run`` as a process, over HTTP (what only a process shows stays there: signals,
``kill -9``, the CLI, the log).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from drainer.budget import Admission, BudgetError, Holder, Pool
from drainer.budget.local import LocalSlots
from drainer.config import Config, HealthConfig, parse_config
from drainer.core import ManualUndrain, Phase, Record
from drainer.engine import Engine
from drainer.errors import PermanentAdapterError, TransientAdapterError
from drainer.metrics import Metrics
from drainer.model import EventStatus, EventType, LBStatus, PoolView
from drainer.store import Store
from drainer.testing import FakeClock, MemoryLoadBalancer, MemorySource, maintenance

NODE = "web-1"
LB = "lb1"
HEALTH_INTERVAL = 2.0
GONE_AFTER = 5.0  # source.gone_after's default: an unlisted event is over after this


class Crash(BaseException):
    """The process dies here (``kill -9``): nothing after it runs, no handler sees it."""


@dataclass
class Node:
    """One VM as the engine sees it; ``engine()`` is what a (re)started process builds."""

    state_dir: Path
    config: Config
    clock: FakeClock = field(default_factory=FakeClock)
    source: MemorySource = field(default_factory=MemorySource)
    lb: MemoryLoadBalancer = field(default_factory=lambda: MemoryLoadBalancer(LB, sessions=2))
    healthy: bool = True
    boot_id: str = "boot-1"
    checks: int = 0

    def check(self, _: HealthConfig) -> tuple[bool, str]:
        self.checks += 1
        return self.healthy, "200 OK" if self.healthy else "503 Service Unavailable"

    def engine(self) -> Engine:
        return Engine(
            policy=self.config.policy(node_names=frozenset({NODE}), lbs=(LB,)),
            lbs={LB: self.lb},
            store=Store(self.state_dir),
            source=self.source,
            boot_id=self.boot_id,
            health=self.config.health,
            metrics=Metrics(),
            clock=self.clock,
            check=self.check,
        )

    def reboot(self) -> Engine:
        """The VM came back: a new boot id, a new process, the same state directory."""
        number = int(self.boot_id.rpartition("-")[2]) + 1
        self.boot_id = f"boot-{number}"
        return self.engine()

    def saved(self) -> Record:
        return Store(self.state_dir).load()


def turn(node: Node, engine: Engine) -> Phase:
    """One poll of the source and the turn it leads to."""
    record, _ = engine.turn(node.source.events())
    return record.phase


def drained(node: Node, engine: Engine) -> Phase:
    """One turn drains, reads the load balancer again right after (no session left,
    ``node.lb.sessions`` 0) and moves on at once."""
    phase = turn(node, engine)
    assert node.lb.calls[:1] == ["drain"]
    return phase


def turn_until(node: Node, engine: Engine, phase: Phase, *, every: float, turns: int = 20) -> int:
    """Advance the clock by ``every`` and turn until ``phase``; return the turns taken."""
    for taken in range(1, turns + 1):
        node.clock.advance(every)
        if turn(node, engine) is phase:
            return taken
    raise AssertionError(f"not {phase.value} after {turns} turns: {node.saved()}")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    config = parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "drain": {"timeout": "30s", "margin": "5s"},
            "health": {
                "http": {"url": "http://127.0.0.1:9/"},  # never asked: the check is injected
                "interval": f"{HEALTH_INTERVAL}s",
                "successes": 2,
                "deadline": "60s",
            },
            "load_balancers": [{"type": "mock", "name": LB}],
            "metrics": {"listen": None},
        }
    )
    yield Node(state_dir=tmp_path / "state", config=config)


def test_a_whole_reboot_drain_approve_reboot_health_put_back(node: Node) -> None:
    engine = node.engine()
    assert turn(node, engine) is Phase.IN_SERVICE and node.lb.calls == []

    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert turn(node, engine) is Phase.DRAINING
    assert node.lb.calls == ["drain"] and node.source.approvals == []  # not while sessions left
    assert turn(node, engine) is Phase.DRAINING  # still two sessions open

    node.lb.sessions = 0
    assert turn(node, engine) is Phase.DRAINED
    assert node.lb.calls == ["drain", "take_out"]
    assert node.source.approvals == ["e1"]  # drained, and web-1 is its only resource

    node.source.publish(maintenance("e1", status=EventStatus.STARTED))
    assert turn(node, engine) is Phase.IN_MAINTENANCE
    assert node.saved().phase is Phase.IN_MAINTENANCE  # on disk before anything else

    engine = node.reboot()  # the VM went down and came back while the event is listed
    node.healthy = False
    assert turn(node, engine) is Phase.RECOVERING
    assert node.saved().rebooted

    node.source.publish()  # the event is over
    turn(node, engine)
    # believed at once: the node rebooted while out for it, and a newer document
    # (a higher DocumentIncarnation) no longer lists it
    assert node.saved().event is None
    turn(node, engine)
    assert node.lb.calls == ["drain", "take_out"]  # unhealthy: not put back

    node.healthy = True
    turn_until(node, engine, Phase.IN_SERVICE, every=HEALTH_INTERVAL)
    assert node.lb.calls == ["drain", "take_out", "put_back"]
    assert node.lb.status is LBStatus.IN_SERVICE
    assert node.source.approvals == ["e1"]
    assert node.saved().phase is Phase.IN_SERVICE and not node.saved().owned


def test_a_cancelled_event_puts_the_node_back_after_its_health_checks(node: Node) -> None:
    engine = node.engine()
    node.lb.sessions = 0
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert drained(node, engine) is Phase.DRAINED
    assert node.source.approvals == ["e1"]

    node.source.publish()  # cancelled: it disappears without starting
    assert turn(node, engine) is Phase.DRAINED  # not believed at once
    node.clock.advance(GONE_AFTER)
    checks = node.checks
    turn_until(node, engine, Phase.IN_SERVICE, every=HEALTH_INTERVAL)
    assert node.checks >= checks + 2  # health.successes passing checks first
    assert node.lb.calls == ["drain", "take_out", "put_back"]


def test_an_unhealthy_node_is_held_at_the_health_deadline(node: Node) -> None:
    engine = node.engine()
    node.lb.sessions = 0
    node.source.publish(maintenance("e1", status=EventStatus.STARTED))
    assert drained(node, engine) is Phase.IN_MAINTENANCE
    node.healthy = False
    node.source.publish()
    turn(node, engine)
    node.clock.advance(GONE_AFTER)
    assert turn(node, engine) is Phase.RECOVERING

    turns = turn_until(node, engine, Phase.HELD, every=HEALTH_INTERVAL, turns=40)
    assert turns * HEALTH_INTERVAL >= 60 - HEALTH_INTERVAL  # health.deadline: 60s
    held = node.saved()
    assert held.alert and not held.manual
    assert node.lb.calls == ["drain", "take_out"] and node.lb.status is LBStatus.OUT

    node.healthy = True  # healthy again later: held until a person undrains
    for _ in range(5):
        node.clock.advance(HEALTH_INTERVAL)
        assert turn(node, engine) is Phase.HELD
    assert "put_back" not in node.lb.calls


def test_a_refusal_of_the_load_balancer_is_reported_then_cleared(node: Node) -> None:
    engine = node.engine()
    node.lb.fail["drain"] = PermanentAdapterError("below min_in_service")
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert turn(node, engine) is Phase.DRAINING
    assert engine.refused == {LB: "below min_in_service"}
    assert node.lb.calls == [] and node.lb.status is LBStatus.IN_SERVICE

    del node.lb.fail["drain"]
    node.lb.sessions = 0
    turn(node, engine)
    assert engine.refused == {}
    assert node.lb.calls[0] == "drain"


def test_a_failed_read_and_a_refused_action_are_counted_apart(node: Node) -> None:
    # DrainerLoadBalancerRefusing counts kind="adapter": a read that fails is not a refusal
    engine = node.engine()
    node.lb.fail["state"] = TransientAdapterError("connection refused")
    assert engine.views() == {LB: None}
    assert (errors(engine, "adapter_read"), errors(engine, "adapter")) == (1, 0)

    del node.lb.fail["state"]
    node.lb.fail["drain"] = PermanentAdapterError("below min_in_service")
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    turn(node, engine)
    assert LB in engine.refused
    assert errors(engine, "adapter_read") == 1 and errors(engine, "adapter") > 0


def test_a_failed_take_out_is_retried_at_the_next_turn(node: Node) -> None:
    engine = node.engine()
    node.lb.sessions = 0
    node.lb.fail["take_out"] = TransientAdapterError("busy")
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert drained(node, engine) is Phase.DRAINED
    assert node.lb.calls == ["drain"] and LB in engine.refused

    turn(node, engine)
    assert node.lb.calls == ["drain"]  # still refused
    del node.lb.fail["take_out"]
    turn(node, engine)
    assert node.lb.calls == ["drain", "take_out"] and node.lb.status is LBStatus.OUT


def test_a_crash_between_save_and_action_is_resumed_by_the_next_engine(node: Node) -> None:
    class Crashing(MemoryLoadBalancer):
        def drain(self) -> None:
            raise Crash

    healthy_lb = node.lb
    node.lb = Crashing(LB, sessions=0)
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    with pytest.raises(Crash):
        turn(node, node.engine())
    assert node.saved().phase is Phase.DRAINING  # the intent was saved before the drain
    assert node.lb.calls == []

    node.lb = healthy_lb  # a new process, the same load balancer state: in service
    healthy_lb.sessions = 0
    assert drained(node, node.engine()) is Phase.DRAINED
    assert healthy_lb.calls == ["drain", "take_out"]
    assert node.source.approvals == ["e1"]


def test_a_started_event_without_notice_drains_at_once_and_is_never_approved(
    node: Node,
) -> None:
    engine = node.engine()
    node.source.publish(maintenance("e1", status=EventStatus.STARTED, resources=(NODE, "web-2")))
    assert turn(node, engine) is Phase.DRAINING
    assert node.lb.calls == ["drain"]  # at the first poll that lists it
    node.lb.sessions = 0
    assert turn(node, engine) is Phase.IN_MAINTENANCE
    assert node.lb.calls == ["drain", "take_out"] and node.source.approvals == []


def test_an_event_for_another_vm_is_ignored(node: Node) -> None:
    engine = node.engine()
    node.source.publish(
        maintenance("e1", status=EventStatus.STARTED, resources=("web-2",)),
        maintenance("e2", EventType.PREEMPT, resources=("web-3",)),
    )
    for _ in range(5):
        node.clock.advance(1)
        assert turn(node, engine) is Phase.IN_SERVICE
    assert node.lb.calls == [] and node.source.approvals == []


def test_a_second_event_during_recovery_is_handled_before_going_back(node: Node) -> None:
    engine = node.engine()
    node.lb.sessions = 0
    node.healthy = False
    node.source.publish(maintenance("e1", status=EventStatus.STARTED))
    assert drained(node, engine) is Phase.IN_MAINTENANCE
    node.source.publish()
    turn(node, engine)
    node.clock.advance(GONE_AFTER)
    assert turn(node, engine) is Phase.RECOVERING

    node.source.publish(maintenance("e2", EventType.REDEPLOY, not_before=node.clock.now + 900))
    assert drained(node, engine) is Phase.DRAINED
    event = node.saved().event
    assert event is not None and event.event_id == "e2"
    assert node.source.approvals == ["e2"]
    assert "put_back" not in node.lb.calls


def test_preempt_removes_the_node_for_good(node: Node) -> None:
    engine = node.engine()
    node.lb.sessions = 0
    node.source.publish(maintenance("e1", EventType.PREEMPT, not_before=node.clock.now + 30))
    assert drained(node, engine) is Phase.REMOVED
    assert node.lb.calls == ["drain", "take_out"]
    node.source.publish()
    for _ in range(10):
        node.clock.advance(HEALTH_INTERVAL)
        assert turn(node, engine) is Phase.REMOVED
    assert node.saved().event is None and "put_back" not in node.lb.calls


def test_a_failed_poll_is_not_the_event_being_gone(node: Node) -> None:
    engine = node.engine()
    node.lb.sessions = 0
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert drained(node, engine) is Phase.DRAINED
    for _ in range(10):  # the metadata service fails: the daemon turns with no listing
        node.clock.advance(1)
        record, _ = engine.turn(None)
        assert record.phase is Phase.DRAINED
    assert node.lb.calls == ["drain", "take_out"]


# -- the fleet budget ------------------------------------------------------------------------
# A refusal or an engine error keeps a voluntary drain waiting (and is counted), the
# approval is fenced by a re-read of the slot, a lease that expired while the sidecar was
# down is taken again, an event naming more VMs than the budget allows is reported at once.


@dataclass
class FakeSlots:
    """A budget of one pool whose answers the test sets."""

    pools: tuple[Pool, ...] = (Pool("app", 1),)
    where: tuple[str, ...] = ("fake",)
    members: frozenset[str] = frozenset()
    free: bool = False
    error: str = ""
    held: bool = True
    alive: bool = True
    taken: list[tuple[str, bool]] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    release_error: str = ""

    def take(
        self, event_id: str, event_type: str, *, force: bool, within: float | None = None
    ) -> Admission:
        self.taken.append((event_id, force))
        if self.error:
            raise BudgetError(self.error)
        if self.free or force:
            return Admission(True, "L1", full=() if self.free else ("app",))
        return Admission(False, full=("app",), holders=(Holder("app", "web-9"),))

    def holds(self) -> bool:
        if self.error:
            raise BudgetError(self.error)
        return self.held

    def abandon(self, event_id: str, event_type: str) -> int:
        return 0

    def keepalive(self, lease: str) -> bool:
        return self.alive

    def release(self, lease: str) -> None:
        self.released.append(lease)
        if self.release_error:
            raise BudgetError(self.release_error)

    def close(self) -> None:
        return


def budgeted(node: Node, slots: FakeSlots) -> Engine:
    engine = node.engine()
    engine.policy = replace(engine.policy, budget=True)
    engine.slots = slots
    engine.slot_retry = 0.0
    return engine


def errors(engine: Engine, kind: str) -> float:
    value = engine.metrics.registry.get_sample_value("drainer_errors_total", {"kind": kind})
    return value or 0.0


def test_refused_or_unanswered_the_drain_waits_and_says_why(node: Node) -> None:
    slots = FakeSlots()
    engine = budgeted(node, slots)
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert turn(node, engine) is Phase.IN_SERVICE
    assert node.saved().slot_wait == "no free slot in app (held by web-9)"
    slots.error = "etcd: no endpoint answered"
    assert turn(node, engine) is Phase.IN_SERVICE
    assert "the budget cannot answer: etcd: no endpoint answered" in node.saved().slot_wait
    assert errors(engine, "budget") == 1
    assert node.lb.calls == []
    slots.error, slots.free = "", True
    assert turn(node, engine) is Phase.DRAINING and node.saved().slot == "L1"
    waits = engine.metrics.registry.get_sample_value("drainer_budget_waits_total")
    assert waits == 1


def test_the_approval_is_fenced_by_the_slot(node: Node) -> None:
    slots = FakeSlots(free=True, held=False)
    engine = budgeted(node, slots)
    node.lb.sessions = 0
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    turn(node, engine)
    assert turn(node, engine) is Phase.DRAINED
    assert node.source.approvals == []
    assert "budget slot is gone" in node.saved().alert
    slots.held = True
    node.clock.advance(61)  # approve_retry
    turn(node, engine)
    assert node.source.approvals == ["e1"]


def test_a_lease_gone_while_down_is_taken_again_forced(node: Node) -> None:
    slots = FakeSlots(free=True)
    engine = budgeted(node, slots)
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    turn(node, engine)
    record = node.saved()
    assert record.slot == "L1"
    slots.alive, slots.free = False, False
    given = engine.keep_slot(record)
    assert given is not None and slots.taken[-1] == ("e1", True)
    after, _ = engine.turn(None, given)
    assert after.slot == "L1" and after.over_budget


def test_an_event_naming_more_vms_than_the_budget_is_reported_at_once(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    engine = budgeted(node, FakeSlots())
    batch = replace(
        maintenance("e1", not_before=node.clock.now + 900), resources=(NODE, "web-2", "web-3")
    )
    node.source.publish(batch)
    with caplog.at_level(logging.WARNING, logger="drainer"):
        turn(node, engine)
    assert "event e1 names 3 VMs, more than the 1 the budget lets app have out" in caplog.text
    assert errors(engine, "budget_batch") == 1


def through_a_maintenance(node: Node, slots: FakeSlots) -> Engine:
    """A Reboot with a free slot, from its event to back in service."""
    engine = budgeted(node, slots)
    node.lb.sessions = 0
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    turn(node, engine)
    turn(node, engine)
    node.source.publish()
    turn_until(node, engine, Phase.IN_SERVICE, every=3, turns=10)
    return engine


def test_back_in_service_gives_the_slot_back(node: Node, tmp_path: Path) -> None:
    slots = FakeSlots(free=True)
    through_a_maintenance(node, slots)
    assert node.saved().phase is Phase.IN_SERVICE and slots.released == ["L1"]


def test_an_event_gone_after_an_unanswered_ask_gives_back_what_the_ask_may_hold(
    node: Node,
) -> None:
    # The budget took the slot but its answer was lost (a timeout): the drain waits; the
    # event is cancelled before the next ask would have found the slot.
    slots = FakeSlots(error="etcd: no endpoint answered: ReadTimeout")
    engine = budgeted(node, slots)
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert turn(node, engine) is Phase.IN_SERVICE
    node.source.publish()
    assert turn(node, engine) is Phase.IN_SERVICE
    assert slots.released == [""] and node.saved().slot_wait == ""


def back_without_giving_the_slot_back(node: Node) -> tuple[FakeSlots, Engine]:
    """A whole maintenance, with etcd blinking as the node goes back in service."""
    slots = FakeSlots(free=True, release_error="etcd: no endpoint answered")
    return slots, through_a_maintenance(node, slots)


def test_a_slot_not_given_back_is_given_back_at_the_next_keep_alive(node: Node) -> None:
    # The slot must not stay taken for the rest of its lease (lease_ttl, 30 min) with
    # the node serving again.
    slots, engine = back_without_giving_the_slot_back(node)
    assert slots.released == ["L1"] and node.saved().slot == ""
    assert engine.keep_slot(node.saved()) is None and slots.released == ["L1", "L1"]
    slots.release_error = ""
    engine.keep_slot(node.saved())
    engine.keep_slot(node.saved())
    assert slots.released == ["L1", "L1", "L1"]


def test_a_slot_not_given_back_is_not_released_once_the_node_holds_it_again(
    node: Node,
) -> None:
    slots, engine = back_without_giving_the_slot_back(node)
    slots.release_error = ""
    node.source.publish(maintenance("e2", not_before=node.clock.now + 900))
    assert turn(node, engine) is not Phase.IN_SERVICE  # the budget answers with the same slot
    engine.keep_slot(node.saved())
    assert slots.released == ["L1"]


def test_keys_gone_under_a_live_lease_are_registered_again(node: Node) -> None:
    # The lease lives on but the node's keys went (deleted with etcdctl, or by a release
    # that raced a manual drain): out of service without a holder, others would be let in.
    slots = FakeSlots(free=True)
    engine = budgeted(node, slots)
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    turn(node, engine)
    assert engine.keep_slot(node.saved()) is None and slots.taken == [("e1", False)]
    slots.held = False
    given = engine.keep_slot(node.saved())
    assert given is not None and slots.taken[-1] == ("e1", True)


def test_an_unanswering_budget_is_not_asked_at_every_poll_by_a_node_already_out(
    node: Node,
) -> None:
    # Partitioned from etcd, each ask costs timeout x endpoints; a node out without a
    # slot re-asks (forced) to register, but not at every 1 s poll: slot_retry applies.
    slots = FakeSlots(error="etcd: no endpoint answered: ConnectTimeout")
    engine = budgeted(node, slots)
    engine.slot_retry = 10.0
    node.source.publish(maintenance("e1", EventType.PREEMPT, not_before=node.clock.now + 30))
    assert turn(node, engine) is Phase.DRAINING
    for _ in range(3):
        node.clock.advance(1)
        turn(node, engine)
    assert slots.taken == [("e1", True)]
    node.clock.advance(10)
    turn(node, engine)
    assert slots.taken == [("e1", True), ("e1", True)]


def test_a_slot_the_cli_could_not_give_back_is_given_back_by_the_daemon(node: Node) -> None:
    # `drainer undrain` brings the node back in its own process; etcd blinks as that
    # process gives the slot back, and the process exits: the daemon, which sees the
    # record change under it, gives the slot back at its next keep-alive.
    daemon_slots = FakeSlots(free=True)
    daemon = budgeted(node, daemon_slots)
    daemon.follow_disk = True
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert turn(node, daemon) is Phase.DRAINING and node.saved().slot == "L1"
    cli_slots = FakeSlots(release_error="etcd: no endpoint answered")
    cli = budgeted(node, cli_slots)
    record, _ = cli.turn(None, ManualUndrain())
    assert record.phase is Phase.IN_SERVICE and cli_slots.released == ["L1"]
    assert turn(node, daemon) is Phase.IN_SERVICE
    daemon.keep_slot(node.saved())
    assert daemon_slots.released == ["L1"]


# A reload that moves the budget (engine, endpoints, prefix, node id, pools) gives back
# what the old one holds, and a node out registers with the new one.


def test_a_reload_that_moves_the_budget_hands_an_out_node_s_slot_over(node: Node) -> None:
    old_slots = FakeSlots(free=True, where=("etcd", "/a/"))
    old = budgeted(node, old_slots)
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert turn(node, old) is Phase.DRAINING and node.saved().slot == "L1"
    new_slots = FakeSlots(free=False, where=("etcd", "/b/"))
    new = budgeted(node, new_slots)
    moved = old.hand_over_slots(new)
    new.adopt(old, budget_moved=moved)
    assert moved and old_slots.released == ["L1"]
    assert new_slots.taken == [("e1", True)]  # out already: registered, forced
    record = node.saved()
    assert record.slot == "L1" and record.over_budget and record.phase is Phase.DRAINING


def test_a_reload_that_moves_the_budget_in_service_gives_back_what_a_lost_ask_holds(
    node: Node,
) -> None:
    old_slots = FakeSlots(error="etcd: no endpoint answered: ReadTimeout", where=("etcd",))
    old = budgeted(node, old_slots)
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert turn(node, old) is Phase.IN_SERVICE and node.saved().slot_wait
    old.metrics.set_budget({"app": 1}, ())
    old_slots.error = ""
    new_slots = FakeSlots(where=("local",))
    new = budgeted(node, new_slots)
    new.metrics = old.metrics  # the daemon's, shared across a reload
    moved = old.hand_over_slots(new)
    new.adopt(old, budget_moved=moved)
    assert old_slots.released == [""]  # whatever the node holds there
    assert new_slots.taken == [] and node.saved().slot_wait == ""
    series = {"pool": "app", "state": "free"}
    assert new.metrics.registry.get_sample_value("drainer_budget_slots", series) is None


def test_a_reload_that_keeps_the_budget_where_it_was_keeps_the_slot(node: Node) -> None:
    old_slots = FakeSlots(free=True)
    old = budgeted(node, old_slots)
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    turn(node, old)
    new = budgeted(node, FakeSlots(free=True))
    assert not old.hand_over_slots(new)
    new.adopt(old, budget_moved=False)
    assert old_slots.released == [] and node.saved().slot == "L1"


def test_over_budget_drains_are_counted_per_pool(node: Node) -> None:
    # The node is in app and api; app is full at its latest start, api is not: the
    # alert must name app, and the count of api stay true.
    slots = FakeSlots(pools=(Pool("app", 1), Pool("api", 1)))
    engine = budgeted(node, slots)
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert turn(node, engine) is Phase.IN_SERVICE
    node.clock.advance(900 - 35)  # its latest start: drain timeout 30 s, margin 5 s
    turn(node, engine)
    assert slots.taken[-1] == ("e1", True) and node.saved().over_budget

    def over(pool: str) -> float | None:
        sample = "drainer_budget_over_budget_total"
        return engine.metrics.registry.get_sample_value(sample, {"pool": pool})

    assert (over("app"), over("api")) == (1.0, 0.0)


def test_the_local_budget_shows_each_pool_in_the_slot_metrics(node: Node) -> None:
    class Reporting(MemoryLoadBalancer):
        def pools(self) -> list[PoolView]:
            return [PoolView("app", 4, 2)]  # one other server out

    engine = budgeted(node, FakeSlots())
    engine.slots = LocalSlots({LB: Reporting(LB)}, 2)
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert turn(node, engine) is Phase.DRAINING

    def slots(state: str) -> float | None:
        sample = {"pool": "app", "state": state}
        return engine.metrics.registry.get_sample_value("drainer_budget_slots", sample)

    assert (slots("held"), slots("free")) == (1.0, 1.0)


def test_a_reload_that_changes_the_pools_in_the_same_place_keeps_the_slot(node: Node) -> None:
    old_slots = FakeSlots(free=True, where=("etcd", "/a/", "web-1"))
    old = budgeted(node, old_slots)
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert turn(node, old) is Phase.DRAINING and node.saved().slot == "L1"
    old.metrics.set_budget({"app": 1}, ())
    new = budgeted(node, FakeSlots(pools=(Pool("api", 1),), where=("etcd", "/a/", "web-1")))
    new.metrics = old.metrics  # the daemon's, shared across a reload
    assert not old.hand_over_slots(new)
    new.adopt(old, budget_moved=False)
    assert old_slots.released == [] and node.saved().slot == "L1"
    series = {"pool": "app", "state": "free"}
    assert new.metrics.registry.get_sample_value("drainer_budget_slots", series) is None


@pytest.mark.parametrize(
    ("before", "after", "moved"),
    [
        (["http://a:2379", "http://b:2379"], ["http://b:2379", "http://a:2379"], False),
        (["http://a:2379", "http://b:2379"], ["http://b:2379", "http://c:2379"], False),
        (["http://a:2379"], ["http://c:2379"], True),
    ],
)
def test_an_etcd_budget_moves_with_a_cluster_that_shares_no_member(
    before: list[str], after: list[str], moved: bool
) -> None:
    from drainer.budget import budget_moved
    from drainer.budget.etcd import EtcdBudget, EtcdConfig, EtcdSlots

    def slots(endpoints: list[str], prefix: str = "/drainer/v1/") -> EtcdSlots:
        config = EtcdConfig.model_validate({"endpoints": endpoints, "prefix": prefix})
        return EtcdSlots(EtcdBudget(config), "web-1", [Pool("app", 1)])

    assert budget_moved(slots(before), slots(after)) is moved
    assert budget_moved(slots(before), slots(before, "/other/"))
    assert budget_moved(slots(before), None) and not budget_moved(None, None)


def test_the_local_budget_drops_the_series_of_a_pool_no_longer_counted(node: Node) -> None:
    shown = [PoolView("app", 4, 2)]

    class Reporting(MemoryLoadBalancer):
        def pools(self) -> list[PoolView]:
            return shown

    engine = budgeted(node, FakeSlots())
    engine.slots = LocalSlots({LB: Reporting(LB)}, 1)  # app full: the drain waits
    node.source.publish(maintenance("e1", not_before=node.clock.now + 900))
    assert turn(node, engine) is Phase.IN_SERVICE
    shown[:] = [PoolView("web", 4, 2)]  # the backend renamed (or budget.pools reloaded)
    node.clock.advance(engine.slot_retry)
    assert turn(node, engine) is Phase.IN_SERVICE

    def free(pool: str) -> float | None:
        sample = {"pool": pool, "state": "free"}
        return engine.metrics.registry.get_sample_value("drainer_budget_slots", sample)

    assert (free("app"), free("web")) == (None, 0.0)


def test_the_local_settle_pause_never_runs_past_the_latest_start(node: Node) -> None:
    class Reporting(MemoryLoadBalancer):
        def pools(self) -> list[PoolView]:
            return [PoolView("app", 4, 3)]  # every other server in: room

    engine = budgeted(node, FakeSlots())
    engine.slots = LocalSlots({LB: Reporting(LB)}, 1, settle=5.0, sleep=node.clock.advance)
    engine.slots.random = lambda: 1.0  # the longest pause
    # drain timeout 30 s, margin 5 s: the latest start is 1 s away
    not_before = node.clock.now + 36
    node.source.publish(maintenance("e1", not_before=not_before))
    assert turn(node, engine) is Phase.DRAINING
    record = node.saved()
    assert record.slot and record.drain_deadline <= not_before - 5  # ends by NotBefore - margin
