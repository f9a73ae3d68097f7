"""``drainer run`` as a real process against the fake Google Cloud metadata server.

Every kind of notice the metadata server gives, from the notice to the node back in
service (or removed), proven from the mock load balancer's call log, the record on
disk and the fake's own counts; one scenario with a real HAProxy; ``source.type: auto``
finding the cloud. Waits poll what is on disk, with bounded deadlines; nothing is timed.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import DRAINER, NODE, World

from drainer.testing import (
    free_port,
    haproxy_available,
    haproxy_cli,
    start_haproxy_in_front,
)
from drainer.testing.fake_gcp import MAINTENANCE, FakeGCP
from drainer.testing.lab import WebServer

GOOGLE = {"Metadata-Flavor": "Google"}


@pytest.fixture
def gce() -> Iterator[FakeGCP]:
    with FakeGCP() as server:
        yield server


def use_gcp(world: World, gce: FakeGCP, **source: Any) -> None:
    """Point ``world``'s drainer at ``gce`` (``source`` replaces the whole section)."""
    world.settings["source"] = source or {
        "type": "gcp",
        "endpoint": gce.url,
        "poll_interval": "200ms",
        "timeout": "1s",
        "watch_timeout": "5s",
        "upcoming_interval": "200ms",
        "gone_after": "1s",
        "gone_after_doubt": "2s",
    }
    world.configure()


@pytest.fixture
def gworld(world: World, gce: FakeGCP) -> World:
    use_gcp(world, gce)
    return world


def event(world: World) -> dict[str, Any]:
    followed: dict[str, Any] = world.record().get("event") or {}
    return followed


def wait_watching(world: World, gce: FakeGCP) -> None:
    """The daemon is up and both its hanging GETs wait on the server."""
    world.wait(lambda: gce.snapshot()["waiting"] == 2, "both watchers hanging")


def wait_requests(world: World, gce: FakeGCP, count: int) -> None:
    target = gce.snapshot()["requests"] + count
    world.wait(lambda: gce.snapshot()["requests"] >= target, f"{count} more requests")


# -- every kind of notice ----------------------------------------------------------------------


def test_a_live_migration_drains_and_comes_back(gworld: World, gce: FakeGCP) -> None:
    gworld.start()
    wait_watching(gworld, gce)
    gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")
    gworld.wait_phase("drained", "in_maintenance")
    gworld.wait_call("take_out")
    assert gworld.calls()[:2] == ["drain", "take_out"]
    assert event(gworld)["event_type"] == "Freeze"
    assert "MIGRATE_ON_HOST_MAINTENANCE" in event(gworld)["event_id"]
    code, data = gworld.status()
    assert code == 0 and data["owned"] == ["lb1"]

    gce.set_maintenance("NONE")  # the migration is over
    gworld.wait_phase("in_service")
    assert gworld.calls()[-1] == "put_back" and gworld.lb_status() == "in_service"


def test_a_terminate_drains_and_comes_back_after_the_restart(gworld: World, gce: FakeGCP) -> None:
    gworld.health.status = 503
    gworld.start()
    wait_watching(gworld, gce)
    gce.set_maintenance("TERMINATE_ON_HOST_MAINTENANCE")
    gworld.wait_phase("drained", "in_maintenance")
    assert event(gworld)["event_type"] == "Reboot"

    # the VM stops and starts again on another host: a new boot, the key back to NONE
    gworld.kill9()
    gce.set_maintenance("NONE")
    gworld.reboot()
    gworld.start()
    gworld.wait_phase("recovering")
    assert gworld.record()["rebooted"] is True
    wait_requests(gworld, gce, 3)
    assert "put_back" not in gworld.calls()  # unhealthy yet
    gworld.health.status = 200
    gworld.wait_phase("in_service")
    assert gworld.calls()[-1] == "put_back"


def test_a_preemption_removes_the_node(gworld: World, gce: FakeGCP) -> None:
    gworld.start()
    wait_watching(gworld, gce)
    gce.set_preempted("TRUE")
    gworld.wait_phase("removed")
    assert event(gworld)["event_type"] == "Preempt"
    gworld.wait_call("take_out")
    assert gworld.calls()[:2] == ["drain", "take_out"] and gworld.lb_status() == "out"
    wait_requests(gworld, gce, 3)
    assert "put_back" not in gworld.calls()


