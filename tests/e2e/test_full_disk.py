"""Finding 12: a full disk kept the node in.

drainer recorded before it acted, so with ``state_dir`` full a due drain never happened.
Now a drain whose record cannot be saved still happens (out is the safe direction),
flagged loudly (an error in the log, an alert, ``drainer_errors_total{kind="state"}``)
and noted in the pre-allocated ``<state_dir>/unrecorded``; after a restart the node is
read back as drainer's own drain, put back after the maintenance and its health checks,
never left out as an operator's. A put-back never runs unrecorded.

A real full file system: a small tmpfs mounted on the state directory (needs root or
CAP_SYS_ADMIN; skipped with the reason otherwise), a real ``drainer run``, the fake
metadata service and the mock load balancer.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import NODE, World

from drainer.core import Phase, Policy, Reaction, Record, Rule, adopt_unrecorded
from drainer.model import EventStatus, EventType, MaintenanceEvent
from drainer.testing import free_port
from drainer.unrecorded import SIZE, Note, Unrecorded


class FullDisk:
    """A 256 KiB tmpfs on ``path``; ``fill()`` takes every free block, ``free()`` gives
    them back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}")

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)
        with pytest.raises(OSError):  # really full: not even a small new file fits
            (self.path / "probe").write_text("x" * 4096)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def disk(world: World) -> Iterator[FullDisk]:
    mounted = FullDisk(world.state_dir)
    try:
        yield mounted
    finally:
        mounted.unmount()


def state_errors(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    for line in text.splitlines():
        if line.startswith('drainer_errors_total{kind="state"}'):
            return float(line.split()[-1])
    return 0.0


def note(world: World) -> dict[str, object]:
    text = (world.state_dir / "unrecorded").read_text().strip()
    return json.loads(text) if text else {}


def drain_on_a_full_disk(world: World, disk: FullDisk) -> tuple[str, int]:
    """Start the daemon, fill its disk, schedule a Reboot: return (event id, metrics port)."""
    port = free_port()
    world.configure(metrics={"listen": f"127.0.0.1:{port}"})
    world.start()
    world.wait_record(lambda r: r.get("boot_id") == "boot-1", "the first record")
    world.wait_polls(2)
    disk.fill()
    eid = world.fake.schedule("Reboot", [NODE], not_before_in=900, start_on_approval=False)
    world.wait(lambda: world.lb_status() == "out", "the node taken out despite the full disk")
    assert world.calls()[:2] == ["drain", "take_out"]
    assert world.phase() == "in_service"  # really unrecorded: the disk took nothing
    assert note(world)["lbs"] == ["lb1"]
    log = world.log_path.read_text()
    assert "cannot write" in log and "ERROR" in log
    assert "taking the node out of lb1 anyway" in log  # the alert
    assert state_errors(port) >= 1
    return eid, port


def test_a_full_disk_drains_and_a_restart_reads_it_back_as_drainers_own(
    world: World, disk: FullDisk
) -> None:
    eid, _ = drain_on_a_full_disk(world, disk)

    # the daemon dies; the disk is freed; it comes back
    world.kill9()
    disk.free()
    world.start()
    world.wait_record(lambda r: r.get("owned") == ["lb1"], "the unrecorded drain adopted")
    record = world.record()
    assert record["phase"] in ("drained", "in_maintenance") and not record["manual"], record
    assert "could not record" in record["alert"]
    assert note(world) == {}  # recorded now: the note is blank again
    world.wait_polls(3)
    assert world.lb_status() == "out" and "put_back" not in world.calls()  # event still on

    world.fake.end_event(eid)
    world.wait(lambda: "put_back" in world.calls(), "the put-back after the maintenance")
    world.wait_record(lambda r: r.get("phase") == "in_service" and not r["owned"], "in service")
    assert world.calls().count("put_back") == 1 and world.lb_status() == "in_service"


def test_a_put_back_never_runs_unrecorded(world: World, disk: FullDisk) -> None:
    eid, port = drain_on_a_full_disk(world, disk)
    seen = state_errors(port)

    world.fake.end_event(eid)  # the maintenance is over, the node healthy: due back...
    world.wait(
        lambda: "not putting the node back" in world.log_path.read_text(),
        "the withheld put-back in the log",
    )
    world.wait_polls(5)
    assert "put_back" not in world.calls() and world.lb_status() == "out"  # ...but unrecorded
    assert state_errors(port) > seen  # it keeps trying to save

    disk.free()
    world.wait(lambda: "put_back" in world.calls(), "the put-back once the state is saved")
    world.wait_record(lambda r: r.get("phase") == "in_service" and not r["owned"], "in service")
    assert world.calls().count("put_back") == 1 and world.lb_status() == "in_service"
    assert note(world) == {}
    assert "the state is saved again" in world.log_path.read_text()


# -- the pure parts: reading a note back ------------------------------------------------------

POLICY = Policy(
    node_names=frozenset({NODE}),
    lbs=("a", "b"),
    rules={EventType.REBOOT: Rule(Reaction.DRAIN)},
    drain_timeout=60.0,
)
EVENT = MaintenanceEvent("E1", EventType.REBOOT, EventStatus.SCHEDULED, (NODE,), 1000.0)


def adopt(record: Record, **note: Any) -> Record:
    values: dict[str, Any] = {"lbs": frozenset({"a"}), "at": 100.0, "draining": False}
    values |= {"manual": False, "event": EVENT} | note
    return adopt_unrecorded(record, now=110.0, policy=POLICY, **values)


def test_a_node_noted_out_is_drainers_own_not_an_operators() -> None:
    record = adopt(Record(boot_id="b1"))
    assert (record.phase, record.owned, record.event) == (Phase.DRAINED, {"a"}, EVENT)
    assert not record.manual and "could not record" in record.alert


def test_a_noted_drain_in_progress_keeps_its_deadline() -> None:
    record = adopt(Record(), draining=True)
    assert (record.phase, record.drain_deadline) == (Phase.DRAINING, 160.0)


def test_an_operators_unrecorded_drain_stays_held() -> None:
    assert adopt(Record(), manual=True, event=None).phase is Phase.HELD


def test_a_damaged_note_means_every_load_balancer() -> None:
    assert adopt(Record(), lbs=None).owned == {"a", "b"}


def test_a_record_that_holds_the_note_is_unchanged() -> None:
    record = Record(phase=Phase.RECOVERING, owned=frozenset({"a", "b"}))
    assert adopt(record) == record


def test_a_torn_note_reads_as_out_everywhere(tmp_path: Path) -> None:
    note = Note(tmp_path)
    note.prepare()
    assert note.read() is None
    note.write(Unrecorded(lbs=frozenset({"a"}), at=5.0, draining=True, manual=False, event=EVENT))
    found = note.read()
    assert found is not None and found.lbs == {"a"} and found.event == EVENT
    assert (tmp_path / "unrecorded").stat().st_size == SIZE  # never grown
    (tmp_path / "unrecorded").write_text('{"lbs": ["a"], "at"')
    torn = note.read()
    assert torn is not None and torn.lbs is None
    note.clear()
    assert note.read() is None
