"""The Azure source against the fake metadata service over real HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from drainer.config import SourceConfig
from drainer.errors import PayloadError, SourceError
from drainer.fake_imds import FakeIMDS
from drainer.model import EventStatus, EventType
from drainer.sources.azure import AzureSource, names_from_compute, parse_events


@pytest.fixture
def fake() -> Iterator[FakeIMDS]:
    with FakeIMDS(rate_limit=None) as server:
        yield server


def source_for(fake: FakeIMDS, **options: object) -> AzureSource:
    return AzureSource(SourceConfig(endpoint=fake.url, timeout=1.0), **options)  # type: ignore[arg-type]


def test_events_are_translated(fake: FakeIMDS) -> None:
    eid = fake.schedule("Reboot", ["web-1", "web-2"], not_before_in=600, duration=30)
    (event,) = source_for(fake).events()
    assert event.event_id == eid
    assert event.event_type is EventType.REBOOT and event.status is EventStatus.SCHEDULED
    assert event.resources == ("web-1", "web-2") and event.duration == 30
    assert event.not_before is not None


def test_started_event_has_no_not_before(fake: FakeIMDS) -> None:
    fake.schedule("Reboot", ["web-1"], status="Started")
    (event,) = source_for(fake).events()
    assert event.status is EventStatus.STARTED and event.not_before is None


def test_no_events_is_an_empty_tuple(fake: FakeIMDS) -> None:
    assert source_for(fake).events() == ()


@pytest.mark.parametrize("kind", ["500", "429", "drop"])
def test_transient_failures_are_retried(fake: FakeIMDS, kind: str) -> None:
    fake.schedule("Freeze", ["web-1"])
    fake.inject(kind, count=2)
    assert len(source_for(fake).events()) == 1


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
    assert source_for(fake).events() == ()


def test_redirects_are_not_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Metadata"] == "true"
        return httpx.Response(307, headers={"Location": "http://example.invalid/"})

    source = AzureSource(SourceConfig(), transport=httpx.MockTransport(handler))
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
        ({"Events": []}, "DocumentIncarnation"),
        ({"DocumentIncarnation": 1}, "Events: missing"),
        ({"DocumentIncarnation": 1, "Events": [{"EventType": "Reboot"}]}, "EventStatus: missing"),
        (
            {
                "DocumentIncarnation": 1,
                "Events": [
                    {
                        "EventId": "x",
                        "EventType": "Nap",
                        "EventStatus": "Scheduled",
                        "Resources": [],
                        "NotBefore": "",
                    }
                ],
            },
            "unknown EventType",
        ),
        (
            {
                "DocumentIncarnation": 1,
                "Events": [
                    {
                        "EventId": "x",
                        "EventType": "Reboot",
                        "EventStatus": "Scheduled",
                        "Resources": ["a"],
                        "NotBefore": "tomorrow",
                    }
                ],
            },
            "NotBefore: not an RFC 1123 time",
        ),
    ],
)
def test_parse_names_what_is_off_schema(doc: object, complaint: str) -> None:
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
    assert parse_events(doc)[0].not_before == parse_events(wrong)[0].not_before == 1474309787.0


def test_an_absurd_year_is_a_payload_error_not_a_crash() -> None:
    doc = {
        "DocumentIncarnation": 1,
        "Events": [
            {
                "EventId": "x",
                "EventType": "Reboot",
                "EventStatus": "Scheduled",
                "Resources": ["a"],
                "NotBefore": "Mon, 11 Apr 2026 22:26:58 99999999999999999999",
            }
        ],
    }
    with pytest.raises(PayloadError, match="NotBefore"):
        parse_events(doc)
