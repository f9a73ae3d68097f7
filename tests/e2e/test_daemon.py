"""``drainer run`` as a real process, against the fake metadata service over real HTTP.

Each test scripts a maintenance with the fake, flips the node's health server, kills
or signals the daemon by PID, and proves the outcome from the mock load balancer's
file (the calls drainer made, in order, and where the node stands) and from
``drainer status --json``. Waits poll what is on disk, with bounded deadlines.
"""

from __future__ import annotations

import socket
import time

import pytest
from harness import NODE, World

from drainer.testing import wait_until


def assert_in_service(world: World) -> dict[str, object]:
    code, data = world.status()
    assert code == 0, data
    assert data["phase"] == "in_service"
    assert data["owned"] == []
    assert data["load_balancers"]["lb1"]["status"] == "in_service"
    assert world.lb_status() == "in_service"
    return data


# -- 1. the whole maintenance ----------------------------------------------------------------


def test_reboot_drain_approve_reboot_recover(world: World) -> None:
    world.health.status = 503
    eid = world.fake.schedule("Reboot", [NODE], not_before_in=900)
    world.start()

    world.wait_phase("draining", "drained", "in_maintenance")
    # approved only once drained; the fake starts the event on approval
    world.wait(lambda: world.approvals() == [eid], "the approval")
    assert world.calls()[:2] == ["drain", "take_out"]
    world.wait_phase("in_maintenance")
    assert world.fake.snapshot()["Events"][0]["EventStatus"] == "Started"
    code, data = world.status()
    assert (code, data["phase"], data["owned"]) == (0, "in_maintenance", ["lb1"])
    assert data["event"]["event_id"] == eid

    # the VM reboots: the process dies, the boot id changes, drainer starts again
    world.kill9()
    world.reboot()
    world.start()
    world.wait_phase("recovering")
    assert world.record()["rebooted"] is True
    world.wait_polls(3)
    assert "put_back" not in world.calls()  # the event is still on, the node unhealthy

    world.fake.end_event(eid)
    ended = time.time()
    world.wait_polls(3)
    assert world.phase() == "recovering" and "put_back" not in world.calls()

    world.health.status = 200
    healthy = time.time()
    world.wait_phase("in_service")
    assert world.calls() == ["drain", "take_out", "put_back"]
    assert world.call_times("put_back")[0] > max(ended, healthy)
    assert world.approvals() == [eid]
    assert_in_service(world)


# -- 2. cancelled while drained ---------------------------------------------------------------


def test_cancelled_while_drained_goes_back_after_health(world: World) -> None:
    eid = world.fake.schedule("Reboot", [NODE], not_before_in=900, start_on_approval=False)
    world.start()
    world.wait_phase("drained")
    world.wait(lambda: world.approvals() == [eid], "the approval")
    world.wait_polls(2)
    assert world.phase() == "drained" and world.lb_status() == "out"

    health_hits = world.health.hits
    world.fake.cancel_event(eid)
    world.wait_phase("in_service")
    assert world.health.hits >= health_hits + 2  # put back only after the health checks
    assert world.calls() == ["drain", "take_out", "put_back"]
    data = assert_in_service(world)
    assert data["event"] is None


# -- 3. Started without notice -----------------------------------------------------------------


def test_started_without_notice_drains_at_once_without_approval(world: World) -> None:
    world.start()
    world.wait_polls(2)
    scheduled = time.time()
    eid = world.fake.schedule("Reboot", [NODE, "web-2"], status="Started")
    world.wait_phase("in_maintenance")
    took_out(world)  # the phase is saved before the take-out runs
    assert world.call_times("drain")[0] - scheduled < 2.0
    world.wait_polls(3)
    assert world.approvals() == []  # nothing to approve: it has started

    world.fake.end_event(eid)
    world.wait_phase("in_service")
    assert world.calls() == ["drain", "take_out", "put_back"]
    assert world.approvals() == []


def took_out(world: World) -> None:
    """The calls so far are a drain and a take-out (which runs just after its phase is
    saved: wait for it)."""
    wait_until(lambda: world.calls() == ["drain", "take_out"], what="drain, take_out")


# -- 4. another VM's event ------------------------------------------------------------------


def test_event_for_another_vm_is_ignored(world: World) -> None:
    world.fake.schedule("Reboot", ["web-2"], not_before_in=60, status="Started")
    world.fake.schedule("Preempt", ["web-3"], not_before_in=30)
    world.start()
    first = world.requests()
    world.wait_polls(8)
    assert world.requests() >= first + 8  # still polling
    assert world.calls() == []
    assert world.approvals() == []
    code, data = world.status()
    assert (code, data["phase"], data["event"]) == (0, "in_service", None)


