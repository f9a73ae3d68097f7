"""The record on disk: every unusable shape gets one clear message, files are owner-only
whatever the umask, the lock says who holds it, the node's names are kept."""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from drainer._files import write_atomically
from drainer.core import Phase, Record
from drainer.errors import StateError
from drainer.model import EventStatus, EventType, MaintenanceEvent
from drainer.store import (
    Store,
    record_from_json,
    record_to_json,
    remember_names,
    remembered_names,
)

EVENT = MaintenanceEvent(
    event_id="E1",
    event_type=EventType.REBOOT,
    status=EventStatus.STARTED,
    resources=("web-1",),
    not_before=1_700_000_000.0,
    duration=30,
)
FULL = Record(
    phase=Phase.IN_MAINTENANCE,
    event=EVENT,
    boot_id="boot-1",
    owned=frozenset({"lb1", "lb2"}),
    manual=True,
    since=12.5,
    drain_deadline=20.0,
    approved_at=13.0,
    health_ok=2,
    dismissed=("E0",),
    alert="a",
    note="n",
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_every_record_field_round_trips() -> None:
    for record in (Record(), FULL):
        assert record_from_json(json.loads(json.dumps(record_to_json(record)))) == record


def good() -> dict[str, Any]:
    return record_to_json(FULL)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('["in_service"]', "a JSON list where an object was expected"),
        ('"drained"', "a JSON str where an object was expected"),
        ("42", "a JSON int where an object was expected"),
        ("null", "a JSON NoneType where an object was expected"),
        ('{"version": 1, "phase": "resting"}', "unknown phase 'resting'"),
        ('{"version": 1, "phase": 3}', "unknown phase 3"),
        ('{"version": 7}', "unknown record version 7"),
        ('{"version": 1, "owned": "lb1"}', 'owned is "lb1"'),
        ('{"version": 1, "owned": [1]}', "owned is [1]"),
        ('{"version": 1, "manual": "yes"}', 'manual is "yes"'),
        ('{"version": 1, "since": "noon"}', 'since is "noon"'),
        ('{"version": 1, "health_ok": 1.5}', "health_ok is 1.5"),
        ('{"version": 1, "approved_at": true}', "approved_at is true"),
        ('{"version": 1, "event": "E1"}', 'event is "E1"'),
        ('{"version": 1, "event": {"event_id": "E1"}}', "event is not an event"),
        ('{"version": 1, "phase": "drai', "Unterminated string"),
        ("", "Expecting value"),
    ],
)
def test_a_record_of_any_other_shape_is_damaged_and_says_what_to_do(
    tmp_path: Path, text: str, reason: str
) -> None:
    store = Store(tmp_path)
    store.path.write_text(text)
    with pytest.raises(StateError) as info:
        store.load()
    message = str(info.value)
    assert message.startswith(f"{store.path} is damaged or unusable (")
    assert reason in message
    assert f"mv {store.path} {store.path}.bad" in message
    assert "`drainer drain` or `drainer undrain`" in message


