"""Notifications with ``drainer run`` and ``drainer notify test`` as real processes, the
fake metadata service and a webhook receiver on 127.0.0.1 over real HTTP.

The story the issue asks for: a node is held at its health deadline while the webhook
fails; the VM goes down (SIGTERM, then a new boot id); the next ``drainer run`` sends the
held notice it found in ``state_dir``, with the same id. Along the way: retries are seen
by the receiver, a secret header reaches it and never the log, the metrics count.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import NODE, World
from receiver import Receiver

from drainer.testing import free_port

SECRET = "Bearer very-secret-token"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def metric(port: int, sample: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{sample} not in /metrics")


def test_a_held_notice_survives_the_reboot_that_interrupted_its_delivery(
    world: World, receiver: Receiver, tmp_path: Path
) -> None:
    (tmp_path / "token").write_text(SECRET + "\n")
    port = free_port()
    world.configure(
        source={"gone_after": "300ms"},  # the maintenance is over once unlisted this long
        health={"deadline": "1s"},
        metrics={"listen": f"127.0.0.1:{port}"},
        notify={
            "webhooks": [
                {
                    "url": receiver.url,
                    "on": ["held"],
                    "headers": {"Authorization": {"file": str(tmp_path / "token")}},
                }
            ]
        },
    )
    world.health.status = 503
    receiver.status = 500
    eid = world.fake.schedule("Reboot", [NODE], status="Started")
    world.start()
    world.wait_phase("in_maintenance")
    world.fake.end_event(eid)
    world.wait_phase("held")
    world.wait(lambda: receiver.arrived >= 2, "the held notice tried and retried")
    assert receiver.delivered == []
    assert metric(port, "drainer_notification_queue") == 1

    # the VM goes down before the webhook recovers
    assert world.daemon is not None
    code, _ = world.daemon.terminate()
    assert code == 0
    (kept,) = json.loads((world.state_dir / "notifications.json").read_text())["pending"]
    assert kept["notice"]["phase"] == "held"
    world.reboot()
    receiver.status = 200
    world.start()
    (held,) = receiver.wait_delivered(1)
    assert held["id"] == kept["notice"]["id"]  # the notice of before the reboot
    assert (held["phase"], held["previous_phase"], held["node"]) == ("held", "recovering", NODE)
    assert held["alert"].startswith("not healthy 1s after the maintenance")
    assert receiver.delivered[0].headers["authorization"] == SECRET
    world.wait(
        lambda: metric(port, 'drainer_notifications_total{result="delivered"}') == 1,
        "the delivery counted",
    )
    assert metric(port, "drainer_notification_queue") == 0
    assert world.phase() == "held"

    log = world.log_path.read_text()
    assert "notification to http://127.0.0.1:" in log and "retrying" in log
    assert "1 notifications left undelivered by the last run" in log
    assert "very-secret-token" not in log
    for command in (("config", "check"), ("config", "show")):
        shown = world.cli(*command)
        assert shown.returncode == 0, shown.stderr
        assert "very-secret-token" not in shown.stdout + shown.stderr


def test_notify_test_reports_each_webhook(world: World, receiver: Receiver) -> None:
    with Receiver() as failing:
        failing.status = 500
        world.configure(
            node={"name": NODE},  # else the host's name: no daemon learned the VM's yet
            notify={
                "webhooks": [
                    {"url": receiver.url, "name": "ops", "format": "slack"},
                    {"url": failing.url + "/hook", "on": ["held"]},
                ]
            },
        )
        done = world.cli("notify", "test")
        assert done.returncode == 1, done.stderr
        assert f"ops: delivered (HTTP 200 OK)\n{failing.url}: FAILED (HTTP 500" in done.stdout
        assert "1 of 2 webhooks did not take the test notice" in done.stderr
        assert "Traceback" not in done.stderr
        assert len(failing.attempts) == 1  # one attempt: no retry, no queue
    (sent,) = receiver.bodies()
    assert sent == {"text": f"drainer on {NODE}: a test notification (in_service)"}

    world.configure(notify={"webhooks": [{"url": receiver.url}]})
    done = world.cli("notify", "test")
    assert (done.returncode, done.stdout) == (0, f"{receiver.url}: delivered (HTTP 200 OK)\n")
    assert receiver.bodies()[-1]["type"] == "test"


def test_notify_test_errors_are_clear(world: World, tmp_path: Path) -> None:
    done = world.cli("notify", "test")
    assert done.returncode == 2
    assert "notify.webhooks: none configured" in done.stderr and "Traceback" not in done.stderr

    world.configure(
        notify={
            "webhooks": [
                {
                    "url": "http://127.0.0.1:9/",  # nothing listens on the discard port
                    "headers": {"Authorization": {"file": str(tmp_path / "missing")}},
                }
            ]
        }
    )
    done = world.cli("notify", "test")
    assert done.returncode == 1
    assert f"header Authorization: cannot read {tmp_path / 'missing'}: No such file" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_notice_held_up_by_a_stalled_receiver_survives_kill_9(
    world: World, receiver: Receiver
) -> None:
    world.configure(notify={"webhooks": [{"url": receiver.url, "on": ["draining", "alert"]}]})
    receiver.stall()
    receiver.status = 500
    world.fake.schedule("Reboot", [NODE], status="Started")
    world.start()
    world.wait_phase("in_maintenance")  # the drain went on while the notice was held
    world.wait(lambda: receiver.waiting == 1, "the draining notice held by the receiver")
    world.kill9()
    (kept,) = json.loads((world.state_dir / "notifications.json").read_text())["pending"]
    receiver.release()
    receiver.status = 200
    world.start()
    (draining,) = receiver.wait_delivered(1)
    assert (draining["id"], draining["phase"]) == (kept["notice"]["id"], "draining")


def test_a_webhook_added_by_a_reload_is_told(world: World, receiver: Receiver) -> None:
    world.start()
    world.wait_polls(2)
    world.configure(notify={"webhooks": [{"url": receiver.url, "on": ["draining"]}]})
    assert world.daemon is not None
    world.daemon.signal(signal.SIGHUP)
    world.wait(lambda: "configuration reloaded" in world.log_path.read_text(), "the reload")
    world.fake.schedule("Reboot", [NODE], status="Started")
    (draining,) = receiver.wait_delivered(1)
    assert (draining["phase"], draining["node"]) == ("draining", NODE)


def test_an_operators_drain_and_undrain_are_told_by_the_daemon(
    world: World, receiver: Receiver
) -> None:
    world.configure(notify={"webhooks": [{"url": receiver.url}]})
    world.start()
    world.wait_polls(2)
    done = world.cli("drain", "--wait")
    assert done.returncode == 0, done.stderr
    first = receiver.wait_delivered(1)[0]
    assert (first["previous_phase"], first["manual"]) == ("in_service", True)
    assert first["phase"] in ("draining", "held")
    done = world.cli("undrain")
    assert done.returncode == 0, done.stderr
    world.wait_phase("in_service")
    world.wait(
        lambda: any(b["phase"] == "in_service" for b in receiver.bodies()), "told: in service"
    )


def test_an_operators_drain_while_drainer_was_stopped_is_told_at_start(
    world: World, receiver: Receiver
) -> None:
    world.configure(notify={"webhooks": [{"url": receiver.url}]})
    daemon = world.start()
    world.wait_polls(2)
    assert daemon.terminate()[0] == 0
    done = world.cli("drain", "--wait")
    assert done.returncode == 0, done.stderr
    assert receiver.bodies() == []
    world.start()
    (told,) = receiver.wait_delivered(1)
    assert (told["previous_phase"], told["phase"], told["manual"]) == ("in_service", "held", True)