# -- 5. a second event during recovery --------------------------------------------------------


def test_second_event_during_recovery_is_handled_before_going_back(world: World) -> None:
    world.health.status = 503
    first = world.fake.schedule("Reboot", [NODE])
    world.start()
    world.wait_phase("in_maintenance")
    world.fake.end_event(first)
    world.wait_phase("recovering")
    world.wait_polls(2)

    second = world.fake.schedule("Redeploy", [NODE], start_on_approval=False)
    world.wait(lambda: world.approvals() == [first, second], "the second approval")
    world.wait_phase("drained")
    assert world.record()["event"]["event_id"] == second
    world.health.status = 200  # healthy, but the second event is still pending
    world.wait_polls(4)
    assert world.phase() == "drained"
    assert "put_back" not in world.calls() and world.lb_status() == "out"

    world.fake.start_event(second)
    world.wait_phase("in_maintenance")
    world.fake.end_event(second)
    world.wait_phase("in_service")
    calls = world.calls()
    assert calls.count("put_back") == 1 and calls[-1] == "put_back"
    # the node never went back towards service before the end: no drain of an out node
    assert calls == ["drain", "take_out", "take_out", "put_back"]
    assert_in_service(world)


# -- 6. Preempt ----------------------------------------------------------------------------------


def test_preempt_removes_for_good(world: World) -> None:
    eid = world.fake.schedule("Preempt", [NODE], not_before_in=30, start_on_approval=False)
    world.start()
    world.wait_phase("removed")
    took_out(world)
    world.fake.end_event(eid)
    world.wait_polls(4)
    world.wait_record(lambda r: r.get("event") is None, "the event to be gone")
    world.wait_polls(4)
    assert world.phase() == "removed"
    assert "put_back" not in world.calls() and world.lb_status() == "out"
    _, data = world.status()
    assert data["phase"] == "removed" and data["owned"] == ["lb1"]


# -- 7. never healthy --------------------------------------------------------------------------


def test_unhealthy_after_maintenance_is_held(world: World) -> None:
    world.configure(health={"deadline": "2s"})
    world.health.status = 500
    eid = world.fake.schedule("Reboot", [NODE])
    world.start()
    world.wait_phase("in_maintenance")
    world.fake.end_event(eid)
    world.wait_phase("recovering")
    world.wait_phase("held", timeout=10)
    assert "put_back" not in world.calls()

    done = world.cli("status")
    assert done.returncode == 1
    assert "held" in done.stdout and "ALERT" in done.stdout
    code, data = world.status()
    assert code == 1 and data["phase"] == "held" and data["needs_attention"] is True
    assert "not healthy" in data["alert"]

    # held never ends by itself, not even once the node is healthy again
    world.health.status = 200
    world.wait_record(lambda r: r["health_ok"] >= 3, "passing health checks while held")
    world.wait_polls(3)
    assert world.phase() == "held"
    assert world.calls() == ["drain", "take_out"] and world.lb_status() == "out"


# -- 8. kill -9 in every phase -------------------------------------------------------------------

KILL_PHASES = ["draining", "drained", "in_maintenance", "recovering", "held"]


@pytest.mark.parametrize("phase", KILL_PHASES)
def test_kill_9_resumes_the_phase_on_disk(world: World, phase: str) -> None:
    order = KILL_PHASES.index(phase)
    if phase == "draining":
        world.configure_lb(drain_seconds="2s")
    if phase == "held":
        world.configure(health={"deadline": "1s"})
    if phase in ("recovering", "held"):
        world.health.status = 503
    eid = world.fake.schedule("Reboot", [NODE], start_on_approval=False)
    world.start()

    world.wait_phase("draining" if order == 0 else "drained")
    if order >= 2:
        world.fake.start_event(eid)
        world.wait_phase("in_maintenance")
    if order >= 3:
        world.fake.end_event(eid)
        world.wait_phase("recovering")
    if order >= 4:
        world.wait_phase("held")
    before = world.calls()

    world.restart()  # kill -9, same boot
    world.wait_polls(4)
    assert world.daemon is not None and world.daemon.alive()
    if order == 0:
        world.wait_phase("drained")
    else:
        assert world.phase() == phase, world.describe()
    assert "put_back" not in world.calls()
    assert world.calls()[: len(before)] == before

    if order <= 1:
        world.fake.start_event(eid)
        world.wait_phase("in_maintenance")
    if order <= 2:
        world.wait_polls(2)
        assert "put_back" not in world.calls()
        world.fake.end_event(eid)
    if order == 3:
        world.wait_phase("recovering")
        world.wait_polls(2)
        assert "put_back" not in world.calls()  # still unhealthy
        world.health.status = 200
    if order == 4:
        world.health.status = 200
        world.wait_record(lambda r: r["health_ok"] >= 2, "passing checks while held")
        world.wait_polls(2)
        assert world.phase() == "held" and "put_back" not in world.calls()
        done = world.cli("undrain")
        assert done.returncode == 0, done.stderr
    world.wait_phase("in_service")
    world.wait_polls(2)
    assert world.calls() == ["drain", "take_out", "put_back"]
    assert world.approvals()[:1] == [eid]
    assert_in_service(world)