def test_an_upcoming_window_drains_in_time_for_its_start(gworld: World, gce: FakeGCP) -> None:
    gce.set_upcoming(start_in=3600, hours=2)
    gworld.start()
    gworld.wait_record(lambda r: bool(r.get("event")), "the window followed")
    wait_requests(gworld, gce, 5)
    assert gworld.phase() == "in_service" and gworld.calls() == []  # an hour ahead: not yet

    # drain.timeout 5s + margin 1s: a window 4 s ahead is due now; then ONGOING, COMPLETE
    gce.set_upcoming(start_in=4, hours=3 / 3600)
    gworld.wait_phase("draining", "drained")
    gworld.wait_phase("in_maintenance")
    assert event(gworld)["status"] == "Started"
    gworld.wait_phase("in_service")
    assert gworld.calls()[0] == "drain" and gworld.calls()[-1] == "put_back"


@pytest.mark.parametrize("form", ["none", "not_yet", "absent"])
def test_nothing_scheduled_in_any_form_keeps_the_node_in(
    gworld: World, gce: FakeGCP, form: str
) -> None:
    gce.clear_upcoming(form)
    gworld.start()
    wait_requests(gworld, gce, 5)
    assert gworld.phase() == "in_service" and gworld.calls() == []
    assert not event(gworld)


def test_an_unknown_value_drains_until_it_reads_normally(gworld: World, gce: FakeGCP) -> None:
    gworld.start()
    wait_watching(gworld, gce)
    gce.set_maintenance("SUSPEND_ON_HOST_MAINTENANCE", odd=True)
    gworld.wait_phase("drained", "in_maintenance")
    assert event(gworld)["event_type"] == "Unknown"
    assert "SUSPEND_ON_HOST_MAINTENANCE" in event(gworld)["problems"][0]
    gce.set_maintenance("NONE")
    gworld.wait_phase("in_service")


def test_a_503_burst_is_ridden_out(gworld: World, gce: FakeGCP) -> None:
    gworld.start()
    wait_watching(gworld, gce)
    gce.inject("503", count=6)
    gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")  # answered; the next GETs see 503s
    gworld.wait_phase("drained", "in_maintenance")
    gce.set_maintenance("NONE")
    gworld.wait_phase("in_service")
    assert gworld.calls() == ["drain", "take_out", "put_back"]


# -- the hanging GET -------------------------------------------------------------------------


def test_a_change_is_seen_without_waiting_for_the_next_poll(gworld: World, gce: FakeGCP) -> None:
    # a poll an hour: only the hanging GET can bring the notice within this test
    use_gcp(
        gworld,
        gce,
        type="gcp",
        endpoint=gce.url,
        poll_interval="1h",
        timeout="1s",
        watch_timeout="5s",
    )
    gworld.start()
    wait_watching(gworld, gce)
    gworld.wait_record(lambda r: r.get("boot_id") == "boot-1", "the first turn")
    requests = gce.snapshot()["requests"]
    gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")
    gworld.wait(lambda: "drain" in gworld.calls(), "the drain")
    # the notice came by the hanging GET, which was already counted: the requests since
    # are the watchers' next hanging GETs (one each, two if a 5 s timeout_sec passed)
    wait_watching(gworld, gce)
    assert gce.snapshot()["requests"] - requests <= 4


def test_sigterm_stops_the_daemon_while_its_gets_hang(gworld: World, gce: FakeGCP) -> None:
    daemon = gworld.start()
    wait_watching(gworld, gce)
    code, _ = daemon.terminate(timeout=5.0)
    assert code == 0


