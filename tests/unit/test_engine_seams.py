"""The engine where the pieces of issue 7 meet: a full disk, the daemon following the
record on disk and an operator's command in another process, with an injected clock.

Two engines on one state directory stand for ``drainer run`` and a CLI command; the
store is a real ``Store`` on a real directory whose saves fail while ``full`` is set
(the disk itself is filled for real in tests/test_full_disk.py), the load balancer a
small fake that holds the node's state, the health check a function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drainer.adapters.base import Check, LoadBalancer
from drainer.config import HealthConfig, TcpCheck
from drainer.core import Approve, ManualDrain, ManualUndrain, Phase, Policy, Reaction, Rule
from drainer.engine import Engine
from drainer.errors import StateError
from drainer.model import EventStatus, EventType, LBStatus, LBView, Listing, MaintenanceEvent
from drainer.store import Store

NODE = "web-1"
POLICY = Policy(
    node_names=frozenset({NODE}),
    lbs=("lb1",),
    rules={EventType.REBOOT: Rule(Reaction.DRAIN)},
    approve=Approve.SOLE,
    health_successes=1,
    gone_after=0,
    gone_after_doubt=0,
)
REBOOT = MaintenanceEvent("E1", EventType.REBOOT, EventStatus.SCHEDULED, (NODE,), 2e9)


@dataclass
class Disk:
    full: bool = False


class FillableStore(Store):
    def __init__(self, state_dir: Path, disk: Disk) -> None:
        super().__init__(state_dir)
        self.disk = disk

    def save(self, record: object) -> None:  # type: ignore[override]
        if self.disk.full:
            raise StateError(f"cannot write {self.path}: No space left on device")
        super().save(record)  # type: ignore[arg-type]


@dataclass
class FakeLB(LoadBalancer):
    name: str = "lb1"
    status: LBStatus = LBStatus.IN_SERVICE

    def state(self) -> LBView:
        return LBView(self.status, 0)

    def drain(self) -> None:
        if self.status is LBStatus.IN_SERVICE:
            self.status = LBStatus.DRAINING

    def take_out(self, *, kill: bool) -> None:
        self.status = LBStatus.OUT

    def put_back(self) -> bool:
        self.status = LBStatus.IN_SERVICE
        return True

    def preflight(self) -> list[Check]:
        return []

    def serve(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class FakeSource:
    approved: list[str] = field(default_factory=list)

    def events(self) -> Listing:
        return Listing()

    def approve(self, event_id: str) -> None:
        self.approved.append(event_id)

    def node_names(self) -> frozenset[str]:
        return frozenset({NODE})

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def engine(state_dir: Path, disk: Disk, lb: FakeLB, clock: Clock, *, daemon: bool) -> Engine:
    return Engine(
        policy=POLICY,
        lbs={"lb1": lb},  # type: ignore[dict-item]
        store=FillableStore(state_dir, disk),
        source=FakeSource(),
        boot_id="boot-1",
        health=HealthConfig(tcp=TcpCheck(port=1)),
        clock=clock,
        check=lambda _: (True, "ok"),
        follow_disk=daemon,
    )


def test_an_operators_drain_of_a_node_out_on_a_full_disk_stays_held(tmp_path: Path) -> None:
    disk, lb, clock = Disk(), FakeLB(), Clock()
    daemon = engine(tmp_path, disk, lb, clock, daemon=True)
    daemon.turn(Listing(()))  # the record exists while the disk has room
    disk.full = True
    daemon.turn(Listing((REBOOT,)))
    clock.now += 1
    record, _ = daemon.turn(Listing((REBOOT,)))
    assert record.phase is Phase.DRAINED and lb.status is LBStatus.OUT and daemon.unsaved
    # `drainer drain` from another process: the node is out already (by an unrecorded
    # drain), the operator wants it held; this cannot be saved either
    cli = engine(tmp_path, disk, lb, clock, daemon=False)
    cli.turn(None, ManualDrain())
    cli.turn(None)
    assert cli.unsaved  # the CLI says so (exit 1)
    # the maintenance ends, the disk is freed: the operator's drain must hold the node
    disk.full = False
    for _ in range(4):
        clock.now += 3
        record, _ = daemon.turn(Listing(()))
    assert record.manual and record.phase is Phase.HELD, record
    assert lb.status is LBStatus.OUT


class Killed(BaseException):
    """kill -9 at the load balancer call: nothing after it runs."""


def test_kill_9_between_the_note_and_the_drain_on_a_full_disk_drains_after_restart(
    tmp_path: Path,
) -> None:
    disk, clock = Disk(), Clock()
    lb = FakeLB()
    first = engine(tmp_path, disk, lb, clock, daemon=True)
    first.turn(Listing(()))
    disk.full = True

    def killed() -> None:
        raise Killed

    lb.drain = killed  # type: ignore[method-assign]
    with pytest.raises(Killed):
        first.turn(Listing((REBOOT,)))
    assert lb.status is LBStatus.IN_SERVICE  # the drain never ran; only the note says so
    del lb.drain
    # a new process, the disk still full, the metadata service not answering
    second = engine(tmp_path, disk, lb, clock, daemon=True)
    record, _ = second.turn(None)
    # drained, and no session left: taken out in the same turn, still unrecorded
    assert record.phase is Phase.DRAINED and lb.status is LBStatus.OUT and second.unsaved
    # and once the disk has room, the record holds it and the note is blank
    disk.full = False
    clock.now += 1
    record, _ = second.turn(None)
    assert second.store.load().phase in (Phase.DRAINING, Phase.DRAINED)
    assert not (tmp_path / "unrecorded").read_text().strip()


def test_an_undrain_by_the_cli_after_an_unrecorded_drain_is_not_undone_by_the_daemon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk, lb, clock = Disk(), FakeLB(), Clock()
    daemon = engine(tmp_path, disk, lb, clock, daemon=True)
    daemon.turn(Listing(()))
    disk.full = True
    daemon.turn(Listing((REBOOT,)))
    clock.now += 1
    daemon.turn(Listing((REBOOT,)))
    assert lb.status is LBStatus.OUT and daemon.unsaved
    disk.full = False  # freed; the daemon has not turned since
    cli = engine(tmp_path, disk, lb, clock, daemon=False)
    record, _ = cli.turn(None, ManualUndrain())  # --force: the event is still listed
    assert record.phase is Phase.IN_SERVICE and lb.status is LBStatus.IN_SERVICE
    for _ in range(3):
        clock.now += 1
        record, _ = daemon.turn(Listing((REBOOT,)))
        daemon.recheck()
    assert record.phase is Phase.IN_SERVICE and lb.status is LBStatus.IN_SERVICE
    assert not daemon.unsaved
    # the daemon followed the disk, so it no longer says the state cannot be saved, and
    # the next full disk is said again, not taken for the old one
    disk.full = True
    caplog.clear()
    later = MaintenanceEvent("E2", EventType.REBOOT, EventStatus.SCHEDULED, (NODE,), 2e9)
    daemon.turn(Listing((later,)))
    assert lb.status is LBStatus.OUT  # drained, no session left: out in the same turn
    assert "taking the node out of lb1 anyway" in caplog.text
    assert "No space left on device; the node is still drained" in caplog.text


def test_a_note_that_cannot_be_read_or_blanked_takes_the_node_out_once_not_forever(
    tmp_path: Path,
) -> None:
    # Read conservatively (out everywhere) it is adopted, the node recovers, the note
    # cannot be blanked: adopting it again at every turn made the node flap in and out.
    disk, lb, clock = Disk(), FakeLB(), Clock()
    daemon = engine(tmp_path, disk, lb, clock, daemon=True)
    daemon.turn(Listing(()))
    (tmp_path / "unrecorded").unlink()
    (tmp_path / "unrecorded").mkdir()
    seen = []
    for _ in range(12):
        clock.now += 3
        record, _ = daemon.turn(Listing(()))
        seen.append((record.phase, lb.status))
    assert seen[-6:] == [(Phase.IN_SERVICE, LBStatus.IN_SERVICE)] * 6, seen