# -- 9. manual drain ---------------------------------------------------------------------------


def test_manual_drain_survives_a_maintenance_and_undrain_puts_back(world: World) -> None:
    world.start()
    world.wait_polls(2)
    done = world.cli("drain", "--wait")
    assert done.returncode == 0, done.stderr
    assert world.phase() == "held" and world.record()["manual"] is True
    assert world.calls() == ["drain", "take_out"]

    eid = world.fake.schedule("Reboot", [NODE])
    world.wait(lambda: world.approvals() == [eid], "the approval")
    world.fake.end_event(eid)
    world.wait_record(lambda r: r.get("event") is None, "the event to be gone")
    world.wait_polls(4)
    assert world.phase() == "held" and world.record()["manual"] is True
    assert world.calls() == ["drain", "take_out"]
    code, data = world.status()
    assert code == 0 and data["phase"] == "held" and data["manual"] is True

    world.health.status = 503
    refused = world.cli("undrain")
    assert refused.returncode == 1
    assert "health check failed" in refused.stderr
    world.wait_polls(2)
    assert world.phase() == "held" and "put_back" not in world.calls()

    forced = world.cli("undrain", "--force")
    assert forced.returncode == 0, forced.stderr
    assert world.calls() == ["drain", "take_out", "put_back"]
    world.wait_polls(3)
    assert world.phase() == "in_service" and world.calls().count("put_back") == 1
    assert world.lb_status() == "in_service"


# -- 10. bad configuration ---------------------------------------------------------------------


def test_bad_configuration_exits_2_naming_the_key(world: World) -> None:
    world.configure_lb(drain_seconds="soon")
    world.configure(health={"intervall": "1s"})
    done = world.cli("run")
    assert done.returncode == 2
    assert "load_balancers[0].drain_seconds" in done.stderr
    assert "health.intervall: unknown key" in done.stderr
    assert str(world.config_path) in done.stderr
    assert "Traceback" not in done.stderr
    assert world.requests() == 0 and world.record() == {}


# -- 11. SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("hanging", [False, True], ids=["idle", "metadata-hanging"])
def test_sigterm_stops_fast_and_keeps_the_drain(world: World, hanging: bool) -> None:
    world.configure_lb(drain_seconds="30s")
    world.configure(source={"timeout": "5s"})
    world.fake.schedule("Reboot", [NODE])
    world.start()
    world.wait_phase("draining")
    world.wait(lambda: world.lb_status() == "draining", "the drain at the mock")
    if hanging:  # the worker is stuck in a metadata request when the signal comes
        world.fake.inject("slow", count=5, delay=20)
        world.wait_polls(1)  # a GET that arrived after the injection: it is being held
    assert world.daemon is not None
    code, took = world.daemon.terminate()
    assert code == 0
    assert took < (2.0 if hanging else 1.5), f"took {took:.2f}s to stop"
    assert world.phase() == "draining"
    assert world.lb_status() == "draining"
    assert world.calls() == ["drain"]


def test_sigterm_while_the_vm_name_is_not_known_yet_is_a_clean_stop(world: World) -> None:
    """``systemctl stop`` during a metadata outage at start is a stop, not a failure."""
    with socket.socket() as closed:  # a port nobody listens on: the service is down
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    world.configure(source={"endpoint": f"http://127.0.0.1:{port}"})
    daemon = world.start()
    world.wait(
        lambda: "cannot learn this VM's name yet" in world.log_path.read_text(), "the name wait"
    )
    code, _ = daemon.terminate()
    assert code == 0, world.log_path.read_text()
    assert "SIGTERM: stopping" in world.log_path.read_text()


# -- 12. bad metadata while drained ---------------------------------------------------------------


@pytest.mark.parametrize("fault", ["malformed", "schema", "500"])
def test_bad_metadata_is_not_the_event_being_gone(world: World, fault: str) -> None:
    eid = world.fake.schedule("Reboot", [NODE], start_on_approval=False)
    world.start()
    world.wait_phase("drained")
    count = 6 if fault == "500" else 3  # a 500 is retried within one poll
    world.fake.inject(fault, count=count)
    world.wait_polls(count + 2)
    assert world.phase() == "drained"
    assert world.record()["event"]["event_id"] == eid
    assert world.calls() == ["drain", "take_out"] and world.lb_status() == "out"
    world.fake.cancel_event(eid)  # ...while a real end is still noticed
    world.wait_phase("in_service")
    assert world.calls() == ["drain", "take_out", "put_back"]


