"""``drainer run`` with ``source.type: aws`` against the fake EC2 metadata service, for
every kind of event: drained in time for NotBefore (AWS cannot approve), back after a
reboot or once the event completed, removed for a stop, a retirement, a Spot
interruption or an Auto Scaling termination; rebalance recommendations ignored unless
configured; tokens that expire and 503 bursts survived.

The harness's drain timeout is 5 s and its margin 1 s: an event 8 s ahead is due 6 s
before its NotBefore, which AWS writes in whole seconds (so: at least 1 s after it was
scheduled). A drain before that would be one that did not wait for NotBefore.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import AwsWorld

from drainer.testing import FakeAWS

AHEAD = 8.0  # NotBefore of the scheduled events, seconds from now
EARLIEST = AHEAD - 5 - 1 - 1  # the drain is due no sooner than this after scheduling


@pytest.fixture
def aws(tmp_path: Path) -> Iterator[AwsWorld]:
    world = AwsWorld(tmp_path)
    try:
        yield world
    finally:
        world.close()


def fake(world: AwsWorld) -> FakeAWS:
    assert isinstance(world.fake, FakeAWS)
    return world.fake


def schedule(world: AwsWorld, code: str) -> tuple[str, float]:
    """A scheduled event AHEAD seconds from now; its id and the earliest due drain."""
    now = time.time()
    return fake(world).schedule(code, not_before_in=AHEAD), now + EARLIEST


def out(world: AwsWorld) -> None:
    """The record is saved before its actions run: the take-out follows the phase."""
    world.wait(lambda: world.lb_status() == "out", "the node out of the load balancer")


def drained_in_time(world: AwsWorld, earliest: float) -> None:
    (first, *_) = world.call_times("drain")
    assert first >= earliest, f"drained {earliest - first:.2f}s before it was due"


@pytest.mark.parametrize("code", ["instance-reboot", "system-reboot"])
def test_a_reboot_drains_in_time_and_the_node_is_back_after_it(aws: AwsWorld, code: str) -> None:
    aws.start()
    event_id, earliest = schedule(aws, code)
    aws.wait_phase("drained")
    drained_in_time(aws, earliest)
    out(aws)

    aws.kill9()  # the instance reboots
    aws.reboot()
    aws.start()
    aws.wait_phase("recovering")
    aws.wait_polls(8)
    assert aws.phase() == "recovering" and aws.lb_status() == "out"  # still active: out
    fake(aws).complete(event_id)
    aws.wait_phase("in_service")
    assert aws.lb_status() == "in_service"
    assert "system-reboot" in aws.log_path.read_text() or code != "system-reboot"


def test_system_maintenance_drains_and_ends_when_completed(aws: AwsWorld) -> None:
    aws.start()
    event_id, earliest = schedule(aws, "system-maintenance")
    aws.wait_phase("drained")
    drained_in_time(aws, earliest)
    fake(aws).complete(event_id)
    aws.wait_phase("in_service")
    assert aws.calls()[-1] == "put_back"


SCHEDULED = "/latest/meta-data/events/maintenance/scheduled"


def test_a_failing_scheduled_path_hides_no_spot_notice(aws: AwsWorld) -> None:
    aws.start()
    aws.wait_polls(2)
    fake(aws).inject("503", count=100_000, path=SCHEDULED)
    fake(aws).spot("terminate", in_seconds=4)
    aws.wait_phase("removed")
    out(aws)
    assert "listing the notices read without it" in aws.log_path.read_text()


def test_an_event_on_a_path_that_fails_is_not_taken_as_over(aws: AwsWorld) -> None:
    aws.start()
    event_id, _ = schedule(aws, "system-maintenance")
    aws.wait_phase("drained")
    out(aws)
    # a rebalance recommendation (ignored) is read while the scheduled path fails for
    # about 20 polls, far past gone_after (5 s): the listings without the event are partial
    fake(aws).rebalance()
    fake(aws).inject("503", count=60, path=SCHEDULED)
    aws.wait(
        lambda: "listing the notices read without it" in aws.log_path.read_text(), "a partial poll"
    )
    aws.wait(
        lambda: "every metadata path can be read again" in aws.log_path.read_text(),
        "the scheduled path read again",
        timeout=120,
    )
    assert aws.phase() == "drained" and "put_back" not in aws.calls()
    assert aws.lb_status() == "out"
    fake(aws).complete(event_id)
    aws.wait_phase("in_service")
    assert aws.calls()[-1] == "put_back"


@pytest.mark.parametrize("code", ["instance-retirement", "instance-stop"])
def test_a_retirement_or_stop_removes_the_node_in_time(aws: AwsWorld, code: str) -> None:
    aws.start()
    _, earliest = schedule(aws, code)
    aws.wait_phase("removed")
    drained_in_time(aws, earliest)  # not weeks early: at NotBefore - timeout - margin
    out(aws)


def test_a_cancelled_event_never_drains(aws: AwsWorld) -> None:
    aws.start()
    event_id = fake(aws).schedule("system-reboot", not_before_in=60)
    aws.wait_polls(5)
    fake(aws).cancel(event_id)
    aws.wait_polls(5)
    assert aws.calls() == [] and aws.phase() == "in_service"


@pytest.mark.parametrize("action", ["terminate", "stop", "hibernate"])
def test_a_spot_interruption_removes_the_node(aws: AwsWorld, action: str) -> None:
    aws.start()
    fake(aws).spot(action, in_seconds=4)
    aws.wait_phase("removed")
    out(aws)
    listed = aws.cli("events", "--json")
    assert listed.returncode == 0 and f"spot-{action}" in listed.stdout, listed.stderr


def test_a_spot_notice_whose_time_moves_is_one_event(aws: AwsWorld) -> None:
    aws.configure(drain={"timeout": "130s"})  # due at once for a notice 2 minutes ahead
    fake(aws).set_quirks(spot_time_moves=True)
    aws.start()
    fake(aws).spot("terminate")
    aws.wait_phase("removed")
    event_id = aws.record()["event"]["event_id"]
    not_before = aws.record()["event"]["not_before"]
    aws.wait(lambda: aws.record()["event"]["not_before"] > not_before + 1, "the time to move")
    assert aws.record()["event"]["event_id"] == event_id
    assert aws.log_path.read_text().count("drain started") == 1


def test_a_rebalance_recommendation_is_ignored_by_default(aws: AwsWorld) -> None:
    fake(aws).rebalance()
    aws.start()
    aws.wait_polls(8)
    assert aws.calls() == [] and aws.phase() == "in_service"


def test_a_rebalance_recommendation_drains_when_configured(aws: AwsWorld) -> None:
    aws.configure(events={"Rebalance": "drain"})
    fake(aws).rebalance()
    aws.start()
    aws.wait_phase("drained")
    fake(aws).clear_rebalance()
    aws.wait_phase("in_service")


def test_an_auto_scaling_termination_removes_the_node(aws: AwsWorld) -> None:
    fake(aws).set_lifecycle("InService")
    aws.start()
    aws.wait_polls(5)
    assert aws.calls() == []
    fake(aws).set_lifecycle("Terminated")
    aws.wait_phase("removed")


def test_expired_tokens_and_503_bursts_are_survived(aws: AwsWorld) -> None:
    aws.configure(source={"token_ttl": "2s"})
    aws.start()
    aws.wait(lambda: fake(aws).snapshot()["token_puts"] >= 2, "a token renewed before its end")
    fake(aws).expire_tokens()
    fake(aws).inject("503", count=2)
    event_id, earliest = schedule(aws, "system-reboot")
    aws.wait_phase("drained")
    drained_in_time(aws, earliest)
    state = fake(aws).snapshot()
    assert state["unauthorized"] >= 1 and aws.daemon is not None and aws.daemon.alive()
    assert aws.record()["event"]["event_id"] == event_id


def test_check_and_status_name_the_instance(aws: AwsWorld) -> None:
    done = aws.cli("check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "i-1234567890abcdef0" in done.stdout
    shown = aws.cli("config", "show")
    assert "approve: never" in shown.stdout
    fake(aws).schedule("instance-stop", not_before_in=14 * 86400)
    listed = aws.cli("events", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "instance-stop" in json.dumps(json.loads(listed.stdout))
    day = time.strftime("%Y-%m-%d", time.localtime(time.time() + 14 * 86400))
    shown = aws.cli("events")
    assert f"instance-stop Scheduled not before {day} " in shown.stdout, shown.stdout


SPOT = "/latest/meta-data/spot/instance-action"


def test_undrain_is_refused_while_a_path_cannot_be_read(aws: AwsWorld) -> None:
    assert aws.cli("drain").returncode == 0  # held out by a person
    fake(aws).rebalance()  # read (and ignored) while the Spot path fails
    fake(aws).inject("503", count=100_000, path=SPOT)
    done = aws.cli("undrain")
    assert done.returncode == 1, done.stderr
    assert "--force" in done.stderr and SPOT in done.stderr
    assert aws.lb_status() != "in_service"
    done = aws.cli("undrain", "--force")  # a person who knows no Spot notice stands
    assert done.returncode == 0, done.stderr
    assert aws.lb_status() == "in_service"


def test_check_fails_while_a_path_cannot_be_read(aws: AwsWorld) -> None:
    fake(aws).rebalance()  # read while the Spot path fails: a partial listing
    fake(aws).inject("503", count=100_000, path=SPOT)
    done = aws.cli("check")
    assert done.returncode == 1, done.stdout + done.stderr
    (row,) = [r for r in done.stdout.splitlines() if "metadata: scheduled events" in r]
    assert row.startswith("FAIL") and "in part" in row, done.stdout


def test_events_lists_what_it_read_and_fails_while_a_path_cannot_be_read(aws: AwsWorld) -> None:
    fake(aws).rebalance()
    fake(aws).inject("503", count=100_000, path=SPOT)
    done = aws.cli("events", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    (row,) = json.loads(done.stdout)  # what could be read is listed all the same
    assert row["event_type"] == "Rebalance"
    assert "only in part" in done.stderr and SPOT in done.stderr
