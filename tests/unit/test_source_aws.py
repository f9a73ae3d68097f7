"""The AWS source: its parsers on every documented form and quirk, and the source against
the fake IMDS over real HTTP (tokens, 401s, expiry, 404s, 503 bursts, slow answers)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from drainer.config import parse_config
from drainer.core import Reaction
from drainer.errors import ConfigError, PayloadError, SourceError
from drainer.model import Approve, EventStatus, EventType
from drainer.sources.aws import (
    AwsConfig,
    AwsSource,
    parse_lifecycle,
    parse_rebalance,
    parse_scheduled,
    parse_spot,
)
from drainer.testing import FakeAWS, FakeClock

NAMES = ("i-1234567890abcdef0",)
EVENT = {
    "NotBefore": "21 Jan 2019 09:00:43 GMT",
    "Code": "system-reboot",
    "Description": "scheduled reboot",
    "EventId": "instance-event-0d59937288b749b32",
    "NotAfter": "21 Jan 2019 09:17:23 GMT",
    "State": "active",
}


@pytest.fixture
def fake() -> Iterator[FakeAWS]:
    with FakeAWS() as server:
        yield server


def source_for(fake: FakeAWS, **options: Any) -> AwsSource:
    config = {"endpoint": fake.url, "timeout": 1.0, **options.pop("config", {})}
    return AwsSource(AwsConfig(**config), **options)


# -- scheduled events, as documented -------------------------------------------------------


def test_the_documented_example_is_a_reboot_of_this_vm() -> None:
    (event,) = parse_scheduled([EVENT], NAMES)
    assert event.event_id == "instance-event-0d59937288b749b32"
    assert event.event_type is EventType.REBOOT and event.status is EventStatus.SCHEDULED
    assert event.not_before == 1548061243.0  # 21 Jan 2019 09:00:43 UTC
    assert event.resources == NAMES and event.raw_type == "system-reboot"
    assert event.problems == ()


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("instance-reboot", EventType.REBOOT),
        ("system-reboot", EventType.REBOOT),
        ("system-maintenance", EventType.FREEZE),
        ("instance-retirement", EventType.TERMINATE),
        ("instance-stop", EventType.TERMINATE),
    ],
)
def test_every_code_has_its_type(code: str, kind: EventType) -> None:
    (event,) = parse_scheduled([{**EVENT, "Code": code}], NAMES)
    assert event.event_type is kind and event.type_name == code


@pytest.mark.parametrize("state", ["completed", "canceled", "Completed"])
def test_completed_or_canceled_means_over(state: str) -> None:
    assert parse_scheduled([{**EVENT, "State": state}], NAMES) == []


def test_state_and_code_are_read_whatever_their_case_and_spaces() -> None:
    (event,) = parse_scheduled([{**EVENT, "Code": " System-Reboot\n", "State": "Active "}], NAMES)
    assert event.event_type is EventType.REBOOT and event.status is EventStatus.SCHEDULED
    assert event.problems == ()
    assert parse_scheduled([{**EVENT, "State": " Completed\n"}], NAMES) == []


def test_a_missing_not_after_is_no_problem() -> None:
    (event,) = parse_scheduled([{k: v for k, v in EVENT.items() if k != "NotAfter"}], NAMES)
    assert event.problems == () and event.not_before == 1548061243.0


def test_go_layout_without_a_leading_zero_is_read() -> None:
    (event,) = parse_scheduled([{**EVENT, "NotBefore": "2 Jan 2006 15:04:05 GMT"}], NAMES)
    assert event.not_before == 1136214245.0


@pytest.mark.parametrize("value", [None, "", "soon", 5])
def test_an_unreadable_not_before_is_due_now_and_said(value: object) -> None:
    item = {**EVENT, "NotBefore": value} if value is not None else {**EVENT}
    if value is None:
        del item["NotBefore"]
    (event,) = parse_scheduled([item], NAMES)
    assert event.not_before is None and "NotBefore" in event.problems[0]


def test_an_unknown_code_or_state_is_kept_and_pending() -> None:
    (event,) = parse_scheduled([{**EVENT, "Code": "host-upgrade", "State": "in-progress"}], NAMES)
    assert event.event_type is EventType.UNKNOWN and event.type_name == "host-upgrade"
    assert event.status is EventStatus.UNKNOWN and event.status_name == "in-progress"
    assert len(event.problems) == 2


def test_an_odd_entry_never_hides_another() -> None:
    events = parse_scheduled(["garbage", 7, EVENT], NAMES)
    assert [e.event_type for e in events] == [
        EventType.UNKNOWN,
        EventType.UNKNOWN,
        EventType.REBOOT,
    ]
    assert all(e.resources == NAMES for e in events)  # IMDS speaks only of this VM
    assert events[0].problems == ('not an object: "garbage"',)


def test_an_entry_without_an_id_keeps_its_id_while_it_completes() -> None:
    item = {k: v for k, v in EVENT.items() if k != "EventId"}
    (first,) = parse_scheduled([item], NAMES)
    (again,) = parse_scheduled([{**item, "Description": "[Completed] x", "State": "?"}], NAMES)
    assert first.event_id == again.event_id and first.event_id.startswith("scheduled[0]#")


@pytest.mark.parametrize("doc", [{}, "[]", None, {"Events": []}])
def test_anything_but_an_array_is_a_payload_error(doc: object) -> None:
    with pytest.raises(PayloadError, match="not a JSON array"):
        parse_scheduled(doc, NAMES)


# -- Spot, rebalance, Auto Scaling ---------------------------------------------------------


@pytest.mark.parametrize("action", ["terminate", "stop", "hibernate"])
def test_a_spot_notice_is_a_preempt_at_its_time(action: str) -> None:
    event = parse_spot({"action": action, "time": "2020-04-24T17:11:44Z"}, "L", NAMES)
    assert event.event_type is EventType.PREEMPT and event.status is EventStatus.SCHEDULED
    assert event.not_before == 1587748304.0 and event.problems == ()
    assert event.event_id == f"spot-{action}-L" and event.type_name == f"spot-{action}"


def test_a_spot_notice_whose_time_moves_keeps_its_id() -> None:
    first = parse_spot({"action": "terminate", "time": "2020-04-24T17:11:44Z"}, "L", NAMES)
    moved = parse_spot({"action": "terminate", "time": "2020-04-24T17:13:02Z"}, "L", NAMES)
    assert first.event_id == moved.event_id and first.not_before != moved.not_before


@pytest.mark.parametrize(
    "doc", [{"action": "evict", "time": "soon"}, "terminate at 17:11", [], {"time": None}]
)
def test_an_odd_spot_notice_is_an_interruption_due_now(doc: object) -> None:
    event = parse_spot(doc, "L", NAMES)
    assert event.event_type is EventType.PREEMPT and event.not_before is None
    assert event.problems


def test_a_rebalance_recommendation_has_no_deadline_and_a_stable_id() -> None:
    event = parse_rebalance({"noticeTime": "2020-11-05T08:22:00Z"}, "L", NAMES)
    assert event.event_type is EventType.REBALANCE and event.not_before is None
    assert event.event_id == "rebalance-L" and event.problems == ()
    assert parse_rebalance("junk", "L", NAMES).problems


@pytest.mark.parametrize("state", ["Terminated", "Warmed:Terminated\n"])
def test_a_terminated_lifecycle_state_is_a_termination_under_way(state: str) -> None:
    event = parse_lifecycle(state, "L", NAMES)
    assert event is not None and event.event_type is EventType.TERMINATE
    assert event.status is EventStatus.STARTED


@pytest.mark.parametrize("state", ["InService", "Standby", "Detached", "Warmed:Running"])
def test_other_lifecycle_states_are_no_event(state: str) -> None:
    assert parse_lifecycle(state, "L", NAMES) is None


@pytest.mark.parametrize("state", ["Warmed:Stopped", "warmed:hibernated\n"])
def test_a_return_to_the_warm_pool_stops_the_instance_so_it_drains(state: str) -> None:
    # a group with ReuseOnScaleIn returns a serving instance to its warm pool on scale
    # in: it is stopped (or hibernated), and back later: drained, back once InService
    event = parse_lifecycle(state, "L", NAMES)
    assert event is not None and event.event_type is EventType.REBOOT
    assert event.status is EventStatus.STARTED and event.problems == ()


def test_the_warm_pool_round_trip_from_the_service(fake: FakeAWS) -> None:
    fake.set_lifecycle("InService")
    source = source_for(fake)
    assert source.events().events == ()
    fake.set_lifecycle("Warmed:Stopped")
    (event,) = source.events().events
    assert event.event_type is EventType.REBOOT and event.raw_type == "autoscaling-Warmed:Stopped"
    fake.set_lifecycle("InService")
    assert source.events().events == ()


@pytest.mark.parametrize("state", ["", "<html>", "Terminating:Wait"])
def test_an_unknown_lifecycle_state_is_an_unknown_event(state: str) -> None:
    event = parse_lifecycle(state, "L", NAMES)
    assert event is not None and event.event_type is EventType.UNKNOWN and event.problems


# -- configuration: AWS cannot approve ------------------------------------------------------


MINIMAL = {"health": {"tcp": {"port": 8080}}, "load_balancers": [{"type": "mock"}]}


def test_aws_never_approves_and_says_so() -> None:
    config = parse_config({**MINIMAL, "source": {"type": "aws"}})
    assert config.source.approve is Approve.NEVER
    policy = config.policy(node_names=frozenset(NAMES), lbs=("mock",))
    assert policy.approve is Approve.NEVER
    with pytest.raises(ConfigError, match=r"source\.approve: this cloud cannot approve"):
        parse_config({**MINIMAL, "source": {"type": "aws", "approve": "sole"}})
    assert AwsConfig(approve=Approve.NEVER).approve is Approve.NEVER


def test_rebalance_is_ignored_unless_configured() -> None:
    config = parse_config({**MINIMAL, "source": {"type": "aws"}})
    policy = config.policy(node_names=frozenset(NAMES), lbs=("mock",))
    assert policy.rules[EventType.REBALANCE].reaction is Reaction.IGNORE
    drained = parse_config({**MINIMAL, "source": {"type": "aws"}, "events": {"Rebalance": "drain"}})
    rules = drained.policy(node_names=frozenset(NAMES), lbs=("mock",)).rules
    assert rules[EventType.REBALANCE].reaction is Reaction.DRAIN


@pytest.mark.parametrize("ttl", ["0s", "7h"])
def test_a_token_ttl_imds_refuses_is_a_config_error(ttl: str) -> None:
    with pytest.raises(ConfigError, match=r"source\.token_ttl: must be between 1s and 6h"):
        parse_config({**MINIMAL, "source": {"type": "aws", "token_ttl": ttl}})


# -- against the fake, over HTTP ------------------------------------------------------------


def test_no_events_is_empty_whether_listed_as_an_empty_array_or_a_404(fake: FakeAWS) -> None:
    source = source_for(fake)
    assert source.events().events == ()
    fake.set_quirks(scheduled_404=True)
    assert source.events().events == ()
    fake.inject("404", path="/latest/meta-data/events/maintenance/scheduled")
    assert source.events().events == ()


def test_every_kind_is_read_from_the_service(fake: FakeAWS) -> None:
    eid = fake.schedule("instance-retirement", not_after_in=None)
    fake.spot("hibernate")
    fake.rebalance()
    fake.set_lifecycle("Terminated")
    listed = source_for(fake).events().events
    assert sorted((e.type_name, e.event_type) for e in listed) == [
        ("autoscaling-Terminated", EventType.TERMINATE),
        ("instance-retirement", EventType.TERMINATE),
        ("rebalance-recommendation", EventType.REBALANCE),
        ("spot-hibernate", EventType.PREEMPT),
    ]
    assert eid in {e.event_id for e in listed}
    assert all(e.resources[0] == "i-1234567890abcdef0" for e in listed)


def test_a_completed_event_is_gone(fake: FakeAWS) -> None:
    eid = fake.schedule("system-maintenance")
    source = source_for(fake)
    assert [e.event_id for e in source.events().events] == [eid]
    fake.complete(eid)
    assert source.events().events == ()


def test_node_names_are_the_instance_id_and_local_hostname(fake: FakeAWS) -> None:
    assert source_for(fake).node_names() == {
        "i-1234567890abcdef0",
        "ip-172-16-34-43.ec2.internal",
        "ip-172-16-34-43",
    }


def test_one_token_serves_many_requests(fake: FakeAWS) -> None:
    source = source_for(fake)
    for _ in range(3):
        source.events()
    assert fake.snapshot()["token_puts"] == 1 and fake.snapshot()["unauthorized"] == 0


def test_the_token_is_renewed_before_it_expires() -> None:
    clock = FakeClock()
    with FakeAWS(clock=clock) as fake:
        source = source_for(fake, config={"token_ttl": 120}, clock=clock)
        source.events()
        clock.advance(89)  # renewed at 120 - min(60, 120/4) = 90 s
        source.events()
        assert fake.snapshot()["token_puts"] == 1
        clock.advance(2)
        source.events()
        assert fake.snapshot()["token_puts"] == 2 and fake.snapshot()["unauthorized"] == 0


def test_a_token_past_its_life_is_renewed_not_sent() -> None:
    clock = FakeClock()
    with FakeAWS(clock=clock) as fake:
        source = source_for(fake, config={"token_ttl": 3600}, clock=clock)
        source.events()
        clock.advance(3600)  # past the token's life: without renewal every GET would be a 401
        source.events()
        assert fake.snapshot()["token_puts"] == 2 and fake.snapshot()["unauthorized"] == 0


def test_a_401_drops_the_token_and_fetches_a_new_one(fake: FakeAWS) -> None:
    fake.spot("terminate")
    source = source_for(fake)
    source.events()
    fake.expire_tokens()  # revoked, or expired by a clock the source did not see
    assert len(source.events().events) == 1
    assert fake.snapshot()["token_puts"] == 2 and fake.snapshot()["unauthorized"] == 1


def test_a_single_401_is_retried_with_a_new_token(fake: FakeAWS) -> None:
    fake.inject("401")
    assert source_for(fake).events().events == ()
    assert fake.snapshot()["token_puts"] == 2


def test_401_after_a_new_token_is_a_source_error(fake: FakeAWS) -> None:
    fake.inject("401", count=2)
    with pytest.raises(SourceError, match="HTTP 401"):
        source_for(fake).events()


def test_imdsv1_is_never_used_unless_configured() -> None:
    with FakeAWS(tokens="none") as fake:
        with pytest.raises(SourceError, match=r"IMDSv1 is not used unless source\.imdsv1"):
            source_for(fake).events()
        assert fake.snapshot()["requests"] == 0  # not one GET without a token


def test_imdsv1_fallback_when_configured(caplog: pytest.LogCaptureFixture) -> None:
    with FakeAWS(tokens="none") as fake:
        fake.spot("stop")
        with caplog.at_level(logging.WARNING, logger="drainer"):
            (event,) = source_for(fake, config={"imdsv1": True}).events().events
        assert event.event_type is EventType.PREEMPT
        assert "using IMDSv1" in caplog.text


def test_a_503_burst_is_retried(fake: FakeAWS) -> None:
    fake.schedule("system-reboot")
    fake.inject("503", count=2)
    assert len(source_for(fake).events().events) == 1


@pytest.mark.parametrize("kind", ["503", "drop"])
def test_a_lasting_failure_is_a_source_error_never_no_event(fake: FakeAWS, kind: str) -> None:
    fake.inject(kind, count=20, path="/latest/meta-data/spot/instance-action")
    with pytest.raises(SourceError):
        source_for(fake, attempts=2).events()


SCHEDULED = "/latest/meta-data/events/maintenance/scheduled"
SPOT = "/latest/meta-data/spot/instance-action"


def test_a_failing_path_hides_no_notice_on_another(
    fake: FakeAWS, caplog: pytest.LogCaptureFixture
) -> None:
    fake.schedule("system-reboot")
    fake.inject("503", count=20, path=SPOT)
    source = source_for(fake, attempts=2)
    with caplog.at_level(logging.WARNING, logger="drainer"):
        first, second = source.events(), source.events()
    for listing in (first, second):
        (event,) = listing.events
        assert event.event_type is EventType.REBOOT and listing.partial
    assert caplog.text.count("listing the notices read without it") == 1  # said once
    assert SPOT in caplog.text and "HTTP 503" in caplog.text


def test_a_partial_poll_is_an_answer_counted_as_a_source_error(fake: FakeAWS) -> None:
    from drainer.metrics import Metrics
    from drainer.polling import poll

    fake.schedule("system-reboot")
    fake.inject("503", count=20, path=SPOT)
    metrics = Metrics()
    polled = poll(source_for(fake, attempts=1), metrics)
    assert polled.events is not None and polled.events.partial and not polled.back_off
    assert metrics.registry.get_sample_value("drainer_errors_total", {"kind": "source"}) == 1
    # not read in full: a path failing for days must reach the unreachable alert
    assert metrics.registry.get_sample_value("drainer_last_poll_success_timestamp_seconds") == 0


def test_a_malformed_schedule_hides_no_spot_notice(fake: FakeAWS) -> None:
    fake.spot("terminate")
    fake.inject("malformed", path=SCHEDULED)
    listing = source_for(fake).events()
    (event,) = listing.events
    assert event.event_type is EventType.PREEMPT and listing.partial


def test_every_path_read_again_makes_the_listing_whole(fake: FakeAWS) -> None:
    fake.schedule("system-reboot")
    fake.inject("503", count=1, path=SPOT)
    source = source_for(fake, attempts=1)
    assert source.events().partial
    assert not source.events().partial  # the 503 is used: the next poll reads every path


def test_no_answer_at_all_fails_the_poll_at_the_first_path(fake: FakeAWS) -> None:
    fake.schedule("system-reboot")
    source = source_for(fake, config={"timeout": 0.3}, attempts=1)
    source.node_names()
    before = fake.snapshot()["requests"]
    fake.inject("slow", count=50, delay=1.0)  # every path: the service itself hangs
    with pytest.raises(SourceError):
        source.events()
    # one path waited out, not every one of them (a dead service costs one timeout)
    assert fake.snapshot()["requests"] - before == 1


def test_no_answer_on_a_later_path_hides_no_notice_read_before_it(fake: FakeAWS) -> None:
    fake.spot("terminate")
    source = source_for(fake, config={"timeout": 0.3}, attempts=1)
    source.node_names()
    source.events()  # the launch key is read with the first notice
    fake.inject("slow", count=50, delay=1.0, path=SCHEDULED)

    def poll() -> tuple[str, int]:
        before = fake.snapshot()["requests"]
        try:
            listing = source.events()
        except SourceError:
            return "failed", fake.snapshot()["requests"] - before
        (event,) = listing.events
        assert event.event_type is EventType.PREEMPT and listing.partial
        return "partial", fake.snapshot()["requests"] - before

    # The Spot notice read before the silent path is listed; the paths after it are not
    # asked (each would wait as long); from then on the silent path is asked last.
    assert [poll() for _ in range(3)] == [("partial", 2), ("partial", 4), ("partial", 4)]


def test_a_path_that_never_answers_hides_no_scheduled_event_on_every_poll(
    fake: FakeAWS,
) -> None:
    """The Spot path read first at every poll, silent at every poll, would fail them
    all, and a scheduled reboot would never be read."""
    fake.schedule("system-reboot")
    source = source_for(fake, config={"timeout": 0.3}, attempts=1)
    fake.inject("slow", count=50, delay=1.0, path=SPOT)
    listed = []
    for _ in range(4):
        with contextlib.suppress(SourceError):
            listed.append(source.events())
    assert len(listed) == 3  # every poll but the first: then the Spot path is asked last
    for listing in listed:
        (event,) = listing.events
        assert event.event_type is EventType.REBOOT and listing.partial


def test_a_token_that_cannot_be_renewed_mid_poll_costs_one_wait_not_one_per_path(
    fake: FakeAWS,
) -> None:
    import httpx

    from drainer.sources._metadata import Unreachable

    puts = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            puts.extend([request.url.path] if request.method == "PUT" else [])
            return super().handle_request(request)

    fake.schedule("system-reboot")
    source = source_for(fake, config={"timeout": 0.3}, attempts=1, transport=Counting())
    assert source.events().events
    fake.expire_tokens()  # a 401 at the next GET: a new token is asked for...
    fake.inject("slow", count=50, delay=1.0, path="/latest/api/token")  # ...and never comes
    puts.clear()
    with pytest.raises(Unreachable):
        source.events()
    assert len(puts) == 1  # not once per path: the service gives no answer at all


def test_a_slow_answer_times_out(fake: FakeAWS) -> None:
    fake.inject("slow", count=5, delay=3.0)
    with pytest.raises(SourceError):
        source_for(fake, config={"timeout": 0.3}, attempts=1).events()


def test_malformed_scheduled_events_are_a_payload_error(fake: FakeAWS) -> None:
    fake.inject("malformed", path="/latest/meta-data/events/maintenance/scheduled")
    with pytest.raises(PayloadError, match="invalid JSON"):
        source_for(fake).events()


def test_a_moving_spot_time_is_one_event() -> None:
    clock = FakeClock()
    with FakeAWS(clock=clock, quirks=["spot_time_moves"]) as fake:
        fake.spot("terminate")
        source = source_for(fake)
        (first,) = source.events().events
        clock.advance(7)
        (moved,) = source_for(fake).events().events  # a restarted sidecar too
        assert moved.not_before == first.not_before + 7  # the time moved...
        assert moved.event_id == first.event_id  # ...the event did not


def test_the_next_start_of_the_instance_gives_a_new_spot_id() -> None:
    clock = FakeClock()
    with FakeAWS(clock=clock) as fake:
        fake.spot("stop")
        source = source_for(fake)
        (first,) = source.events().events
        clock.advance(600)
        fake.restart_instance()  # stopped, started again: a later interruption is another
        assert source.events().events == ()
        fake.spot("stop")
        (second,) = source.events().events
        assert second.event_id != first.event_id


def test_the_next_start_gives_a_new_spot_id_in_an_auto_scaling_group_too() -> None:
    # InService is listed at every poll: it is no notice, and must not keep the start
    # of the instance read before the first interruption
    clock = FakeClock()
    with FakeAWS(clock=clock) as fake:
        fake.set_lifecycle("InService")
        source = source_for(fake)
        assert source.events().events == ()
        fake.spot("stop")
        (first,) = source.events().events
        clock.advance(600)
        fake.restart_instance()
        assert source.events().events == ()
        fake.spot("stop")
        (second,) = source.events().events
        assert second.event_id != first.event_id


def test_approve_is_refused() -> None:
    with pytest.raises(SourceError, match="AWS cannot start event"):
        AwsSource(AwsConfig()).approve("instance-event-1")


def test_odd_events_are_warned_about_once(fake: FakeAWS, caplog: pytest.LogCaptureFixture) -> None:
    fake.set_lifecycle("Warmed:Running")
    source = source_for(fake)
    fake.spot("terminate")
    fake.inject("malformed", path="/latest/meta-data/spot/instance-action", count=2)
    with caplog.at_level(logging.WARNING, logger="drainer"):
        source.events()
        source.events()
    assert caplog.text.count("not an object") == 1
    assert json.loads(json.dumps(fake.snapshot()))["lifecycle"] == "Warmed:Running"


def test_a_notice_keeps_its_id_when_the_identity_document_reads_again_later(
    fake: FakeAWS, caplog: pytest.LogCaptureFixture
) -> None:
    fake.spot("terminate")
    fake.inject("503", path="/latest/dynamic/instance-identity/document")
    source = source_for(fake, attempts=1)
    with caplog.at_level(logging.WARNING, logger="drainer"):
        (first,) = source.events().events
    assert "cannot read the instance identity document" in caplog.text
    (again,) = source.events().events  # the document is readable now
    assert again.event_id == first.event_id


def test_a_page_answered_to_the_token_put_is_no_token(fake: FakeAWS) -> None:
    # an HTML page (a proxy's) with a 200 is not a token: kept, it would fail every
    # request until its TTL ran out; the next attempt asks for a real one
    fake.inject("html", path="/latest/api/token")
    source = source_for(fake)
    assert source.events().events == ()
    fake.spot("terminate")
    (event,) = source.events().events
    assert event.event_type is EventType.PREEMPT


def test_a_503_burst_on_the_token_put_is_retried(fake: FakeAWS) -> None:
    fake.inject("503", count=2, path="/latest/api/token")
    assert source_for(fake).events().events == ()
    assert fake.snapshot()["token_puts"] == 1


def test_an_unanswered_token_put_names_the_hop_limit(fake: FakeAWS) -> None:
    fake.inject("slow", count=3, delay=2.0, path="/latest/api/token")
    with pytest.raises(SourceError, match="HttpPutResponseHopLimit must be at least 2"):
        source_for(fake, config={"timeout": 0.3}, attempts=1).events()
    assert fake.snapshot()["requests"] == 0  # and no GET went without a token


def test_a_refused_token_put_says_how_to_allow_imdsv1(fake: FakeAWS) -> None:
    fake.inject("404", path="/latest/api/token")
    with pytest.raises(SourceError, match=r"HTTP 404; IMDSv1 is not used unless source\.imdsv1"):
        source_for(fake).events()