# -- a take-out that failed (or was lost to a crash) is done again --------------------------------


def test_failed_take_out_is_retried_until_the_node_is_out(world: World) -> None:
    eid = world.fake.schedule("Reboot", [NODE], start_on_approval=False)
    world.mock_path.write_text('{"fail": {"take_out": "busy"}}')
    world.start()
    world.wait_phase("drained")
    world.wait_polls(2)
    assert world.calls() == ["drain"]  # the failed call is not recorded
    world.fail_lb("take_out", None)
    world.wait(lambda: world.lb_status() == "out", "the node to be taken out")
    assert world.calls() == ["drain", "take_out"]
    world.fake.cancel_event(eid)
    world.wait_phase("in_service")
    assert world.calls() == ["drain", "take_out", "put_back"]


# -- an off-schema answer is retried at the poll interval; only 429/5xx/timeouts back off ---


def test_pace_backs_off_only_when_the_service_refuses_or_times_out() -> None:
    from drainer.metrics import Metrics
    from drainer.polling import Pacer, poll
    from drainer.sources.azure import AzureConfig, AzureSource
    from drainer.testing.fake_imds import FakeIMDS

    with FakeIMDS(rate_limit=None) as fake:
        source = AzureSource(AzureConfig(endpoint=fake.url, timeout=1.0), attempts=1)
        pacer, metrics = Pacer(1.0), Metrics()

        def pause_after(fault: str | None) -> float:
            if fault:
                fake.inject(fault)
            return pacer.after(poll(source, metrics))

        # the service refuses: 1, 2, 4, 8, 16, 16 times the interval
        assert [pause_after("500") for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0]
        assert pause_after(None) == 1.0  # a good answer resets the pace
        assert [pause_after("429") for _ in range(3)] == [1.0, 2.0, 4.0]
        # an answer off the schema is retried at the normal pace, and resets it
        assert [pause_after(kind) for kind in ("schema", "malformed", "schema")] == [1.0] * 3
        assert [pause_after("500") for _ in range(2)] == [1.0, 2.0]
        source.close()


def test_rejected_payloads_are_retried_at_the_poll_interval(world: World) -> None:
    world.start()
    world.wait_polls(2)
    # 20 rejected answers take 20 polls of 200 ms; with a backoff they would take ~55 s
    world.fake.inject("schema", count=12)
    world.fake.inject("malformed", count=8)
    before = world.requests()
    world.wait(lambda: world.requests() >= before + 22, "22 polls through 20 rejected answers")
    log = world.log_path.read_text()
    assert log.count("metadata payload rejected") >= 20
    assert world.daemon is not None and world.daemon.alive()


# -- the daemon follows what the CLI did to the record ---------------------------------------


def _metrics(port: int) -> str:
    import httpx

    return httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False, timeout=2).text


def test_the_daemon_logs_and_counts_what_drain_and_undrain_did(world: World) -> None:
    from drainer.testing import free_port

    port = free_port()
    world.configure(metrics={"listen": f"127.0.0.1:{port}"})
    world.configure_lb(sessions=0)  # the CLI's own turns finish the drain: nothing left
    world.start()
    world.wait_polls(2)
    assert 'drainer_phase{phase="in_service"} 1.0' in _metrics(port)

    drained = world.cli("drain")
    assert drained.returncode == 0, drained.stderr
    assert world.phase() == "held"  # done by the CLI alone
    world.wait(
        lambda: 'drainer_phase{phase="held"} 1.0' in _metrics(port), "the daemon's metrics: held"
    )
    text = _metrics(port)
    assert 'drainer_phase{phase="in_service"} 0.0' in text
    log = world.log_path.read_text()
    assert "in_service -> held (manual) by another process: " in log, log

    undone = world.cli("undrain", "--force")
    assert undone.returncode == 0, undone.stderr
    world.wait(
        lambda: 'drainer_phase{phase="in_service"} 1.0' in _metrics(port),
        "the daemon's metrics: in_service",
    )
    assert 'drainer_phase{phase="held"} 0.0' in _metrics(port)
    world.wait(
        lambda: (
            "held -> in_service by another process: back in service" in world.log_path.read_text()
        ),
        "the undrain in the daemon's log",
    )
    assert world.calls() == ["drain", "take_out", "put_back"]  # the daemon did not act twice
