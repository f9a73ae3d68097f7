"""The fake EC2 metadata service keeps IMDS's rules and AEMM's payloads, over real HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest

from drainer.testing import FakeAWS, FakeClock

TTL = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN = "X-aws-ec2-metadata-token"
SCHEDULED = "/latest/meta-data/events/maintenance/scheduled"
SPOT = "/latest/meta-data/spot/instance-action"
AWS_TIME = re.compile(r"^[1-9]\d? [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_775_000_000.0)  # 31 Mar 2026 23:33:20 UTC


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeAWS]:
    with FakeAWS(clock=clock) as server:
        yield server


@pytest.fixture
def http(fake: FakeAWS) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, trust_env=False) as client:
        yield client


def token(http: httpx.Client, ttl: str = "60") -> str:
    reply = http.put("/latest/api/token", headers={TTL: ttl})
    assert reply.status_code == 200 and reply.headers[TTL] == ttl
    assert reply.headers["content-type"] == "text/plain"
    return reply.text


def get(http: httpx.Client, path: str) -> httpx.Response:
    return http.get(path, headers={TOKEN: token(http)})


@pytest.mark.parametrize("headers", [{}, {TTL: "0"}, {TTL: "21601"}, {TTL: "soon"}])
def test_a_token_needs_a_ttl_of_1_to_21600_seconds(http: httpx.Client, headers: dict) -> None:
    reply = http.put("/latest/api/token", headers=headers)
    assert reply.status_code == 400 and "400 - Bad Request" in reply.text


def test_token_rules(http: httpx.Client, fake: FakeAWS, clock: FakeClock) -> None:
    refused = http.get("/latest/meta-data/instance-id")
    assert refused.status_code == 401 and refused.headers["server"] == "EC2ws"  # IMDSv2 only
    assert http.get("/latest/api/token").status_code == 405
    forwarded = {TTL: "60", "X-Forwarded-For": "10.0.0.1"}
    assert http.put("/latest/api/token", headers=forwarded).status_code == 403
    value = token(http, "60")
    assert http.get("/latest/meta-data/instance-id", headers={TOKEN: "nope"}).status_code == 401
    reply = http.get("/latest/meta-data/instance-id", headers={TOKEN: value})
    assert reply.text == "i-1234567890abcdef0"
    clock.advance(60)
    assert http.get("/latest/meta-data/instance-id", headers={TOKEN: value}).status_code == 401
    fresh = token(http)
    fake.expire_tokens()
    assert http.get("/latest/meta-data/instance-id", headers={TOKEN: fresh}).status_code == 401
    assert fake.snapshot()["unauthorized"] == 4


def test_optional_tokens_answer_imdsv1_too(clock: FakeClock) -> None:
    with FakeAWS(tokens="optional", clock=clock) as fake:
        assert httpx.get(f"{fake.url}/latest/meta-data/local-hostname").status_code == 200
    with FakeAWS(tokens="none", clock=clock) as fake:
        reply = httpx.put(f"{fake.url}/latest/api/token", headers={TTL: "60"})
        assert reply.status_code == 404


def test_scheduled_events_as_aws_writes_them(http: httpx.Client, fake: FakeAWS) -> None:
    assert json.loads(get(http, SCHEDULED).text) == []
    first = fake.schedule("system-reboot", not_before_in=3600, deadline_in=7200)
    fake.schedule("instance-stop", not_after_in=None, description="retiring")
    fake.complete(first)
    body = get(http, SCHEDULED).text
    assert '"Code" : "system-reboot"' in body  # the documentation's layout
    listed = json.loads(body)
    assert list(listed[0]) == [
        "Code",
        "Description",
        "State",
        "EventId",
        "NotBefore",
        "NotAfter",
        "NotBeforeDeadline",
    ]
    assert listed[0]["State"] == "completed"
    assert listed[0]["Description"] == "[Completed] The instance is scheduled for system-reboot"
    assert listed[0]["NotBefore"] == "1 Apr 2026 00:33:20 GMT"  # no leading zero (Go's "2 Jan")
    assert re.fullmatch(r"instance-event-[0-9a-f]{17}", listed[0]["EventId"])
    assert "NotAfter" not in listed[1] and listed[1]["Description"] == "retiring"
    assert all(AWS_TIME.match(e["NotBefore"]) for e in listed)
    fake.remove(first)
    assert [e["Code"] for e in json.loads(get(http, SCHEDULED).text)] == ["instance-stop"]


def test_no_scheduled_events_may_be_a_404(http: httpx.Client, fake: FakeAWS) -> None:
    fake.set_quirks(scheduled_404=True)
    reply = get(http, SCHEDULED)
    assert reply.status_code == 404 and "<title>404 - Not Found</title>" in reply.text


def test_spot_rebalance_and_lifecycle(http: httpx.Client, fake: FakeAWS, clock: FakeClock) -> None:
    for path in (SPOT, "/latest/meta-data/events/recommendations/rebalance"):
        assert get(http, path).status_code == 404
    assert get(http, "/latest/meta-data/autoscaling/target-lifecycle-state").status_code == 404
    fake.spot("stop")
    fake.rebalance()
    fake.set_lifecycle("Warmed:Terminated")
    spot = get(http, SPOT)
    assert spot.text == '{\n\t"action": "stop",\n\t"time": "2026-03-31T23:35:20Z"\n}'  # AEMM's
    assert get(http, "/latest/meta-data/spot/termination-time").text == "2026-03-31T23:35:20Z"
    rebalance = get(http, "/latest/meta-data/events/recommendations/rebalance").json()
    assert rebalance == {"noticeTime": "2026-03-31T23:33:20Z"}
    lifecycle = get(http, "/latest/meta-data/autoscaling/target-lifecycle-state/")  # a slash
    assert lifecycle.text == "Warmed:Terminated"
    clock.advance(30)
    assert get(http, SPOT).json()["time"] == "2026-03-31T23:35:20Z"  # stays...
    fake.set_quirks(spot_time_moves=True)
    assert get(http, SPOT).json()["time"] == "2026-03-31T23:35:50Z"  # ...unless it moves


def test_the_identity_document_changes_with_a_restart(
    http: httpx.Client, fake: FakeAWS, clock: FakeClock
) -> None:
    doc = get(http, "/latest/dynamic/instance-identity/document").json()
    assert doc["instanceId"] == "i-1234567890abcdef0" and doc["region"] == "us-east-1"
    assert doc["pendingTime"] == "2026-03-31T23:33:20Z"
    clock.advance(100)
    fake.restart_instance()
    doc = get(http, "/latest/dynamic/instance-identity/document").json()
    assert doc["pendingTime"] == "2026-03-31T23:35:00Z"


def test_faults_hit_the_next_gets_of_their_path(http: httpx.Client, fake: FakeAWS) -> None:
    fake.inject("503", count=2, path=SPOT)
    fake.inject("401")
    value = token(http)
    assert http.get(SCHEDULED, headers={TOKEN: value}).status_code == 401  # any path
    assert http.get(SCHEDULED, headers={TOKEN: value}).status_code == 200
    assert [http.get(SPOT, headers={TOKEN: value}).status_code for _ in range(3)] == [503, 503, 404]
    fake.inject("malformed")
    with pytest.raises(ValueError):
        json.loads(http.get(SCHEDULED, headers={TOKEN: value}).text)
    fake.inject("drop")
    with pytest.raises(httpx.HTTPError):
        http.get(SCHEDULED, headers={TOKEN: value})


def test_the_control_api(http: httpx.Client, fake: FakeAWS) -> None:
    reply = http.post("/fake/scheduled", json={"code": "instance-reboot", "not_after_in": None})
    event_id = reply.json()["EventId"]
    state = http.post(f"/fake/scheduled/{event_id}/state", json={"state": "canceled"}).json()
    assert state["scheduled"][0]["Description"].startswith("[Canceled] ")
    assert http.post("/fake/spot", json={"action": "hibernate", "in": 10}).json()["spot"]
    assert http.post("/fake/lifecycle", json={"state": "Terminated"}).json()["lifecycle"]
    assert (
        http.post("/fake/faults", json={"kind": "503", "count": 3, "path": SPOT}).status_code == 200
    )
    assert http.post("/fake/tokens/expire").status_code == 200
    assert http.post("/fake/scheduled", json={"code": "reboot"}).status_code == 400
    assert http.post("/fake/scheduled", json={"code": "system-reboot", "x": 1}).status_code == 400
    assert http.post("/fake/scheduled/nope/remove").status_code == 404
    assert http.post("/fake/faults", json={"kind": "500"}).status_code == 400
    assert http.post("/fake/nothing").status_code == 404
    reset = http.post("/fake/reset").json()
    assert reset["scheduled"] == [] and reset["spot"] is None and reset["lifecycle"] is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.schedule("reboot"), "code must be one of"),
        (lambda f: f.spot("evict"), "action must be one of"),
        (lambda f: f.set_lifecycle("Gone"), "state must be one of"),
        (lambda f: f.inject("503", count=0), "count must be"),
        (lambda f: f.set_quirks(odd=True), "unknown quirks"),
    ],
)
def test_programming_errors_are_value_errors(fake: FakeAWS, call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call(fake)


def test_token_faults_hit_only_the_put(http: httpx.Client, fake: FakeAWS) -> None:
    fake.inject("503", path="/latest/api/token")
    fake.inject("404")
    assert http.put("/latest/api/token", headers={TTL: "60"}).status_code == 503
    value = token(http)  # the GET fault was not spent on the PUTs
    assert http.get(SCHEDULED, headers={TOKEN: value}).status_code == 404
