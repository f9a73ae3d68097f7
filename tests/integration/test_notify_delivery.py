"""Webhook delivery over real HTTP, against a receiver on 127.0.0.1 that fails, stalls
and recovers (tests/receiver.py), with the engine driven in-process by the test kit.

What is proven: a failing receiver sees the retries and gets the notice once it
recovers; a stalled one never holds up a turn of the engine (the whole drain runs while
the first notice is still unanswered); a notice is given up after ``retry_for``; secrets
reach the receiver and no log line; the Slack body; the alerts and when they are sent.
tests/e2e/test_notify_daemon.py does the restart with ``drainer run`` as a process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from receiver import Receiver

from drainer.config import Config, HealthConfig, parse_config
from drainer.core import Phase, Record
from drainer.engine import Engine
from drainer.errors import PermanentAdapterError, SourceError
from drainer.metrics import Metrics
from drainer.model import EventStatus
from drainer.notify.outbox import FILE, Outbox
from drainer.store import Store
from drainer.testing import FakeClock, MemoryLoadBalancer, MemorySource, maintenance, wait_until

NODE = "web-1"
LB = "lb1"
FAST = (0.02, 0.1)  # backoff: first and longest wait between attempts


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def make_config(
    tmp_path: Path, hook: dict[str, Any], *more: dict[str, Any], **notify: Any
) -> Config:
    return parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "drain": {"timeout": "30s", "margin": "5s"},
            "health": {"tcp": {"port": 9}, "interval": "2s", "successes": 2, "deadline": "60s"},
            "load_balancers": [{"type": "mock", "name": LB}],
            "notify": {"webhooks": [hook, *more], **notify},
        }
    )


def count(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("drainer_notifications_total", {"result": result})
    return value or 0.0


class Node:
    """One VM: the engine over the memory kit, an outbox following it, started."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.clock = FakeClock()
        self.source = MemorySource()
        self.lb = MemoryLoadBalancer(LB, sessions=0)
        self.healthy = True
        self.metrics = Metrics()
        self.engine = Engine(
            policy=config.policy(node_names=frozenset({NODE}), lbs=(LB,)),
            lbs={LB: self.lb},
            store=Store(config.state_dir),
            source=self.source,
            boot_id="boot-1",
            health=config.health,
            metrics=self.metrics,
            clock=self.clock,
            check=self.check,
        )
        self.outbox = Outbox(config.notify, config.state_dir, self.metrics, backoff=FAST)
        self.outbox.follow(self.engine)
        self.outbox.start()

    def check(self, _: HealthConfig) -> tuple[bool, str]:
        return self.healthy, "200 OK" if self.healthy else "503 Service Unavailable"

    def turn(self, advance: float = 0.0) -> Phase:
        self.clock.advance(advance)
        record, _ = self.engine.turn(self.source.events())
        return record.phase

    def maintenance(self) -> Phase:
        """A Reboot under way for this VM, and the turn that sees it."""
        self.source.publish(maintenance("e1", status=EventStatus.STARTED))
        return self.turn()

    def until(self, phase: Phase, every: float = 2.0) -> None:
        for _ in range(50):
            if self.turn(advance=every) is phase:
                return
        raise AssertionError(f"not {phase.value} after 50 turns")


@pytest.fixture
def make_node() -> Iterator[Any]:
    nodes: list[Node] = []

    def make(config: Config) -> Node:
        nodes.append(Node(config))
        return nodes[-1]

    yield make
    for node in nodes:
        node.outbox.close()


def test_a_failing_receiver_sees_the_retries_then_gets_the_notice(
    tmp_path: Path, receiver: Receiver, make_node: Any
) -> None:
    receiver.status = 500
    node = make_node(make_config(tmp_path, {"url": receiver.url, "on": ["draining"]}))
    assert node.maintenance() is Phase.IN_MAINTENANCE  # drained in the same turn
    wait_until(lambda: receiver.arrived >= 3, what="three attempts")
    assert receiver.delivered == []
    receiver.status = 200  # recovers
    (notice,) = receiver.wait_delivered(1)
    assert (notice["type"], notice["phase"], notice["node"]) == ("transition", "draining", NODE)
    assert {a.status for a in receiver.attempts} == {500, 200}
    assert all(a.body["id"] == notice["id"] for a in receiver.attempts)  # the same notice
    wait_until(lambda: count(node.metrics, "delivered") == 1, what="counted")
    assert count(node.metrics, "failed") == 0


