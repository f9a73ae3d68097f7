"""The Google Cloud source: its parsing of every documented value and form, and the
source against the fake metadata server over real HTTP (hanging GETs included)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from drainer.config import parse_config
from drainer.errors import ConfigError, PayloadError, SourceError
from drainer.model import Approve, EventStatus, EventType
from drainer.sources.gcp import (
    MAINTENANCE,
    PREEMPTED,
    UPCOMING,
    Answer,
    GcpConfig,
    GcpSource,
    Seen,
    names_from,
    parse_maintenance_event,
    parse_preempted,
    parse_upcoming,
)
from drainer.testing import FakeClock, wait_until
from drainer.testing.fake_gcp import FakeGCP

NAMES = ("web-1",)
T0 = 1_800_000_000.0

# -- parsing ---------------------------------------------------------------------------------


def seen(text: str, status: int = 200, since: float = T0) -> Seen:
    return Seen(Answer(status, text), since)


@pytest.mark.parametrize("text", ["NONE", "NONE\n", "none"])
def test_maintenance_none_is_no_event(text: str) -> None:
    assert parse_maintenance_event(seen(text), NAMES, T0) is None


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("MIGRATE_ON_HOST_MAINTENANCE", EventType.FREEZE),
        ("TERMINATE_ON_HOST_MAINTENANCE", EventType.REBOOT),
    ],
)
def test_maintenance_values_start_60_s_after_the_change(value: str, kind: EventType) -> None:
    event = parse_maintenance_event(seen(value), NAMES, T0 + 59)
    assert event is not None
    assert event.event_type is kind and event.status is EventStatus.SCHEDULED
    assert event.not_before is None and event.resources == NAMES  # 60 s: due now
    assert value in event.event_id and value in event.description and not event.problems
    later = parse_maintenance_event(seen(value), NAMES, T0 + 60)
    assert later is not None and later.status is EventStatus.STARTED
    assert later.event_id == event.event_id  # the same event, however often it is read


def test_the_same_value_seen_later_is_another_event() -> None:
    first = parse_maintenance_event(seen("MIGRATE_ON_HOST_MAINTENANCE"), NAMES, T0)
    again = parse_maintenance_event(seen("MIGRATE_ON_HOST_MAINTENANCE", since=T0 + 86400), (), T0)
    assert first is not None and again is not None and first.event_id != again.event_id


@pytest.mark.parametrize(
    ("text", "status"),
    [("SHUTDOWN_ON_HOST_MAINTENANCE", 200), ("", 200), ("Not Found", 404), ("no", 403)],
)
def test_an_unreadable_maintenance_event_is_unknown_and_drained(text: str, status: int) -> None:
    event = parse_maintenance_event(seen(text, status), NAMES, T0)
    assert event is not None
    assert event.event_type is EventType.UNKNOWN and event.status is EventStatus.UNKNOWN
    assert event.event_id == f"{MAINTENANCE}:unreadable" and event.problems
    assert event.resources == NAMES


def test_preempted() -> None:
    assert parse_preempted(seen("FALSE"), NAMES, T0) is None
    event = parse_preempted(seen("TRUE"), NAMES, T0)
    assert event is not None
    assert event.event_type is EventType.PREEMPT and event.status is EventStatus.STARTED
    assert event.not_before == T0 + 30
    odd = parse_preempted(seen("MAYBE"), NAMES, T0)
    assert odd is not None and odd.event_type is EventType.UNKNOWN
    assert odd.event_id == f"{PREEMPTED}:unreadable"


WINDOW = {
    "can_reschedule": "true",
    "latest_window_start_time": "2024-12-01T19:00:01Z",
    "maintenance_reasons": ["PLANNED_UPDATE", "PLANNED_NETWORK_UPDATE"],
    "maintenance_status": "PENDING",
    "type": "SCHEDULED",
    "window_end_time": "2024-12-01T21:00:01Z",
    "window_start_time": "2024-12-01T19:00:01Z",
}


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, "{}"),
        Answer(200, "{ }"),
        Answer(200, "{ }\n"),
        Answer(200, "NONE"),
        Answer(200, '{ "error": "no notifications have been received yet, try again later" }'),
        Answer(404, "Not Found"),
        Answer(200, json.dumps({**WINDOW, "maintenance_status": "COMPLETE"})),
    ],
)
def test_every_form_of_nothing_scheduled_is_no_event(answer: Answer) -> None:
    assert parse_upcoming(answer, NAMES) is None


@pytest.mark.parametrize(
    ("state", "status"), [("PENDING", EventStatus.SCHEDULED), ("ONGOING", EventStatus.STARTED)]
)
def test_an_upcoming_window(state: str, status: EventStatus) -> None:
    event = parse_upcoming(Answer(200, json.dumps({**WINDOW, "maintenance_status": state})), NAMES)
    assert event is not None
    assert event.event_type is EventType.REBOOT and event.status is status
    assert event.not_before == 1733079601.0  # window_start_time
    assert event.event_id == f"{UPCOMING}:SCHEDULED@2024-12-01T19:00:01Z"
    assert "PLANNED_NETWORK_UPDATE" in event.description and not event.problems


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (Answer(200, json.dumps({**WINDOW, "maintenance_status": "PAUSED"})), "unknown"),
        (Answer(200, json.dumps({**WINDOW, "window_start_time": "soon"})), "not a time"),
        (Answer(200, '{"error": "permission denied"}'), "unknown"),
        (Answer(200, "[1, 2]"), "not a JSON object"),
        (Answer(200, "{broken"), "not a JSON object"),
        (Answer(403, "Forbidden"), "HTTP 403"),
    ],
)
def test_an_unreadable_window_is_never_nothing(answer: Answer, why: str) -> None:
    event = parse_upcoming(answer, NAMES)
    assert event is not None
    assert event.status in (EventStatus.UNKNOWN, EventStatus.SCHEDULED)
    assert event.status is EventStatus.UNKNOWN or event.not_before is None  # due now
    assert why in "; ".join(event.problems) or why in event.description


def test_names() -> None:
    assert names_from("web-1", "web-1.c.proj.internal") == {"web-1", "web-1.c.proj.internal"}
    assert names_from("vm", "host.example") == {"vm", "host.example", "host"}
    with pytest.raises(PayloadError):
        names_from("", "host")


def test_config_refuses_approvals() -> None:
    assert GcpConfig().approve is Approve.NEVER
    with pytest.raises(ValueError, match="cannot approve an event from the VM"):
        GcpConfig(approve=Approve.SOLE)
    base = {"health": {"tcp": {"port": 80}}, "load_balancers": [{"type": "mock"}]}
    config = parse_config({**base, "source": {"type": "gcp"}})
    assert isinstance(config.source, GcpConfig) and config.source.approve is Approve.NEVER
    with pytest.raises(ConfigError, match=r"source\.approve"):
        parse_config({**base, "source": {"type": "gcp", "approve": "sole"}})
    with pytest.raises(ConfigError, match=r"source\.watch_timeout"):
        parse_config({**base, "source": {"type": "gcp", "watch_timeout": "2h"}})


# -- against the fake ------------------------------------------------------------------------


@pytest.fixture
def gce() -> Iterator[FakeGCP]:
    with FakeGCP() as server:
        yield server


Make = Callable[..., GcpSource]


@pytest.fixture
def make(gce: FakeGCP) -> Iterator[Make]:
    made: list[GcpSource] = []

    def build(config: dict[str, Any] | None = None, attempts: int = 3) -> GcpSource:
        settings = {"endpoint": gce.url, "timeout": 1.0, "watch_timeout": 5.0, **(config or {})}
        source = GcpSource(GcpConfig(**settings), attempts=attempts)
        made.append(source)
        return source

    yield build
    for source in made:
        source.close()


def test_the_fake_wants_the_header(gce: FakeGCP) -> None:
    url = f"{gce.url}/computeMetadata/v1/{MAINTENANCE}"
    assert httpx.get(url).status_code == 403
    reply = httpx.get(url, headers={"Metadata-Flavor": "Google"})
    assert reply.text == "NONE" and reply.headers["Metadata-Flavor"] == "Google"
    assert reply.headers["ETag"]


def test_no_notice_is_no_event(make: Make) -> None:
    source = make()
    assert source.events().events == ()
    assert source.node_names() == {"web-1", "web-1.c.drainer-demo.internal"}


def test_every_key_read_when_not_watching(gce: FakeGCP, make: Make) -> None:
    source = make()
    gce.set_maintenance("TERMINATE_ON_HOST_MAINTENANCE")
    gce.set_preempted("TRUE")
    gce.set_upcoming(start_in=86400)
    events = source.events().events
    assert {e.event_type for e in events} == {EventType.REBOOT, EventType.PREEMPT}
    assert {e.resources for e in events} == {("web-1", "web-1.c.drainer-demo.internal")}


def test_upcoming_read_at_its_own_pace(gce: FakeGCP, make: Make) -> None:
    slow, every_poll = make(), make(config={"upcoming_interval": 0})
    assert slow.events().events == () and every_poll.events().events == ()
    gce.set_upcoming(start_in=86400)
    assert slow.events().events == ()  # read again only after upcoming_interval
    (event,) = every_poll.events().events
    assert event.event_type is EventType.REBOOT and event.status is EventStatus.SCHEDULED
    gce.set_upcoming(start_in=-60, hours=1)  # under way: ONGOING
    assert every_poll.events().events[0].status is EventStatus.STARTED
    gce.set_upcoming(start_in=-7200, hours=1)  # over: COMPLETE
    assert every_poll.events().events == ()
    for form in ("none", "not_yet", "absent", "empty"):
        gce.clear_upcoming(form)
        assert every_poll.events().events == (), form


def test_a_failing_upcoming_read_hides_no_urgent_notice(gce: FakeGCP, make: Make) -> None:
    source = make(config={"upcoming_interval": 0})
    gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")
    gce.inject("503", count=10, key=UPCOMING)
    listing = source.events()
    (event,) = listing.events
    assert event.event_type is EventType.FREEZE
    assert listing.partial  # never read yet: a window it may hold is not known to be gone


def test_brief_503s_are_retried(gce: FakeGCP, make: Make) -> None:
    gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")
    gce.inject("503", count=2, key=MAINTENANCE)
    (event,) = make().events().events
    assert event.event_type is EventType.FREEZE


@pytest.mark.parametrize("kind", ["503", "drop"])
def test_a_lasting_failure_is_no_answer_never_no_event(gce: FakeGCP, make: Make, kind: str) -> None:
    gce.inject(kind, count=10, key=MAINTENANCE)
    with pytest.raises(SourceError):
        make(attempts=2).events()


def test_a_404_is_unknown_and_drained(gce: FakeGCP, make: Make) -> None:
    gce.inject("404", count=1, key=MAINTENANCE)
    (event,) = make().events().events
    assert event.event_type is EventType.UNKNOWN and "HTTP 404" in event.problems[0]


def test_a_slow_answer_times_out(gce: FakeGCP, make: Make) -> None:
    gce.inject("slow", count=5, delay=3.0, key=MAINTENANCE)
    with pytest.raises(SourceError, match="Timeout"):
        make(attempts=1, config={"timeout": 0.2}).events()


def test_approve_is_refused(make: Make) -> None:
    with pytest.raises(SourceError, match="cannot start a maintenance"):
        make().approve("anything")


def watched(source: GcpSource, gce: FakeGCP) -> threading.Event:
    """Start watching; returns the flag the watchers set, once both hang on the server."""
    changed = threading.Event()
    source.watch(changed.set)
    wait_until(lambda: gce.snapshot()["waiting"] == 2, what="both watchers hanging")
    changed.clear()
    return changed


def test_a_watched_change_wakes_the_caller_without_a_poll(gce: FakeGCP, make: Make) -> None:
    source = make()
    source.node_names()  # learned once
    changed = watched(source, gce)
    requests = gce.snapshot()["requests"]
    gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")
    assert changed.wait(5), "no wake-up"
    # the hanging GET answered: one request answered, one new one hanging, none polled
    wait_until(lambda: gce.snapshot()["waiting"] == 2, what="the watcher hanging again")
    assert gce.snapshot()["requests"] == requests + 1
    before = gce.snapshot()["requests"]
    (event,) = source.events().events
    assert event.event_type is EventType.FREEZE
    assert gce.snapshot()["requests"] == before + 1  # upcoming-maintenance only


def test_a_change_between_two_hanging_gets_is_not_missed(gce: FakeGCP, make: Make) -> None:
    source = make()
    # the watcher's next GET is slow: both changes happen before it reaches the server,
    # and the ETag it names makes the server answer at once with the newest value
    gce.inject("slow", count=1, delay=0.5, key=PREEMPTED)
    changed = watched_after_first(source, gce)
    gce.set_preempted("TRUE")
    assert changed.wait(5)
    wait_until(
        lambda: any(e.event_type is EventType.PREEMPT for e in source.events().events),
        what="the preemption seen",
    )


def watched_after_first(source: GcpSource, gce: FakeGCP) -> threading.Event:
    changed = threading.Event()
    source.watch(changed.set)
    wait_until(lambda: gce.snapshot()["waiting"] >= 1, what="a watcher hanging")
    changed.clear()
    return changed


def test_the_etag_protocol_of_the_fake(gce: FakeGCP) -> None:
    url = f"{gce.url}/computeMetadata/v1/{PREEMPTED}"
    headers = {"Metadata-Flavor": "Google"}
    first = httpx.get(url, headers=headers)
    gce.set_preempted("TRUE")  # changed since `first`: a GET naming its ETag answers at once
    params = {"wait_for_change": "true", "last_etag": first.headers["ETag"], "timeout_sec": "30"}
    second = httpx.get(url, headers=headers, params=params, timeout=5)
    assert second.text == "TRUE" and second.headers["ETag"] != first.headers["ETag"]
    # unchanged: answers only at timeout_sec, with the same value and ETag
    params = {"wait_for_change": "true", "last_etag": second.headers["ETag"], "timeout_sec": "1"}
    third = httpx.get(url, headers=headers, params=params, timeout=5)
    assert third.text == "TRUE" and third.headers["ETag"] == second.headers["ETag"]


def test_a_watcher_that_cannot_read_makes_events_fail(gce: FakeGCP, make: Make) -> None:
    source = make(attempts=1)
    changed = watched(source, gce)
    gce.inject("503", count=1000, key=MAINTENANCE)
    gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")  # the hanging GET answers; the next fails
    assert changed.wait(5)
    wait_until(lambda: _fails(source), what="events() failing")
    gce.reset()
    wait_until(lambda: not _fails(source), what="events() answering again")


def _fails(source: GcpSource) -> bool:
    try:
        source.events()
    except SourceError:
        return True
    return False


def test_close_ends_the_watchers(gce: FakeGCP, make: Make) -> None:
    source = make(config={"watch_timeout": 1})  # a hanging GET in flight ends by then
    watched(source, gce)
    source.close()
    threads = [t for t in threading.enumerate() if t.name.startswith("gcp-watch-")]
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)


def test_the_control_api(gce: FakeGCP) -> None:
    def post(path: str, body: object) -> httpx.Response:
        return httpx.post(f"{gce.url}/fake/{path}", json=body)

    assert post("maintenance", {"value": "TERMINATE_ON_HOST_MAINTENANCE"}).status_code == 200
    assert post("maintenance", {"value": "REBOOT"}).status_code == 400
    assert post("maintenance", {"value": "REBOOT", "odd": True}).status_code == 200
    assert post("preempted", {}).json()["values"][PREEMPTED] == "TRUE"
    state = post("upcoming", {"start_in": 60, "hours": 1, "reasons": ["PLANNED_UPDATE"]}).json()
    assert state["upcoming"]["maintenance_status"] == "PENDING"
    assert post("upcoming", {"form": "not_yet"}).json()["upcoming"]["error"]
    assert post("upcoming", {"form": "later"}).status_code == 400
    assert post("instance", {"name": "web-9"}).json()["values"]["instance/name"] == "web-9"
    assert post("faults", {"kind": "503", "count": 2}).status_code == 200
    assert post("faults", {"kind": "teapot"}).status_code == 400
    assert httpx.get(f"{gce.url}/fake/state").json()["values"][MAINTENANCE] == "REBOOT"
    assert post("reset", {}).json()["values"][MAINTENANCE] == "NONE"
    assert post("nothing", {}).status_code == 404


def test_a_failing_upcoming_read_is_logged_once(
    gce: FakeGCP, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    source = make(config={"upcoming_interval": 0}, attempts=1)
    gce.set_upcoming(start_in=86400)
    (known,) = source.events().events
    gce.inject("503", count=3, key=UPCOMING)
    with caplog.at_level(logging.INFO, logger="drainer"):
        for _ in range(3):
            assert source.events().events == (known,)  # what was known is kept
        source.events()
    assert caplog.text.count("keeping what was known") == 1
    assert caplog.text.count("can be read again") == 1


class _Impatient:
    """A metadata server that ignores ``wait_for_change``: every GET answers at once,
    with the same value and, per ``fresh_etag``, the same or a new ETag each time."""

    def __init__(self, *, fresh_etag: bool) -> None:
        self.fresh_etag = fresh_etag
        self.hanging = 0  # hanging GETs asked for
        self.many = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            if request.url.params.get("wait_for_change") == "true":
                self.hanging += 1
            if self.hanging >= 50:
                self.many.set()
            etag = f"e{self.hanging}" if self.fresh_etag else "e"
        value = "FALSE" if request.url.path.endswith("preempted") else "NONE"
        return httpx.Response(200, text=value, headers={"ETag": etag, "Metadata-Flavor": "Google"})


@pytest.mark.parametrize("fresh_etag", [False, True], ids=["same-etag", "new-etag"])
def test_a_server_that_does_not_hang_is_not_hammered(fresh_etag: bool) -> None:
    server = _Impatient(fresh_etag=fresh_etag)
    config = GcpConfig(endpoint="http://gce.test", poll_interval=60.0, watch_timeout=30.0)
    source = GcpSource(config, transport=httpx.MockTransport(server))
    try:
        source.watch(lambda: None)
        wait_until(lambda: server.hanging >= 2, what="both watchers asking")
        # a watcher whose hanging GET came back at once, unchanged, waits for the
        # loop's pace (60 s here) before the next: not 50 requests in a second
        assert not server.many.wait(1.0), f"{server.hanging} hanging GETs: a busy loop"
        assert source.events().events == ()
    finally:
        source.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_watcher_never_leaves_a_stale_no_event(gce: FakeGCP, make: Make) -> None:
    source = make()
    source.node_names()

    def broken() -> None:
        raise RuntimeError("a callback bug")

    source.watch(broken)  # the first read "changes" the value: the callback raises
    threads = [t for t in threading.enumerate() if t.name.startswith("gcp-watch-")]
    for thread in threads:
        thread.join(timeout=10)
    gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")
    # what a dead watcher saw last is no answer: the key is read again, not taken as NONE
    (event,) = source.events().events
    assert event.event_type is EventType.FREEZE


def test_an_upcoming_window_never_read_is_no_answer_not_nothing(gce: FakeGCP, make: Make) -> None:
    # after a restart, with no notice on the urgent keys: the window a node may be out
    # for cannot be told from none, so the poll fails (the caller keeps what it knew)
    source = make(config={"upcoming_interval": 0}, attempts=1)
    gce.set_upcoming(start_in=-60, hours=2)  # ONGOING
    gce.inject("503", count=2, key=UPCOMING)
    with pytest.raises(SourceError, match="upcoming-maintenance"):
        source.events()
    with pytest.raises(SourceError, match="upcoming-maintenance"):
        source.events()
    (event,) = source.events().events
    assert event.status is EventStatus.STARTED
    # once read, a failure keeps what was known (test_a_failing_upcoming_read_is_logged_once)


def test_a_slow_upcoming_read_does_not_make_the_listing_stale(gce: FakeGCP, make: Make) -> None:
    # upcoming-maintenance is read at every poll while a window is listed; a change the
    # watchers see while that read is slow is in the listing that read ends in
    source = make(config={"upcoming_interval": 0, "timeout": 5.0})
    gce.set_upcoming(start_in=86400)
    source.node_names()
    changed = watched(source, gce)
    gce.inject("slow", count=1, delay=3.0, key=UPCOMING)
    requests = gce.snapshot()["requests"]
    listed: list[Any] = []
    poll = threading.Thread(target=lambda: listed.append(source.events()))
    poll.start()
    wait_until(lambda: gce.snapshot()["requests"] > requests, what="the slow read under way")
    gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")
    assert changed.wait(5)
    poll.join(timeout=10)
    (listing,) = listed
    assert EventType.FREEZE in {e.event_type for e in listing.events}


def test_a_failing_upcoming_read_is_retried_at_its_pace_not_every_poll(gce: FakeGCP) -> None:
    # nothing scheduled was known: a read that fails (slowly, at worst) is tried again
    # after upcoming_interval, not at every poll, each of which it would slow down
    clock = FakeClock()
    config = GcpConfig(endpoint=gce.url, timeout=1.0, upcoming_interval=60.0)
    source = GcpSource(config, attempts=1, clock=clock)
    try:
        assert source.events().events == ()
        clock.advance(61)
        gce.inject("503", count=100, key=UPCOMING)
        assert source.events().events == ()
        requests = gce.snapshot()["requests"]
        assert source.events().events == ()
        assert gce.snapshot()["requests"] == requests + 2  # maintenance-event, preempted
        clock.advance(61)
        gce.reset()
        gce.set_upcoming(start_in=86400)
        (event,) = source.events().events
        assert event.status is EventStatus.SCHEDULED
    finally:
        source.close()


def test_a_key_that_cannot_be_read_hides_no_notice_on_the_other(gce: FakeGCP, make: Make) -> None:
    source = make(attempts=1)
    source.node_names()
    changed = watched(source, gce)
    gce.inject("503", count=10_000, key=PREEMPTED)
    gce.set_preempted("TRUE")  # the hanging GET answers; every later read fails
    wait_until(lambda: _fails(source), what="preempted unreadable")
    changed.clear()
    gce.set_maintenance("TERMINATE_ON_HOST_MAINTENANCE")
    assert changed.wait(5)

    def listed() -> set[EventType]:
        try:
            return {e.event_type for e in source.events().events}
        except SourceError:
            return set()

    wait_until(lambda: EventType.REBOOT in listed(), what="the notice listed")
    assert source.events().partial  # preempted unread: what it may hold is not gone
    gce.set_maintenance("NONE")  # nothing urgent left to list: no answer, not "no event"
    wait_until(lambda: _fails(source), what="events() failing again")


def test_watchers_ended_by_shutdown_are_no_error(
    gce: FakeGCP, caplog: pytest.LogCaptureFixture
) -> None:
    stopping = threading.Event()
    config = GcpConfig(endpoint=gce.url, timeout=1.0, watch_timeout=1)
    source = GcpSource(config, stopping=stopping)
    try:
        source.node_names()
        watched(source, gce)
        stopping.set()
        for thread in [t for t in threading.enumerate() if t.name.startswith("gcp-watch-")]:
            thread.join(timeout=10)
        with caplog.at_level(logging.ERROR, logger="drainer"):
            source.events()
        assert "ended" not in caplog.text
    finally:
        source.close()
