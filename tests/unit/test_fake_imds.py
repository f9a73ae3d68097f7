"""The fake IMDS, over real HTTP, with a fake clock (only the "slow" fault sleeps)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from drainer.testing import FakeClock
from drainer.testing.fake_imds import (
    NEIGHBOUR,
    QUIRKS,
    SCHEDULED_EVENTS_API_VERSIONS,
    FakeIMDS,
    UnknownEventError,
)

EVENTS = "/metadata/scheduledevents"
COMPUTE = "/metadata/instance/compute"
V = {"api-version": "2020-07-01"}
MD = {"Metadata": "true"}
EVENT_KEYS = {
    "EventId",
    "EventType",
    "ResourceType",
    "Resources",
    "EventStatus",
    "NotBefore",
    "Description",
    "EventSource",
    "DurationInSeconds",
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def imds(clock: FakeClock) -> Iterator[FakeIMDS]:
    with FakeIMDS(clock=clock, rate_limit=None) as fake:
        yield fake


@pytest.fixture
def client(imds: FakeIMDS) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=imds.url, trust_env=False, timeout=5.0) as http:
        yield http


def get_events(client: httpx.Client, version: str = "2020-07-01") -> dict[str, Any]:
    response = client.get(EVENTS, params={"api-version": version}, headers=MD)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def approve(client: httpx.Client, *event_ids: str) -> httpx.Response:
    body = {"StartRequests": [{"EventId": event_id} for event_id in event_ids]}
    return client.post(EVENTS, params=V, headers=MD, json=body)


# Scheduled events: the schema


def test_no_events_is_an_empty_document(client: httpx.Client) -> None:
    response = client.get(EVENTS, params=V, headers=MD)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"DocumentIncarnation": 0, "Events": []}


def test_event_has_exactly_the_documented_keys_and_types(
    imds: FakeIMDS, client: httpx.Client, clock: FakeClock
) -> None:
    event_id = imds.schedule(
        "Freeze", ["web-1", "web-2"], not_before_in=900, duration=5, description="Live migration"
    )

    [event] = get_events(client)["Events"]

    assert set(event) == EVENT_KEYS
    assert event["EventId"] == event_id == event_id.upper()
    assert uuid.UUID(event_id)
    assert event["EventType"] == "Freeze"
    assert event["ResourceType"] == "VirtualMachine"
    assert event["Resources"] == ["web-1", "web-2"]
    assert event["EventStatus"] == "Scheduled"
    assert event["NotBefore"] == "Sat, 11 Apr 2026 22:21:58 GMT"
    assert parsedate_to_datetime(event["NotBefore"]).timestamp() == clock.now + 900
    assert event["Description"] == "Live migration"
    assert event["EventSource"] == "Platform"
    assert event["DurationInSeconds"] == 5
    assert isinstance(event["DurationInSeconds"], int)


@pytest.mark.parametrize(
    ("version", "absent"),
    [
        ("2017-08-01", {"Description", "EventSource", "DurationInSeconds"}),
        ("2019-04-01", {"EventSource", "DurationInSeconds"}),
        ("2019-08-01", {"DurationInSeconds"}),
        ("2020-07-01", set()),
    ],
)
def test_fields_arrive_with_their_api_version(
    imds: FakeIMDS, client: httpx.Client, version: str, absent: set[str]
) -> None:
    imds.schedule("Reboot", ["web-1"])

    [event] = get_events(client, version)["Events"]

    assert set(event) == EVENT_KEYS - absent


# Request rules


@pytest.mark.parametrize(("method", "path"), [("GET", EVENTS), ("POST", EVENTS), ("GET", COMPUTE)])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Metadata": "false"},
        {"Metadata": ""},
        {"Metadata": "true", "X-Forwarded-For": "10.0.0.1"},
    ],
    ids=["no-metadata", "metadata-false", "metadata-empty", "x-forwarded-for"],
)
def test_header_rules_answer_400_with_a_json_error(
    imds: FakeIMDS, client: httpx.Client, method: str, path: str, headers: dict[str, str]
) -> None:
    event_id = imds.schedule("Reboot", ["web-1"])
    version = "2021-02-01" if path == COMPUTE else "2020-07-01"
    body = {"StartRequests": [{"EventId": event_id}]}

    response = client.request(
        method, path, params={"api-version": version}, headers=headers, json=body
    )

    assert response.status_code == 400
    assert response.json()["error"]
    assert imds.snapshot()["approvals"] == []


def test_metadata_header_value_is_case_insensitive(client: httpx.Client) -> None:
    response = client.get(EVENTS, params=V, headers={"Metadata": "True"})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (EVENTS, {}),
        (EVENTS, {"api-version": ""}),
        (EVENTS, {"api-version": "2021-02-01"}),
        (EVENTS, {"api-version": "latest"}),
        (COMPUTE, {}),
        (COMPUTE, {"api-version": "1999-01-01"}),
    ],
)
def test_missing_or_unknown_api_version_is_400(
    client: httpx.Client, path: str, params: dict[str, str]
) -> None:
    response = client.get(path, params=params, headers=MD)

    assert response.status_code == 400
    assert "api-version" in response.json()["error"]


@pytest.mark.parametrize("version", SCHEDULED_EVENTS_API_VERSIONS)
def test_every_documented_api_version_is_served(client: httpx.Client, version: str) -> None:
    assert get_events(client, version) == {"DocumentIncarnation": 0, "Events": []}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/metadata/instance", 404),
        ("GET", "/metadata/scheduledevents/extra", 404),
        ("GET", "/", 404),
        ("POST", COMPUTE, 405),
    ],
)
def test_unknown_path_or_method(client: httpx.Client, method: str, path: str, status: int) -> None:
    response = client.request(method, path, params=V, headers=MD)

    assert response.status_code == status


# DocumentIncarnation


def test_incarnation_changes_on_every_change_of_events_and_only_then(
    imds: FakeIMDS, client: httpx.Client
) -> None:
    def incarnation() -> int:
        value: int = get_events(client)["DocumentIncarnation"]
        return value

    assert incarnation() == incarnation() == 0
    first = imds.schedule("Reboot", ["web-1"])
    assert incarnation() == incarnation() == 1
    imds.set_compute(name="web-9")
    imds.inject("500", count=1)
    client.get(EVENTS, params=V, headers=MD)  # the fault, not a change
    assert approve(client, "00000000-0000-0000-0000-000000000000").status_code == 200
    assert incarnation() == 1
    assert approve(client, first).status_code == 200  # starts it
    assert incarnation() == 2
    assert approve(client, first).status_code == 200  # already started: no change
    imds.start_event(first)  # already started: no change
    assert incarnation() == 2
    second = imds.schedule("Freeze", ["web-1"])
    assert incarnation() == 3
    imds.cancel_event(second)
    assert incarnation() == 4
    imds.end_event(first)
    assert incarnation() == 5
    assert get_events(client)["Events"] == []


# Lifecycle


def test_approval_starts_the_event_and_is_recorded(imds: FakeIMDS, client: httpx.Client) -> None:
    event_id = imds.schedule("Reboot", ["web-1", "web-2"])

    response = approve(client, event_id)

    assert response.status_code == 200
    [event] = get_events(client)["Events"]
    assert event["EventStatus"] == "Started"
    assert event["NotBefore"] == ""
    assert event["Resources"] == ["web-1", "web-2"]
    assert imds.snapshot()["approvals"] == [event_id]


def test_repeated_and_unknown_approvals(imds: FakeIMDS, client: httpx.Client) -> None:
    event_id = imds.schedule("Reboot", ["web-1"])

    assert approve(client, event_id).status_code == 200
    assert approve(client, event_id, "DEADBEEF-0000-0000-0000-000000000000").status_code == 200

    assert imds.snapshot()["approvals"] == [event_id, event_id]


def test_approval_without_start_on_approval_keeps_the_event_scheduled(
    imds: FakeIMDS, client: httpx.Client
) -> None:
    event_id = imds.schedule("Freeze", ["web-1", "web-2"], start_on_approval=False)

    assert approve(client, event_id).status_code == 200

    [event] = get_events(client)["Events"]
    assert event["EventStatus"] == "Scheduled"
    assert event["NotBefore"] != ""
    assert imds.snapshot()["approvals"] == [event_id]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[]",
        b"{}",
        b'{"StartRequests": "x"}',
        b'{"StartRequests": [{"Id": "x"}]}',
        b'{"StartRequests": [{"EventId": 5}]}',
        b'{"StartRequests": ["x"]}',
    ],
)
def test_approval_body_of_another_shape_is_400(
    imds: FakeIMDS, client: httpx.Client, body: bytes
) -> None:
    imds.schedule("Reboot", ["web-1"])

    response = client.post(EVENTS, params=V, headers=MD, content=body)

    assert response.status_code == 400
    assert response.json()["error"]
    assert get_events(client)["Events"][0]["EventStatus"] == "Scheduled"


def test_event_starts_when_not_before_passes(
    imds: FakeIMDS, client: httpx.Client, clock: FakeClock
) -> None:
    imds.schedule("Redeploy", ["web-1"], not_before_in=600)

    clock.advance(599.9)
    before = get_events(client)
    clock.advance(0.1)
    after = get_events(client)

    assert before["Events"][0]["EventStatus"] == "Scheduled"
    assert after["Events"][0]["EventStatus"] == "Started"
    assert after["Events"][0]["NotBefore"] == ""
    assert after["DocumentIncarnation"] == before["DocumentIncarnation"] + 1
    assert get_events(client)["DocumentIncarnation"] == after["DocumentIncarnation"]


def test_end_after_removes_a_started_event(
    imds: FakeIMDS, client: httpx.Client, clock: FakeClock
) -> None:
    imds.schedule("Reboot", ["web-1"], status="Started", end_after=600)

    clock.advance(599)
    assert get_events(client)["Events"][0]["EventStatus"] == "Started"
    clock.advance(1)
    assert get_events(client) == {"DocumentIncarnation": 2, "Events": []}


def test_end_after_counts_from_not_before_even_if_nobody_looked(
    imds: FakeIMDS, client: httpx.Client, clock: FakeClock
) -> None:
    imds.schedule("Reboot", ["web-1"], not_before_in=60, end_after=30)

    clock.advance(90)

    # Started and gone since the last look: one change of the document.
    assert get_events(client) == {"DocumentIncarnation": 2, "Events": []}


def test_end_after_counts_from_not_before(
    imds: FakeIMDS, client: httpx.Client, clock: FakeClock
) -> None:
    imds.schedule("Reboot", ["web-1"], not_before_in=60, end_after=30)

    clock.advance(89)
    assert get_events(client)["Events"][0]["EventStatus"] == "Started"
    clock.advance(1)
    assert get_events(client) == {"DocumentIncarnation": 3, "Events": []}


def test_end_after_counts_from_approval(
    imds: FakeIMDS, client: httpx.Client, clock: FakeClock
) -> None:
    event_id = imds.schedule("Reboot", ["web-1"], end_after=10)
    clock.advance(100)
    approve(client, event_id)

    clock.advance(9)
    assert len(get_events(client)["Events"]) == 1
    clock.advance(1)
    assert get_events(client)["Events"] == []


def test_no_notice_event_appears_started(imds: FakeIMDS, client: httpx.Client) -> None:
    imds.schedule("Reboot", ["web-1"], status="Started")

    [event] = get_events(client)["Events"]

    assert (event["EventStatus"], event["NotBefore"]) == ("Started", "")


def test_cancel_removes_a_scheduled_event_only(imds: FakeIMDS, client: httpx.Client) -> None:
    cancelled = imds.schedule("Reboot", ["web-1"])
    started = imds.schedule("Freeze", ["web-1"], status="Started")

    imds.cancel_event(cancelled)
    with pytest.raises(ValueError, match="started"):
        imds.cancel_event(started)

    assert [event["EventId"] for event in get_events(client)["Events"]] == [started]


def test_end_removes_any_event(imds: FakeIMDS, client: httpx.Client) -> None:
    scheduled = imds.schedule("Reboot", ["web-1"])
    started = imds.schedule("Freeze", ["web-1"], status="Started")

    imds.end_event(scheduled)
    imds.end_event(started)

    assert get_events(client)["Events"] == []


@pytest.mark.parametrize("action", ["start_event", "end_event", "cancel_event"])
def test_unknown_event_id_raises(imds: FakeIMDS, action: str) -> None:
    with pytest.raises(UnknownEventError):
        getattr(imds, action)("NO-SUCH-EVENT")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event_type": "Nap"},
        {"resources": []},
        {"source": "Someone"},
        {"status": "Completed"},
        {"duration": -2},
        {"end_after": -1.0},
        {"not_before_in": float("nan")},
    ],
)
def test_schedule_rejects_what_azure_never_sends(imds: FakeIMDS, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"event_type": "Reboot", "resources": ["web-1"], **kwargs}

    with pytest.raises(ValueError):
        imds.schedule(args.pop("event_type"), args.pop("resources"), **args)
    assert imds.snapshot()["Events"] == []


# Faults


def test_fault_500_hits_the_next_count_requests(imds: FakeIMDS, client: httpx.Client) -> None:
    imds.inject("500", count=2)

    statuses = [client.get(EVENTS, params=V, headers=MD).status_code for _ in range(3)]

    assert statuses == [500, 500, 200]


def test_fault_429(imds: FakeIMDS, client: httpx.Client) -> None:
    imds.inject("429")

    first = client.get(EVENTS, params=V, headers=MD)

    assert first.status_code == 429
    assert client.get(EVENTS, params=V, headers=MD).status_code == 200


def test_fault_slow_answers_after_the_delay(imds: FakeIMDS, client: httpx.Client) -> None:
    imds.schedule("Reboot", ["web-1"])
    imds.inject("slow", delay=0.2)

    began = time.monotonic()
    document = get_events(client)

    assert time.monotonic() - began >= 0.2
    assert len(document["Events"]) == 1


def test_fault_slow_times_out_a_short_client(imds: FakeIMDS) -> None:
    imds.inject("slow", delay=0.5)

    with (
        httpx.Client(base_url=imds.url, trust_env=False, timeout=0.05) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.get(EVENTS, params=V, headers=MD)


def test_fault_malformed_is_invalid_json(imds: FakeIMDS, client: httpx.Client) -> None:
    imds.inject("malformed")

    response = client.get(EVENTS, params=V, headers=MD)

    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_fault_schema_is_valid_json_off_schema(imds: FakeIMDS, client: httpx.Client) -> None:
    imds.schedule("Reboot", ["web-1"])
    imds.inject("schema")

    document = client.get(EVENTS, params=V, headers=MD).json()

    assert not isinstance(document["Events"], list)
    assert "EventId" not in document["Events"]


def test_fault_drop_closes_without_an_answer(imds: FakeIMDS, client: httpx.Client) -> None:
    imds.inject("drop")

    with pytest.raises(httpx.RemoteProtocolError):
        client.get(EVENTS, params=V, headers=MD)
    assert client.get(EVENTS, params=V, headers=MD).status_code == 200


def test_faults_come_first_in_first_out(imds: FakeIMDS, client: httpx.Client) -> None:
    imds.inject("500")
    imds.inject("429", count=2)

    statuses = [client.get(EVENTS, params=V, headers=MD).status_code for _ in range(4)]

    assert statuses == [500, 429, 429, 200]


def test_faults_spare_compute_approvals_and_bad_requests(
    imds: FakeIMDS, client: httpx.Client
) -> None:
    event_id = imds.schedule("Reboot", ["web-1"])
    imds.inject("500")

    assert client.get(COMPUTE, params={"api-version": "2021-02-01"}, headers=MD).status_code == 200
    assert approve(client, event_id).status_code == 200
    assert client.get(EVENTS, params=V).status_code == 400  # no header
    assert client.get(EVENTS, params=V, headers=MD).status_code == 500


def test_inject_rejects_an_unknown_kind(imds: FakeIMDS) -> None:
    with pytest.raises(ValueError, match="kind"):
        imds.inject("timeout")


# Rate limit


def test_more_than_rate_limit_requests_in_a_second_get_429(clock: FakeClock) -> None:
    with (
        FakeIMDS(clock=clock, rate_limit=5) as imds,
        httpx.Client(base_url=imds.url, trust_env=False, timeout=5.0) as http,
    ):
        compute = http.get(COMPUTE, params={"api-version": "2021-02-01"}, headers=MD)
        statuses = [http.get(EVENTS, params=V, headers=MD).status_code for _ in range(5)]
        control = [http.get("/fake/state").status_code for _ in range(10)]
        clock.advance(0.999)
        still_limited = http.get(EVENTS, params=V, headers=MD)
        clock.advance(1.0)
        after = http.get(EVENTS, params=V, headers=MD)

    assert compute.status_code == 200
    assert statuses == [200, 200, 200, 200, 429]
    assert control == [200] * 10
    assert still_limited.status_code == 429
    assert after.status_code == 200


def test_no_rate_limit_when_off(client: httpx.Client) -> None:
    statuses = {client.get(EVENTS, params=V, headers=MD).status_code for _ in range(20)}

    assert statuses == {200}


# Compute


def test_compute_answers_strings_with_dotted_fields_nested(
    imds: FakeIMDS, client: httpx.Client
) -> None:
    response = client.get(COMPUTE, params={"api-version": "2021-02-01"}, headers=MD)

    assert response.status_code == 200
    compute = response.json()
    assert compute["name"] == "web-1"
    assert compute["vmScaleSetName"] == ""
    assert compute["osProfile"] == {"computerName": "web-1"}
    flat = [value for value in compute.values() if not isinstance(value, dict)]
    assert flat
    assert all(isinstance(value, str) for value in flat)


def test_set_compute_and_a_custom_compute(clock: FakeClock) -> None:
    with (
        FakeIMDS(clock=clock, compute={"name": "vmss_3", "vmScaleSetName": "vmss"}) as imds,
        httpx.Client(base_url=imds.url, trust_env=False, timeout=5.0) as http,
    ):
        imds.set_compute(zone="2")
        compute = http.get(COMPUTE, params={"api-version": "2021-02-01"}, headers=MD).json()

    assert compute == {"name": "vmss_3", "vmScaleSetName": "vmss", "zone": "2"}


def test_compute_rejects_non_strings(imds: FakeIMDS) -> None:
    with pytest.raises(ValueError):
        imds.set_compute(platformFaultDomain=1)  # type: ignore[arg-type]


# Control API


def test_control_api_scripts_a_maintenance(
    imds: FakeIMDS, client: httpx.Client, clock: FakeClock
) -> None:
    created = client.post(
        "/fake/events",
        json={"type": "Reboot", "resources": ["web-1"], "not_before_in": 60, "duration": 30},
    )
    assert created.status_code == 200
    event_id = created.json()["EventId"]
    [event] = get_events(client)["Events"]
    assert (event["EventId"], event["DurationInSeconds"]) == (event_id, 30)

    started = client.post(f"/fake/events/{event_id}/start")
    assert started.json()["Events"][0]["EventStatus"] == "Started"

    ended = client.post(f"/fake/events/{event_id}/end")
    assert ended.json()["Events"] == []

    other = client.post("/fake/events", json={"type": "Freeze", "resources": ["web-1"]})
    cancelled = client.post(f"/fake/events/{other.json()['EventId']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["DocumentIncarnation"] == 5


def test_control_api_state_faults_compute_and_reset(imds: FakeIMDS, client: httpx.Client) -> None:
    event_id = imds.schedule("Reboot", ["web-1"])
    approve(client, event_id)

    faults = client.post("/fake/faults", json={"kind": "500", "count": 1})
    failed = client.get(EVENTS, params=V, headers=MD)
    compute = client.post("/fake/compute", json={"name": "web-7"})
    state = client.get("/fake/state").json()
    reset = client.post("/fake/reset").json()

    assert faults.status_code == 200
    assert failed.status_code == 500
    assert compute.status_code == 200
    assert imds.snapshot()["requests"] == 0  # after the reset
    assert state["approvals"] == [event_id]
    assert state["requests"] == 2
    assert state["Events"][0]["EventStatus"] == "Started"
    assert reset == {
        "DocumentIncarnation": 0,
        "Events": [],
        "approvals": [],
        "requests": 0,
        "quirks": [],
    }
    names = client.get(COMPUTE, params={"api-version": "2021-02-01"}, headers=MD).json()["name"]
    assert names == "web-1"


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/fake/events", {"resources": ["web-1"]}, "type is required"),
        ("/fake/events", {"type": "Reboot"}, "resources is required"),
        ("/fake/events", {"type": "Nap", "resources": ["web-1"]}, "type must be"),
        ("/fake/events", {"type": "Reboot", "resources": "web-1"}, "resources must be"),
        ("/fake/events", {"type": "Reboot", "resources": ["a"], "when": 1}, "unknown keys: when"),
        ("/fake/events", {"type": "Reboot", "resources": ["a"], "duration": 1.5}, "duration"),
        ("/fake/events", {"type": "Reboot", "resources": ["a"], "end_after": "1"}, "end_after"),
        ("/fake/events", [], "JSON object"),
        ("/fake/faults", {"kind": "boom"}, "kind must be"),
        ("/fake/faults", {"kind": "500", "count": 0}, "count"),
        ("/fake/faults", {"count": 1}, "kind"),
        ("/fake/compute", {"name": 1}, "strings"),
        ("/fake/compute", ["name"], "JSON object"),
        ("/fake/quirks", {"bogus": True}, "unknown quirks: bogus"),
        ("/fake/quirks", {"iso_not_before": 1}, "true or false"),
        ("/fake/quirks", ["iso_not_before"], "JSON object"),
    ],
)
def test_control_api_bad_input_is_400_naming_the_problem(
    imds: FakeIMDS, client: httpx.Client, path: str, body: object, expected: str
) -> None:
    response = client.post(path, json=body)

    assert response.status_code == 400
    assert expected in response.json()["error"]
    assert imds.snapshot()["Events"] == []


def test_control_api_body_that_is_not_json_is_400(client: httpx.Client) -> None:
    response = client.post("/fake/events", content=b"{type: Reboot")

    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]


@pytest.mark.parametrize("action", ["start", "end", "cancel"])
def test_control_api_unknown_event_is_404(client: httpx.Client, action: str) -> None:
    response = client.post(f"/fake/events/NO-SUCH-EVENT/{action}")

    assert response.status_code == 404
    assert "NO-SUCH-EVENT" in response.json()["error"]


def test_control_api_cancel_of_a_started_event_is_400(imds: FakeIMDS, client: httpx.Client) -> None:
    event_id = imds.schedule("Reboot", ["web-1"], status="Started")

    response = client.post(f"/fake/events/{event_id}/cancel")

    assert response.status_code == 400
    assert "started" in response.json()["error"]
    assert len(imds.snapshot()["Events"]) == 1


@pytest.mark.parametrize(("method", "path"), [("GET", "/fake/events"), ("POST", "/fake/nope")])
def test_control_api_unknown_endpoint_is_404(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path)

    assert response.status_code == 404
    assert response.json()["error"]


# Server


def test_snapshot_counts_metadata_requests_only(imds: FakeIMDS, client: httpx.Client) -> None:
    client.get(EVENTS, params=V, headers=MD)
    client.get(EVENTS, params=V)  # rejected, still a request
    client.get(COMPUTE, params={"api-version": "2021-02-01"}, headers=MD)
    client.get("/fake/state")

    assert imds.snapshot()["requests"] == 3


def test_concurrent_requests_are_all_answered(imds: FakeIMDS, client: httpx.Client) -> None:
    imds.schedule("Reboot", ["web-1"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        documents = list(pool.map(lambda _: get_events(client), range(40)))

    assert all(len(document["Events"]) == 1 for document in documents)
    assert imds.snapshot()["requests"] == 40


def test_requests_log_nothing(client: httpx.Client, capfd: pytest.CaptureFixture[str]) -> None:
    client.get(EVENTS, params=V, headers=MD)
    client.get(EVENTS, params=V)
    client.get("/nowhere")

    assert capfd.readouterr().err == ""


def test_stop_is_prompt_and_closes_the_port(clock: FakeClock) -> None:
    imds = FakeIMDS(clock=clock).start()
    url = imds.url
    imds.inject("slow", delay=30)
    slow = threading.Thread(
        target=lambda: httpx.get(f"{url}{EVENTS}", params=V, headers=MD, trust_env=False)
    )
    slow.start()
    while imds.snapshot()["requests"] == 0:  # until the slow request is in the server
        slow.join(timeout=0.01)

    began = time.monotonic()
    imds.stop()
    slow.join(timeout=5)

    assert time.monotonic() - began < 2
    assert not slow.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}{EVENTS}", params=V, headers=MD, trust_env=False)
    with pytest.raises(RuntimeError):
        _ = imds.url


def test_serve_forever_returns_on_stop(clock: FakeClock) -> None:
    imds = FakeIMDS(clock=clock).start()
    server = threading.Thread(target=imds.serve_forever)
    server.start()

    answer = httpx.get(f"{imds.url}{EVENTS}", params=V, headers=MD, trust_env=False)
    imds.stop()
    server.join(timeout=5)

    assert answer.status_code == 200
    assert not server.is_alive()


# -- quirks: what real implementations send beyond the documentation ------------------------------


def test_quirks_are_off_by_default_and_unknown_ones_rejected(clock: FakeClock) -> None:
    assert FakeIMDS(clock=clock).quirks == frozenset()
    with pytest.raises(ValueError, match="unknown quirks: bogus"):
        FakeIMDS(clock=clock, quirks={"bogus"})
    assert FakeIMDS(clock=clock, quirks=QUIRKS).quirks == frozenset(QUIRKS)


def test_iso_not_before(imds: FakeIMDS, client: httpx.Client, clock: FakeClock) -> None:
    imds.set_quirks(iso_not_before=True)
    imds.schedule("Reboot", ["web-1"], not_before_in=600)
    text = get_events(client)["Events"][0]["NotBefore"]
    assert text == "2026-04-11T22:16:58Z"
    assert datetime.fromisoformat(text).timestamp() == clock.now + 600
    imds.set_quirks(iso_not_before=False)
    assert get_events(client)["Events"][0]["NotBefore"] == "Sat, 11 Apr 2026 22:16:58 GMT"


def test_reissued_ids_on_every_change_of_status(
    imds: FakeIMDS, client: httpx.Client, clock: FakeClock
) -> None:
    imds.set_quirks(reissue_ids=True)
    first = imds.schedule("Reboot", ["web-1"], not_before_in=600, start_on_approval=True)
    second = imds.schedule("Freeze", ["web-1"], not_before_in=60)
    assert [e["EventId"] for e in get_events(client)["Events"]] == [first, second]

    assert approve(client, first).status_code == 200  # Scheduled X -> Started Y
    clock.advance(60)  # NotBefore passed: Scheduled -> Started under a new id too
    started = {e["EventType"]: e for e in get_events(client)["Events"]}
    assert started["Reboot"]["EventStatus"] == started["Freeze"]["EventStatus"] == "Started"
    assert started["Reboot"]["EventId"] not in (first, second)
    assert started["Freeze"]["EventId"] not in (first, second)

    imds.end_event(first)  # by the id schedule returned...
    imds.end_event(started["Freeze"]["EventId"])  # ...or by the one listed now
    assert get_events(client)["Events"] == []


def test_reissued_id_on_start_event(imds: FakeIMDS, client: httpx.Client) -> None:
    imds.set_quirks(reissue_ids=True)
    event_id = imds.schedule("Redeploy", ["web-1"])
    imds.start_event(event_id)
    (event,) = get_events(client)["Events"]
    assert event["EventStatus"] == "Started" and event["EventId"] != event_id


def test_unknown_values_only_with_the_quirk(
    imds: FakeIMDS, client: httpx.Client, clock: FakeClock
) -> None:
    with pytest.raises(ValueError, match="type must be"):
        imds.schedule("HotPatch", ["web-1"])
    with pytest.raises(ValueError, match="status must be"):
        imds.schedule("Reboot", ["web-1"], status="InProgress")
    imds.set_quirks(unknown_values=True)
    odd_type = imds.schedule("HotPatch", ["web-1"], not_before_in=60)
    odd_status = imds.schedule("Reboot", ["web-1"], status="InProgress", not_before_in=60)
    clock.advance(120)  # an unknown status does not advance by itself
    events = {e["EventId"]: e for e in get_events(client)["Events"]}
    assert events[odd_type]["EventType"] == "HotPatch"
    assert events[odd_type]["EventStatus"] == "Started"
    assert events[odd_status]["EventStatus"] == "InProgress"
    assert events[odd_status]["NotBefore"] != ""
    imds.start_event(odd_status)
    assert get_events(client)["Events"][1]["EventStatus"] == "Started"


def test_extra_fields(imds: FakeIMDS, client: httpx.Client) -> None:
    imds.set_quirks(extra_fields=True)
    imds.schedule("Reboot", ["web-1"])
    document = get_events(client)
    assert set(document) > {"DocumentIncarnation", "Events"}
    assert set(document["Events"][0]) > EVENT_KEYS


def test_malformed_neighbour_is_listed_without_changing_the_incarnation(
    imds: FakeIMDS, client: httpx.Client
) -> None:
    imds.schedule("Reboot", ["web-1"])
    before = get_events(client)
    imds.set_quirks(malformed_neighbour=True)
    after = get_events(client)
    assert after["DocumentIncarnation"] == before["DocumentIncarnation"]
    neighbour, mine = after["Events"]
    assert neighbour["Resources"] == NEIGHBOUR  # a string, not a list
    assert mine == before["Events"][0]


def test_reenabled_answers_empty_with_the_incarnation_reset(
    imds: FakeIMDS, client: httpx.Client
) -> None:
    for _ in range(3):
        imds.schedule("Reboot", ["web-1"])
    assert get_events(client)["DocumentIncarnation"] == 3
    imds.inject("500")
    imds.inject("reenabled", count=2)
    assert client.get(EVENTS, params=V, headers=MD).status_code == 500
    assert get_events(client) == {"DocumentIncarnation": 1, "Events": []}
    assert get_events(client) == {"DocumentIncarnation": 1, "Events": []}
    again = get_events(client)
    assert again["DocumentIncarnation"] == 2 and len(again["Events"]) == 3


def test_control_api_switches_quirks_and_reset_restores_the_constructors(
    clock: FakeClock,
) -> None:
    with (
        FakeIMDS(clock=clock, rate_limit=None, quirks={"reissue_ids"}) as imds,
        httpx.Client(base_url=imds.url, trust_env=False, timeout=5.0) as http,
    ):
        state = http.post("/fake/quirks", json={"iso_not_before": True, "reissue_ids": False})
        assert state.status_code == 200 and state.json()["quirks"] == ["iso_not_before"]
        assert http.post("/fake/reset").json()["quirks"] == ["reissue_ids"]