def test_a_stalled_receiver_never_delays_the_drain(
    tmp_path: Path, receiver: Receiver, make_node: Any
) -> None:
    receiver.stall()
    node = make_node(make_config(tmp_path, {"url": receiver.url}, timeout="30s"))
    assert node.maintenance() is Phase.IN_MAINTENANCE  # drained in the same turn
    wait_until(lambda: receiver.waiting == 1, what="the first notice held by the receiver")
    # the whole maintenance runs while that notice is still unanswered
    assert node.turn() is Phase.IN_MAINTENANCE
    node.source.publish()
    node.turn()
    assert node.turn(advance=6.0) is Phase.RECOVERING
    node.until(Phase.IN_SERVICE)
    assert node.lb.calls == ["drain", "take_out", "put_back"]
    assert receiver.waiting == 1 and receiver.delivered == []
    assert len(node.outbox.pending()) == 4

    receiver.release()
    bodies = receiver.wait_delivered(4)
    assert [(b["previous_phase"], b["phase"]) for b in bodies] == [
        ("in_service", "draining"),
        ("draining", "in_maintenance"),
        ("in_maintenance", "recovering"),
        ("recovering", "in_service"),
    ]
    wait_until(lambda: node.outbox.pending() == [], what="an empty outbox")


@pytest.mark.parametrize("how", ["stall", "drip"])
def test_an_attempt_past_its_timeout_is_cut_and_tried_again(
    tmp_path: Path, receiver: Receiver, make_node: Any, how: str
) -> None:
    # drip: a tarpit sends a byte now and then, each read is quick and the answer never
    # ends; httpx's timeout is per read, so only a whole-attempt deadline frees the worker
    getattr(receiver, how)()
    node = make_node(make_config(tmp_path, {"url": receiver.url}, timeout="300ms"))
    node.maintenance()
    wait_until(lambda: receiver.arrived >= 2, what="a second attempt after the timeout")
    receiver.release()
    (first, *_) = receiver.wait_delivered(1)
    assert first["phase"] == "draining"


def test_a_failing_webhook_never_holds_up_another(
    tmp_path: Path, receiver: Receiver, make_node: Any
) -> None:
    # one queue sent in order: the pager's notice waited for each letter to the failing
    # chat webhook to be given up (retry_for, 10 minutes by default) before its turn
    with Receiver(status=503) as failing:
        config = make_config(tmp_path, {"url": failing.url, "name": "chat"}, {"url": receiver.url})
        node = make_node(config)
        node.maintenance()
        node.turn()
        wait_until(lambda: failing.arrived >= 2, what="the failing webhook retried")
        bodies = receiver.wait_delivered(2)
        assert [b["phase"] for b in bodies] == ["draining", "in_maintenance"]
        assert failing.delivered == []