def test_the_loop_turns_and_reloads_while_its_gets_hang(gworld: World, gce: FakeGCP) -> None:
    heartbeat = gworld.state_dir / "heartbeat.json"
    daemon = gworld.start()
    wait_watching(gworld, gce)
    beats: set[str] = set()  # the heartbeat is rewritten at every turn

    def turned() -> bool:
        beats.add(heartbeat.read_text())
        return len(beats) >= 3

    gworld.wait(turned, "three turns while the GETs hang")
    assert gce.snapshot()["waiting"] == 2
    gworld.configure(drain={"timeout": "4s"})
    daemon.signal(signal.SIGHUP)
    gworld.wait(lambda: "configuration reloaded" in gworld.log_path.read_text(), "the reload")
    gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")
    gworld.wait_phase("drained", "in_maintenance")  # a notice after the reload drains


# -- a real HAProxy --------------------------------------------------------------------------


@pytest.mark.skipif(not haproxy_available(), reason="needs /usr/sbin/haproxy")
def test_a_live_migration_with_a_real_haproxy(gworld: World, gce: FakeGCP, tmp_path: Path) -> None:
    web1, web2 = WebServer(free_port(), name=NODE).start(), WebServer(free_port()).start()
    proxy_dir = tmp_path / "haproxy"
    proxy_dir.mkdir()
    proxy = start_haproxy_in_front(proxy_dir, backends={NODE: web1.port, "web-2": web2.port})
    try:
        gworld.configure(
            load_balancers=[
                {"type": "haproxy", "instances": [proxy.admin], "backend": "app", "server": NODE}
            ]
        )

        def status() -> str:
            text = haproxy_cli(proxy.admin_socket, "show stat app 4 -1")
            header = text[2:].splitlines()[0].split(",")
            for line in text.splitlines()[1:]:
                row = dict(zip(header, line.split(","), strict=False))
                if row.get("svname") == NODE:
                    return row["status"]
            return "?"

        gworld.wait(lambda: status() == "UP", "web-1 up in HAProxy")
        gworld.start()
        wait_watching(gworld, gce)
        gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")
        gworld.wait(lambda: status() == "MAINT", "web-1 in maint")
        gworld.wait_phase("drained", "in_maintenance")
        gce.set_maintenance("NONE")
        gworld.wait_phase("in_service")
        gworld.wait(lambda: status() == "UP", "web-1 back up")
    finally:
        proxy.stop()
        web1.stop()
        web2.stop()


# -- the CLI and auto ------------------------------------------------------------------------


def test_events_lists_the_notice(gworld: World, gce: FakeGCP) -> None:
    gce.set_maintenance("TERMINATE_ON_HOST_MAINTENANCE")
    done = gworld.cli("events", "--json")
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["event_id"].startswith(MAINTENANCE) and row["event_type"] == "Reboot"


def use_auto(world: World, gcp: str, **more: str) -> None:
    """``source.type: auto`` with nothing at Azure's address, Azure's fake at AWS's (no
    AWS answer) and ``gcp`` at Google Cloud's."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    world.settings["source"] = {
        "type": "auto",
        "azure_endpoint": nowhere,
        "aws_endpoint": world.fake.url,
        "gcp_endpoint": gcp,
        **more,
    }
    world.configure()


def test_auto_finds_google_cloud(world: World, gce: FakeGCP) -> None:
    use_auto(world, gce.url, poll_interval="200ms", gone_after="1s")
    world.start()
    wait_watching(world, gce)
    world.wait(lambda: "this VM runs on Google Cloud" in world.log_path.read_text(), "the log")
    gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")
    world.wait_phase("drained", "in_maintenance")


def test_auto_with_no_cloud_fails_clearly(world: World) -> None:
    use_auto(world, f"http://127.0.0.1:{free_port()}", detect_timeout="500ms")
    daemon = world.start()
    code = daemon.proc.wait(timeout=30)
    log = world.log_path.read_text()
    assert code == 1, log
    assert "no cloud metadata service answered" in log and "Traceback" not in log


def test_the_demo_on_google_cloud() -> None:
    result = subprocess.run(
        [*DRAINER, "demo", "--cloud", "gcp", "--mock"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    steps = [
        "maintenance-event: TERMINATE_ON_HOST_MAINTENANCE",
        "draining:",
        "drained:",
        "recovering: rebooted",
        "in_service: back in service",
    ]
    positions = [out.index(step) for step in steps]
    assert positions == sorted(positions), out
    assert "approved" not in out