def test_a_directory_in_place_of_the_record_gets_the_same_advice(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.path.mkdir()
    with pytest.raises(StateError) as info:
        store.load()
    assert str(info.value).startswith(f"{store.path} is damaged or unusable (a directory")
    assert "move the file away" in str(info.value)


def test_a_record_that_is_not_text_gets_the_same_advice(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(StateError, match="is damaged or unusable \\(not text"):
        store.load()


def test_a_record_that_cannot_be_opened_gets_the_same_advice(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.path.symlink_to(store.path.name)  # a loop: ELOOP, even for root
    with pytest.raises(StateError, match="is damaged or unusable \\(cannot read it: Too many"):
        store.load()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_record_gets_the_same_advice(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save(FULL)
    store.path.chmod(0)
    with pytest.raises(StateError, match="is damaged or unusable \\(cannot read it"):
        store.load()


def test_files_and_directories_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    state_dir = tmp_path / "var" / "drainer"
    store = Store(state_dir)
    with umask(0):
        with store.locked():
            store.save(FULL)
        remember_names(state_dir, frozenset({"web-1"}))
        write_atomically(state_dir / "haproxy-x.json", "{}")  # what the adapters use
    assert mode(state_dir) == 0o700
    assert mode(state_dir.parent) == 0o700  # created by drainer too
    for name in ("state.json", "lock", "node-names.json", "haproxy-x.json"):
        assert mode(state_dir / name) == 0o600, name
    assert sorted(p.name for p in state_dir.iterdir()) == [
        "haproxy-x.json",
        "lock",
        "node-names.json",
        "state.json",
    ]  # no temporary file left behind


def test_a_lock_file_left_world_writable_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text("")
    (tmp_path / "lock").chmod(0o666)
    with Store(tmp_path).locked():
        pass
    assert mode(tmp_path / "lock") == 0o600


def test_a_leftover_temporary_file_does_not_lend_its_mode(tmp_path: Path) -> None:
    leftover = tmp_path / f".state.json.{os.getpid()}.tmp"
    leftover.write_text("half")
    leftover.chmod(0o666)
    Store(tmp_path).save(FULL)
    assert mode(tmp_path / "state.json") == 0o600
    assert not leftover.exists()


def test_waiting_for_the_lock_is_said_and_given_up_naming_the_holder(tmp_path: Path) -> None:
    holder = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another open file description: another holder
    os.write(holder, b"4242\n")
    heard: list[str] = []
    try:
        with (
            pytest.raises(StateError) as info,
            Store(tmp_path, lock_timeout=1.5, on_wait=heard.append).locked(),
        ):
            pass
    finally:
        os.close(holder)
    assert heard == ["waiting for the state lock held by pid 4242..."]
    message = str(info.value)
    assert message.startswith(f"gave up after 2s waiting for the state lock {tmp_path / 'lock'}")
    assert "held by pid 4242" in message and "--lock-timeout" in message
    with Store(tmp_path).locked():  # free again, and now this process's pid is in it
        assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"


def test_names_are_kept_and_read_back(tmp_path: Path) -> None:
    assert remembered_names(tmp_path) is None
    remember_names(tmp_path, frozenset({"web-1", "ss_3"}))
    assert remembered_names(tmp_path) == frozenset({"web-1", "ss_3"})
    assert json.loads((tmp_path / "node-names.json").read_text())["names"] == ["ss_3", "web-1"]
    for text in ("[]", '{"names": []}', '{"names": [1]}', "{"):
        (tmp_path / "node-names.json").write_text(text)
        assert remembered_names(tmp_path) is None, text


def test_the_window_fields_round_trip_on_disk_none_and_tuples_too(tmp_path: Path) -> None:
    store = Store(tmp_path)
    odd = MaintenanceEvent(
        "E2", EventType.UNKNOWN, EventStatus.UNKNOWN, ("web-1",), None,
        raw_type="Hibernate", raw_status="Paused", problems=("a", "b"),
    )  # fmt: skip
    for record in (
        Record(phase=Phase.DRAINED, event=odd, incarnation=None, listed=(), listed_in=None),
        Record(
            phase=Phase.IN_MAINTENANCE,
            event=EVENT,
            incarnation=9,
            listed=("E1", "E2"),
            listed_in=8,
            missing_since=12.5,
            missing_polls=3,
            doubt=True,
        ),
    ):
        assert record_to_json(record)["listed"] == list(record.listed)
        store.save(record)
        assert store.load() == record


def test_a_record_written_by_the_previous_version_still_loads(tmp_path: Path) -> None:
    # version 1 before issue 7: no window fields, an event without raw_*/problems
    old = {
        "version": 1,
        "phase": "in_maintenance",
        "event": {
            "event_id": "E1",
            "event_type": "Reboot",
            "status": "Started",
            "resources": ["web-1"],
            "not_before": None,
            "duration": -1,
            "source": "Platform",
            "description": "",
        },
        "boot_id": "boot-1",
        "owned": ["lb1"],
        "manual": False,
        "undrain": False,
        "since": 1.0,
        "drain_deadline": 2.0,
        "approved_at": None,
        "health_ok": 0,
        "next_health": 0.0,
        "health_detail": "",
        "rebooted": False,
        "dismissed": [],
        "alert": "",
        "note": "",
    }
    (tmp_path / "state.json").write_text(json.dumps(old))
    record = Store(tmp_path).load()
    assert record.phase is Phase.IN_MAINTENANCE and record.owned == {"lb1"}
    assert record.event is not None and record.event.status is EventStatus.STARTED
    assert (record.incarnation, record.listed, record.missing_since, record.doubt) == (
        None, (), None, False,
    )  # fmt: skip