def test_a_notice_is_given_up_after_retry_for(
    tmp_path: Path, receiver: Receiver, make_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.status = 503
    config = make_config(tmp_path, {"url": receiver.url, "on": ["draining"]}, retry_for="300ms")
    with caplog.at_level(logging.INFO, logger="drainer"):
        node = make_node(config)
        node.maintenance()
        wait_until(lambda: count(node.metrics, "failed") == 1, what="given up")
    assert receiver.arrived >= 2 and receiver.delivered == []
    assert node.outbox.pending() == []
    assert '"pending": []' in (config.state_dir / FILE).read_text()
    assert "failed (HTTP 503 Service Unavailable): retrying for up to 0.3s" in caplog.text
    assert "given up after" in caplog.text


def test_a_4xx_is_not_retried(tmp_path: Path, receiver: Receiver, make_node: Any) -> None:
    receiver.status = 404
    node = make_node(make_config(tmp_path, {"url": receiver.url, "on": ["draining"]}))
    node.maintenance()
    wait_until(lambda: count(node.metrics, "failed") == 1, what="refused")
    assert receiver.arrived == 1


def test_secret_headers_reach_the_receiver_and_no_log_line(
    tmp_path: Path,
    receiver: Receiver,
    make_node: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "token").write_text("Bearer tok-from-file\n")
    monkeypatch.setenv("DRAINER_HOOK_KEY", "key-from-env")
    hook = {
        "url": f"{receiver.url}/services/T0/B0/url-secret",
        "on": ["draining"],  # one notice (the drain ends in the turn that starts it)
        "headers": {
            "Authorization": {"file": str(tmp_path / "token")},
            "X-Key": {"env": "DRAINER_HOOK_KEY"},
            "X-Team": "web",
        },
    }
    receiver.status = 500
    with caplog.at_level(logging.DEBUG):  # every logger, httpx's too
        node = make_node(make_config(tmp_path, hook))
        node.maintenance()
        wait_until(lambda: receiver.arrived >= 2, what="a retry")
        receiver.status = 200
        receiver.wait_delivered(1)
        wait_until(lambda: count(node.metrics, "delivered") == 1, what="counted")
    headers = receiver.delivered[0].headers
    assert headers["authorization"] == "Bearer tok-from-file"
    assert (headers["x-key"], headers["x-team"]) == ("key-from-env", "web")
    assert receiver.delivered[0].path == "/services/T0/B0/url-secret"
    assert "notification delivered to http://127.0.0.1:" in caplog.text
    for secret in ("tok-from-file", "key-from-env", "url-secret"):
        assert secret not in caplog.text
    assert "url-secret" not in (tmp_path / "state" / FILE).read_text()


def test_the_slack_format(tmp_path: Path, receiver: Receiver, make_node: Any) -> None:
    node = make_node(
        make_config(tmp_path, {"url": receiver.url, "format": "slack", "on": ["draining"]})
    )
    node.maintenance()
    (sent,) = receiver.wait_delivered(1)
    assert sent == {
        "text": "drainer on web-1: in_service -&gt; draining [Reboot e1]: drain started"
        " (out of lb1)"
    }


# -- alerts -----------------------------------------------------------------------------------


def only_one(node: Node, receiver: Receiver) -> Any:
    """The one notice delivered once the outbox is empty (every turn queued its own)."""
    receiver.wait_delivered(1)
    wait_until(lambda: node.outbox.pending() == [], what="an empty outbox")
    (sent,) = receiver.bodies()
    return sent


def test_held_at_the_health_deadline_is_one_notice_with_its_alert(
    tmp_path: Path, receiver: Receiver, make_node: Any
) -> None:
    node = make_node(make_config(tmp_path, {"url": receiver.url, "on": ["held", "alert"]}))
    node.maintenance()
    node.turn()
    node.healthy = False
    node.source.publish()
    node.turn()
    assert node.turn(advance=6.0) is Phase.RECOVERING
    node.until(Phase.HELD)
    node.turn(advance=2.0)
    held = only_one(node, receiver)  # no second notice for the alert it carries
    assert (held["type"], held["phase"], held["previous_phase"]) == (
        "transition",
        "held",
        "recovering",
    )
    assert held["alert"].startswith("not healthy 60s after the maintenance")


def test_a_load_balancer_refusing_is_an_alert_once(
    tmp_path: Path, receiver: Receiver, make_node: Any
) -> None:
    node = make_node(make_config(tmp_path, {"url": receiver.url, "on": ["alert"]}))
    node.lb.fail["drain"] = PermanentAdapterError("no such server")
    node.maintenance()
    node.turn(advance=1.0)
    alert = only_one(node, receiver)
    assert (alert["type"], alert["alert"], alert["phase"]) == (
        "alert",
        "lb1: drain: no such server",
        "draining",
    )


def test_an_approval_failing_is_an_alert_once(
    tmp_path: Path, receiver: Receiver, make_node: Any
) -> None:
    node = make_node(make_config(tmp_path, {"url": receiver.url, "on": ["alert"]}))
    node.source.fail["approve"] = SourceError("HTTP 500 from the metadata service")
    node.source.publish(maintenance("e1"))
    node.turn()
    for _ in range(3):  # retried every minute, failing the same way
        node.turn(advance=61.0)
    assert node.source.calls.count("approve") >= 2
    alert = only_one(node, receiver)
    assert alert["alert"] == "approving event e1 failed: HTTP 500 from the metadata service"


class Broken:
    def changed(self, old: Record, new: Record) -> None:
        raise RuntimeError("a bug in a watcher")

    def alert(self, record: Record, message: str) -> None:
        raise RuntimeError("a bug in a watcher")


def test_a_failing_watcher_never_stops_a_drain(
    tmp_path: Path, receiver: Receiver, make_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node(make_config(tmp_path, {"url": receiver.url, "on": ["draining"]}))
    node.engine.watchers.insert(0, Broken())
    with caplog.at_level(logging.ERROR, logger="drainer"):
        assert node.maintenance() is Phase.IN_MAINTENANCE  # drained in the same turn
        assert node.turn() is Phase.IN_MAINTENANCE
    assert "telling Broken of a transition failed" in caplog.text
    (sent,) = receiver.wait_delivered(1)  # the watchers after it are still told
    assert sent["phase"] == "draining"
