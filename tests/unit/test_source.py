"""The Azure source against the fake metadata service over real HTTP."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import httpx
import pytest

from drainer.errors import PayloadError, SourceError
from drainer.model import EventStatus, EventType
from drainer.sources.azure import AzureConfig, AzureSource, names_from_compute, parse_events
from drainer.testing.fake_imds import FakeIMDS


@pytest.fixture
def fake() -> Iterator[FakeIMDS]:
    with FakeIMDS(rate_limit=None) as server:
        yield server


def source_for(fake: FakeIMDS, **options: object) -> AzureSource:
    return AzureSource(AzureConfig(endpoint=fake.url, timeout=1.0), **options)  # type: ignore[arg-type]


def test_events_are_translated(fake: FakeIMDS) -> None:
    eid = fake.schedule("Reboot", ["web-1", "web-2"], not_before_in=600, duration=30)
    (event,) = source_for(fake).events().events
    assert event.event_id == eid
    assert event.event_type is EventType.REBOOT and event.status is EventStatus.SCHEDULED
    assert event.resources == ("web-1", "web-2") and event.duration == 30
    assert event.not_before is not None


def test_started_event_has_no_not_before(fake: FakeIMDS) -> None:
    fake.schedule("Reboot", ["web-1"], status="Started")
    (event,) = source_for(fake).events().events
    assert event.status is EventStatus.STARTED and event.not_before is None


def test_no_events_is_an_empty_tuple(fake: FakeIMDS) -> None:
    assert source_for(fake).events().events == ()


@pytest.mark.parametrize("kind", ["500", "429", "drop"])
def test_transient_failures_are_retried(fake: FakeIMDS, kind: str) -> None:
    fake.schedule("Freeze", ["web-1"])
    fake.inject(kind, count=2)
    assert len(source_for(fake).events().events) == 1


def test_persistent_failure_is_a_source_error(fake: FakeIMDS) -> None:
    fake.inject("500", count=10)
    with pytest.raises(SourceError, match="HTTP 500"):
        source_for(fake, attempts=2).events()


@pytest.mark.parametrize("kind", ["malformed", "schema"])
def test_off_schema_answers_are_payload_errors(fake: FakeIMDS, kind: str) -> None:
    fake.schedule("Reboot", ["web-1"])
    fake.inject(kind)
    with pytest.raises(PayloadError):
        source_for(fake).events()


def test_slow_answer_times_out(fake: FakeIMDS) -> None:
    fake.inject("slow", count=5, delay=3.0)
    with pytest.raises(SourceError):
        source_for(fake, attempts=1).events()


def test_proxy_variables_are_ignored(fake: FakeIMDS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    assert source_for(fake).events().events == ()


def test_redirects_are_not_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Metadata"] == "true"
        return httpx.Response(307, headers={"Location": "http://example.invalid/"})

    source = AzureSource(AzureConfig(), transport=httpx.MockTransport(handler))
    with pytest.raises(SourceError, match="HTTP 307"):
        source.events()


def test_approval_is_posted_and_starts_the_event(fake: FakeIMDS) -> None:
    eid = fake.schedule("Reboot", ["web-1"], not_before_in=900)
    source_for(fake).approve(eid)
    snap = fake.snapshot()
    assert snap["approvals"] == [eid]
    assert snap["Events"][0]["EventStatus"] == "Started"


def test_node_names_from_compute(fake: FakeIMDS) -> None:
    fake.set_compute(name="web-7")
    assert source_for(fake).node_names() == frozenset({"web-7"})


def test_scale_set_instance_name() -> None:
    doc = {
        "name": "app_3",
        "vmScaleSetName": "app",
        "resourceId": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/"
        "virtualMachineScaleSets/app/virtualMachines/3",
    }
    assert names_from_compute(doc) == frozenset({"app_3"})
    flex = {**doc, "name": "app_a1b2c3"}
    assert names_from_compute(flex) == frozenset({"app_a1b2c3", "app_3"})


def test_shutdown_cuts_the_retries_short(fake: FakeIMDS) -> None:
    fake.inject("500", count=10)
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(SourceError):
        source_for(fake, stopping=stopping, attempts=50).events()
    assert fake.snapshot()["requests"] <= 2


@pytest.mark.parametrize(
    ("doc", "complaint"),
    [
        ([], "not a JSON object"),
        ("Events", "not a JSON object"),
        ({"DocumentIncarnation": 1}, "Events: missing"),
        ({"DocumentIncarnation": 1, "Events": {"EventId": "x"}}, "Events: missing or not a list"),
    ],
)
def test_a_document_that_is_no_events_document_is_a_payload_error(
    doc: object, complaint: str
) -> None:
    with pytest.raises(PayloadError, match=complaint):
        parse_events(doc)


def test_wrong_weekday_is_accepted() -> None:
    doc = {
        "DocumentIncarnation": 1,
        "Events": [
            {
                "EventId": "x",
                "EventType": "Reboot",
                "EventStatus": "Scheduled",
                "Resources": ["a"],
                "NotBefore": "Mon, 19 Sep 2016 18:29:47 GMT",
            }
        ],
    }  # 19 Sep 2016 was a Monday
    wrong = {**doc, "Events": [{**doc["Events"][0], "NotBefore": "Fri, 19 Sep 2016 18:29:47 GMT"}]}  # type: ignore[index, dict-item]
    assert (
        parse_events(doc).events[0].not_before
        == parse_events(wrong).events[0].not_before
        == 1474309787.0
    )


# -- each event on its own: read liberally, never drop one that may be this VM's ----------------


def reboot(**fields: object) -> dict[str, object]:
    """A well-formed event for web-1, with ``fields`` changed (None removes a field)."""
    item: dict[str, object] = {
        "EventId": "E1",
        "EventType": "Reboot",
        "ResourceType": "VirtualMachine",
        "Resources": ["web-1"],
        "EventStatus": "Scheduled",
        "NotBefore": "Mon, 30 Nov 2026 00:13:25 GMT",
        "Description": "",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
    }
    item.update(fields)
    return {k: v for k, v in item.items() if v is not None}


def doc(*items: object, incarnation: object = 7) -> dict[str, object]:
    return {"DocumentIncarnation": incarnation, "Events": list(items)}


AT = 1795997605.0  # Mon, 30 Nov 2026 00:13:25 GMT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mon, 30 Nov 2026 00:13:25 GMT", AT),
        ("2026-11-30T00:13:25Z", AT),  # Microsoft's mock server
        ("2026-11-30T00:13:25.5Z", AT + 0.5),
        ("2026-11-30T00:13:25.1234567Z", AT + 0.123456),  # .NET's seven digits
        ("2026-11-30T01:13:25+01:00", AT),
        ("2026-11-29T19:13:25-05:00", AT),
        ("2026-11-30T00:13:25", AT),  # no offset: UTC, as everything IMDS says
        ("2026-11-30 00:13:25Z", AT),
    ],
)
def test_not_before_in_rfc_1123_or_iso_8601(text: str, expected: float) -> None:
    (event,) = parse_events(doc(reboot(NotBefore=text))).events
    assert event.not_before == pytest.approx(expected)
    assert event.problems == ()


def test_blank_not_before_is_none_without_a_complaint() -> None:
    (event,) = parse_events(doc(reboot(NotBefore="", EventStatus="Started"))).events
    assert event.not_before is None and event.problems == ()


@pytest.mark.parametrize(
    "value",
    ["tomorrow", "Mon, 11 Apr 2026 22:26:58 99999999999999999999", 1795997605, None, "2026-13-45"],
)
def test_unreadable_not_before_is_due_now_and_said(value: object) -> None:
    (event,) = parse_events(doc(reboot(NotBefore=value))).events
    assert event.event_id == "E1" and event.event_type is EventType.REBOOT
    assert event.not_before is None  # the core drains at once
    assert "NotBefore" in event.problems[0] and "due now" in event.problems[0]
    if value is not None:
        assert repr(value) in event.problems[0]


def test_unknown_fields_never_matter() -> None:
    listing = parse_events(
        {**doc(reboot(Extra={"nested": [1, 2]}, Priority=3)), "Version": "2.0", "Other": None}
    )
    (event,) = listing.events
    assert event.event_id == "E1" and event.problems == () and listing.incarnation == 7


def test_unknown_event_type_is_kept_under_its_name() -> None:
    (event,) = parse_events(doc(reboot(EventType="HotPatch"))).events
    assert event.event_type is EventType.UNKNOWN and event.type_name == "HotPatch"
    assert event.resources == ("web-1",)
    assert any("HotPatch" in p for p in event.problems)


@pytest.mark.parametrize("status", ["InProgress", "Pending", "", 3, None])
def test_unknown_status_is_kept_as_pending(status: object) -> None:
    (event,) = parse_events(doc(reboot(EventStatus=status))).events
    assert event.status is EventStatus.UNKNOWN and event.event_type is EventType.REBOOT
    assert event.problems


@pytest.mark.parametrize("status", ["Completed", "Canceled", "completed", "CANCELED"])
def test_completed_or_canceled_means_over(status: str) -> None:
    listing = parse_events(doc(reboot(EventStatus=status), reboot(EventId="E2")))
    assert [e.event_id for e in listing.events] == ["E2"] and listing.damaged == ()


def test_known_names_in_another_case_are_read() -> None:
    (event,) = parse_events(doc(reboot(EventType="reboot", EventStatus="STARTED"))).events
    assert event.event_type is EventType.REBOOT and event.status is EventStatus.STARTED


def test_odd_duration_is_unknown() -> None:
    (event,) = parse_events(doc(reboot(EventType="Freeze", DurationInSeconds="5"))).events
    assert event.duration == -1 and "DurationInSeconds" in event.problems[0]


@pytest.mark.parametrize(
    "neighbour",
    [
        "a string",
        ["a", "list"],
        7,
        {"EventId": "N1", "EventType": "Reboot", "Resources": "web-2", "EventStatus": "Scheduled"},
        {"EventId": "N1", "EventType": "Reboot", "EventStatus": "Scheduled"},
        {"EventId": "N1", "Resources": [{"name": "web-2"}], "NotBefore": 5},
    ],
)
def test_a_malformed_neighbour_does_not_hide_this_vms_event(neighbour: object) -> None:
    listing = parse_events(doc(neighbour, reboot()))
    (event,) = listing.events
    assert event.event_id == "E1" and event.not_before == AT
    (damaged,) = listing.damaged  # handed on: the core decides whether it is this VM's
    assert damaged.event.problems
    assert json.loads(damaged.text) == neighbour


def test_unreadable_resources_keep_the_names_that_could_be_read() -> None:
    listing = parse_events(doc(reboot(EventId="X", Resources=["web-1", None])))
    assert listing.events == ()
    (damaged,) = listing.damaged
    assert damaged.event.event_id == "X" and damaged.event.resources == ("web-1",)


def test_an_event_without_an_id_is_known_by_its_place() -> None:
    listing = parse_events(doc(reboot(), reboot(EventId=None)))
    assert listing.events[0].event_id == "E1"
    assert listing.events[1].event_id.startswith("Events[1]#")
    # the same entry keeps its name, a status change too; another entry in its place does not
    again = parse_events(doc(reboot(), reboot(EventId=None, EventStatus="Started")))
    assert again.events[1].event_id == listing.events[1].event_id
    other = parse_events(doc(reboot(), reboot(EventId=None, EventType="Redeploy")))
    assert other.events[1].event_id != listing.events[1].event_id
    assert "EventId" in listing.events[1].problems[0]


@pytest.mark.parametrize("incarnation", [None, "7", True, 1.5])
def test_a_missing_or_odd_incarnation_is_not_reported(incarnation: object) -> None:
    listing = parse_events(doc(reboot(), incarnation=incarnation))
    assert listing.incarnation is None and len(listing.events) == 1


def test_the_incarnation_is_reported(fake: FakeIMDS) -> None:
    fake.schedule("Reboot", ["web-1"])
    assert source_for(fake).events().incarnation == fake.snapshot()["DocumentIncarnation"] == 1


def test_odd_events_are_warned_about_once_while_listed(
    fake: FakeIMDS, caplog: pytest.LogCaptureFixture
) -> None:
    fake.set_quirks(iso_not_before=True, unknown_values=True, malformed_neighbour=True)
    eid = fake.schedule("HotPatch", ["web-1"], not_before_in=600)
    source = source_for(fake)
    with caplog.at_level(logging.WARNING, logger="drainer"):
        for _ in range(3):
            listing = source.events()
    (event,) = listing.events
    assert event.event_id == eid and event.type_name == "HotPatch"
    assert event.not_before is not None  # ISO 8601 read
    assert len(listing.damaged) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one per odd event, not one per poll
    assert any(eid in line and "HotPatch" in line for line in lines)
    assert any("names this VM" in line for line in lines)
