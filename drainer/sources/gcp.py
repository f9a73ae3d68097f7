"""Google Compute Engine's maintenance notices, read from its metadata server.

Every request carries ``Metadata-Flavor: Google`` and goes straight to the endpoint
(proxy variables ignored, redirects not followed). Three keys say what is coming:

- ``instance/maintenance-event``: ``NONE``, ``MIGRATE_ON_HOST_MAINTENANCE`` (a live
  migration: a ``Freeze``) or ``TERMINATE_ON_HOST_MAINTENANCE`` (the VM stops and
  restarts: a ``Reboot``). The value changes 60 s before the maintenance starts.
- ``instance/preempted``: ``TRUE`` once a Spot/preemptible VM is being stopped, 30 s
  before it is switched off (a ``Preempt``: removed).
- ``instance/upcoming-maintenance`` (some machine families only): a maintenance window
  days ahead, ``PENDING`` -> ``ONGOING`` -> ``COMPLETE`` (a ``Reboot``).

In ``drainer run`` (``watch``) the first two are watched by one thread each with the
metadata server's hanging GET (``wait_for_change``, ``last_etag``, a bounded
``timeout_sec``): a change is seen within milliseconds, and since each GET names the
ETag of the value already seen, a change between two GETs is never missed. ``events()``
then answers from what the watchers saw, without a request; ``upcoming-maintenance`` is
read every ``upcoming_interval`` (a minute; at every poll while a window is listed).
Without ``watch`` (the CLI) every key is read when asked.

Failures, by what is known afterwards:

- 429, 5xx and transport failures are retried within a read (the server answers 503 for
  under a second during a migration); when they last, the read fails with SourceError
  and the caller keeps what it knew: no answer is never "no event". A key that cannot
  be read hides no notice on another: those are listed; with none, the poll fails.
- An answer that can be had but not read (a value drainer does not know, another HTTP
  status, a broken JSON document) is an event of type and status ``Unknown``: the node
  is drained at once (rule ``events.Unknown``) and back once the key reads normally.
- ``upcoming-maintenance`` is absent on most machine types: ``{}``, ``NONE``, a 404 and
  the ``"no notifications have been received yet"`` error all mean nothing is scheduled.

Compute Engine has no way to start a maintenance from the VM (``gcloud compute
instances perform-maintenance`` is an API call with credentials): ``approve`` always
fails, and the configuration refuses any ``approve`` but ``never``, so the core drains
in time for the notice instead of waiting for an approval. The metadata server speaks
only of the VM that asks, so every event names this VM's names (``node_names``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import field_validator

from drainer._types import Duration, HttpUrl, PositiveDuration
from drainer.errors import PayloadError, SourceError
from drainer.model import EventStatus, EventType, Listing, MaintenanceEvent
from drainer.sources._metadata import MetadataHTTP, Unread
from drainer.sources._times import parse_time as _time
from drainer.sources.base import SourceConfig, SourcePlugin

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("drainer")

PREFIX = "/computeMetadata/v1/"
MAINTENANCE = "instance/maintenance-event"
PREEMPTED = "instance/preempted"
UPCOMING = "instance/upcoming-maintenance"
NAME_KEYS = ("instance/name", "instance/hostname")
HEADER = {"Metadata-Flavor": "Google"}
WARNING = 60.0  # seconds between maintenance-event's change and the maintenance
PREEMPT_NOTICE = 30.0  # seconds between preempted=TRUE and the power-off
_WATCHED = (MAINTENANCE, PREEMPTED)
_NOTHING_YET = "no notifications have been received yet"


class GcpConfig(SourceConfig):
    """The ``source:`` section for Google Cloud: where the metadata server is and how
    long one hanging GET may wait."""

    can_approve: ClassVar[bool] = False  # no approval from the VM: approve is never

    type: str = "gcp"
    endpoint: HttpUrl = "http://169.254.169.254"  # metadata.google.internal, without DNS
    # The server answers 503 for moments during a migration, right when a notice ends;
    # nothing documented lists "NONE" for minutes the way a re-enabled Azure IMDS lists
    # no events: a short doubt (Azure's is 2 min) puts a node back soon after.
    gone_after_doubt: Duration = 15.0
    watch_timeout: PositiveDuration = 30.0  # timeout_sec of each hanging GET
    # upcoming-maintenance gives days of notice: read this often while none is listed
    # (at every poll while one is)
    upcoming_interval: Duration = 60.0

    @field_validator("watch_timeout")
    @classmethod
    def _whole_seconds(cls, value: float) -> float:
        if value < 1 or value > 3600:
            raise ValueError("must be between 1s and 1h (the server's timeout_sec)")
        return value


@dataclass(frozen=True)
class Answer:
    """One key as the metadata server answered it: an HTTP status and the text."""

    status: int
    text: str
    etag: str = ""


@dataclass(frozen=True)
class Seen:
    """A key's value and when it was first seen (wall time): a value that stays is the
    same event, with the same id, however often it is read."""

    answer: Answer
    since: float


def _stamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unreadable(key: str, why: str, names: tuple[str, ...]) -> MaintenanceEvent:
    """What cannot be read is pending, drained at once and never approved."""
    return MaintenanceEvent(
        event_id=f"{key}:unreadable",
        event_type=EventType.UNKNOWN,
        status=EventStatus.UNKNOWN,
        resources=names,
        source="Platform",
        description=f"{key}: {why}",
        raw_type="?",
        raw_status="?",
        problems=(f"{key}: {why}",),
    )


def parse_maintenance_event(
    seen: Seen, names: tuple[str, ...], now: float
) -> MaintenanceEvent | None:
    """``instance/maintenance-event``: None for ``NONE``; a live migration is a Freeze,
    a terminate-and-restart a Reboot, both starting 60 s after the value changed: less
    than any drain, so listed as due now (no NotBefore), and Started after 60 s."""
    answer = seen.answer
    if answer.status != 200:
        return _unreadable(MAINTENANCE, f"HTTP {answer.status}: {answer.text[:80]!r}", names)
    value = answer.text.strip()
    kinds = {
        "MIGRATE_ON_HOST_MAINTENANCE": (EventType.FREEZE, "a live migration"),
        "TERMINATE_ON_HOST_MAINTENANCE": (EventType.REBOOT, "the VM stops and restarts"),
    }
    if value.upper() == "NONE":
        return None
    if value.upper() not in kinds:
        return _unreadable(MAINTENANCE, f"unknown value {value[:80]!r}", names)
    kind, meaning = kinds[value.upper()]
    starts = seen.since + WARNING
    return MaintenanceEvent(
        event_id=f"{MAINTENANCE}:{value.upper()}@{_stamp(seen.since)}",
        event_type=kind,
        status=EventStatus.STARTED if now >= starts else EventStatus.SCHEDULED,
        resources=names,
        source="Platform",
        description=f"{value.upper()}: {meaning}, from about {_stamp(starts)}",
    )


def parse_preempted(seen: Seen, names: tuple[str, ...], now: float) -> MaintenanceEvent | None:
    """``instance/preempted``: None for ``FALSE``; ``TRUE`` is a Preempt under way."""
    answer = seen.answer
    if answer.status != 200:
        return _unreadable(PREEMPTED, f"HTTP {answer.status}: {answer.text[:80]!r}", names)
    value = answer.text.strip().upper()
    if value == "FALSE":
        return None
    if value != "TRUE":
        return _unreadable(PREEMPTED, f"unknown value {answer.text.strip()[:80]!r}", names)
    return MaintenanceEvent(
        event_id=f"{PREEMPTED}:TRUE@{_stamp(seen.since)}",
        event_type=EventType.PREEMPT,
        status=EventStatus.STARTED,
        resources=names,
        not_before=seen.since + PREEMPT_NOTICE,
        source="Platform",
        description="preempted: the VM is switched off 30 s after the notice",
    )


_UPCOMING_STATUS = {"PENDING": EventStatus.SCHEDULED, "ONGOING": EventStatus.STARTED}


def _nothing_scheduled(answer: Answer, doc: Any) -> bool:
    if answer.status == 404 or answer.text.strip().upper() == "NONE":
        return True
    if doc == {}:
        return True
    error = doc.get("error") if isinstance(doc, dict) and len(doc) == 1 else None
    return isinstance(error, str) and _NOTHING_YET in error.lower()


def parse_upcoming(answer: Answer, names: tuple[str, ...]) -> MaintenanceEvent | None:
    """``instance/upcoming-maintenance``: a window days ahead, or None when nothing is
    scheduled (every documented form of it) or the window is ``COMPLETE``."""
    doc: Any = None
    if answer.status == 200:
        try:
            doc = json.loads(answer.text)
        except ValueError:
            doc = None
    if _nothing_scheduled(answer, doc):
        return None
    if answer.status != 200:
        return _unreadable(UPCOMING, f"HTTP {answer.status}: {answer.text[:80]!r}", names)
    if not isinstance(doc, dict):
        return _unreadable(UPCOMING, f"not a JSON object: {answer.text[:80]!r}", names)
    problems: list[str] = []
    state = str(doc.get("maintenance_status", "")).upper()
    if state == "COMPLETE":
        return None
    status = _UPCOMING_STATUS.get(state)
    if status is None:
        problems.append(f"maintenance_status {doc.get('maintenance_status')!r} unknown: pending")
        status = EventStatus.UNKNOWN
    start = doc.get("window_start_time")
    not_before = None
    with contextlib.suppress(ValueError, OverflowError, OSError):
        not_before = _time(start) if isinstance(start, str) and start else None
    if not_before is None:
        problems.append(f"window_start_time {start!r} is not a time: taken as due now")
    kind = doc.get("type") if isinstance(doc.get("type"), str) else "?"
    reasons = doc.get("maintenance_reasons")
    reasons = [r for r in reasons if isinstance(r, str)] if isinstance(reasons, list) else []
    window = f"{start} to {doc.get('window_end_time')}"
    return MaintenanceEvent(
        event_id=f"{UPCOMING}:{kind}@{start}",
        event_type=EventType.REBOOT,
        status=status,
        resources=names,
        not_before=not_before,
        source="Platform",
        description=f"{kind} maintenance {window} ({', '.join(reasons) or 'no reason given'})",
        raw_status="" if status is not EventStatus.UNKNOWN else state or "?",
        problems=tuple(problems),
    )


def names_from(name: str, hostname: str) -> frozenset[str]:
    """The instance name, the hostname and its first label (``web-1.c.project.internal``)."""
    names = {n for n in (name.strip(), hostname.strip()) if n}
    if hostname.strip():
        names.add(hostname.strip().split(".", 1)[0])
    if not name.strip():
        raise PayloadError("instance/name: empty")
    return frozenset(names)


class GcpSource:
    def __init__(
        self,
        config: GcpConfig,
        *,
        stopping: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
        attempts: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._clock = clock
        self._stopping = stopping or threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._seen: dict[str, Seen] = {}
        self._errors: dict[str, str] = {}  # why a watched key cannot be read now
        self._watchers: list[threading.Thread] = []
        self._dead: set[str] = set()  # keys whose watcher ended: read at every poll
        self._names: tuple[str, ...] = ()
        self._upcoming: tuple[float, MaintenanceEvent | None] | None = None  # read at, event
        self._upcoming_error = ""  # why upcoming-maintenance could not be read, as logged
        self._unread = Unread()  # the keys left out of the last listing, and why
        self._said: set[str] = set()

        def http() -> MetadataHTTP:
            made = MetadataHTTP(
                config.endpoint,
                config.timeout,
                headers=HEADER,
                stopping=self._stopping,
                transport=transport,
                attempts=attempts,
            )
            with self._lock:
                self._clients.append(made)
            return made

        self._clients: list[MetadataHTTP] = []
        self._http = http  # one client per thread: the loop's, and each watcher's
        self._own = http()

    # -- HTTP ----------------------------------------------------------------------------

    def _get(
        self, key: str, *, via: MetadataHTTP | None = None, etag: str | None = None, **params: str
    ) -> Answer:
        """One key, retried on 429/5xx/transport failures; ``etag``: a hanging GET that
        returns when the value's ETag is no longer ``etag`` (or at ``watch_timeout``)."""
        import httpx

        client = via or self._own
        options: dict[str, Any] = {"params": params}
        if etag is not None:
            wait = int(self._config.watch_timeout)
            options["params"] = {**params, "wait_for_change": "true", "timeout_sec": str(wait)}
            if etag:
                options["params"]["last_etag"] = etag
            options["timeout"] = httpx.Timeout(wait + self._config.timeout, connect=1.0)

        def once() -> Answer:
            if self._closed.is_set():
                raise SourceError("the source is closed")
            reply = client.send("GET", PREFIX + key, **options)
            return Answer(reply.status_code, reply.text, reply.headers.get("ETag", ""))

        return client.retry(once)

    # -- what was seen -------------------------------------------------------------------

    def _store(self, key: str, answer: Answer) -> bool:
        """Keep ``answer``; True when the value changed (an ETag alone is no change)."""
        with self._lock:
            failed = self._errors.pop(key, None) is not None
            before = self._seen.get(key)
            same = before is not None and (before.answer.status, before.answer.text.strip()) == (
                answer.status,
                answer.text.strip(),
            )
            since = before.since if same and before is not None else self._clock()
            self._seen[key] = Seen(answer, since)
            return failed or not same

    def _fail(self, key: str, why: str) -> bool:
        with self._lock:
            new = self._errors.get(key) != why
            self._errors[key] = why
            return new

    # -- the watchers --------------------------------------------------------------------

    def watch(self, changed: Callable[[], None]) -> None:
        """Watch maintenance-event and preempted with hanging GETs, one daemon thread
        each, and call ``changed()`` whenever a value changes or cannot be read."""
        if self._watchers:
            return
        for key in _WATCHED:
            thread = threading.Thread(
                target=self._watch,
                args=(key, changed),
                name=_thread_name(key),
                daemon=True,
            )
            self._watchers.append(thread)
            thread.start()

    def _watch(self, key: str, changed: Callable[[], None]) -> None:
        etag: str | None = None  # None: read at once; then wait for a change from etag
        pause = 0.5
        http = self._http()
        while not (self._closed.is_set() or self._stopping.is_set()):
            asked = time.monotonic()
            try:
                answer = self._get(key, via=http, etag=etag)
            except SourceError as exc:
                if self._closed.is_set() or self._stopping.is_set():
                    return
                if self._fail(key, str(exc)):
                    changed()
                etag = None  # the next read answers at once
                self._closed.wait(pause)
                pause = min(pause * 2, self._config.poll_interval * 4, 10.0)
                continue
            except Exception:  # a bug must not end the watch: the loop then polls
                log.exception("watching %s failed", key)
                self._fail(key, "the watcher failed")
                changed()
                self._closed.wait(pause)
                etag = None
                continue
            pause = 0.5
            new = self._store(key, answer)
            if new:
                changed()
            if answer.status != 200 or not answer.etag:
                # no hanging GET without an ETag: read again at the loop's pace
                etag = None
                self._closed.wait(self._config.poll_interval)
                continue
            hung = time.monotonic() - asked >= self._config.watch_timeout / 2
            if etag is not None and not new and not hung:
                # the server did not wait (it ignores wait_for_change, or its ETag moves
                # while the value stays): no busier than the loop's pace
                self._closed.wait(self._config.poll_interval)
            etag = answer.etag

    # -- EventSource ---------------------------------------------------------------------

    def _watched(self, key: str) -> bool:
        """Whether ``key``'s watcher still runs; one that ended (a bug) is logged once,
        and its key read at every poll from then on: what it saw last is no answer."""
        thread = next((t for t in self._watchers if t.name == _thread_name(key)), None)
        if thread is None or thread.is_alive() or self._closed.is_set() or self._stopping.is_set():
            return thread is not None  # (a watcher ends on shutdown: no error then)
        if key not in self._dead:
            self._dead.add(key)
            log.error("the watcher of %s ended; reading it at every poll instead", key)
        return False

    def _read(self, key: str) -> Seen:
        watched = self._watched(key)
        with self._lock:
            error = self._errors.get(key) if watched else None
            seen = self._seen.get(key)
        if error is not None:
            raise SourceError(error)
        if seen is None or not watched:
            self._store(key, self._get(key))
            with self._lock:
                seen = self._seen[key]
        return seen

    def _upcoming_event(self, names: tuple[str, ...], now: float) -> MaintenanceEvent | None:
        last = self._upcoming
        every = self._config.upcoming_interval
        if last is not None and last[1] is None and now - last[0] < every:
            return None
        try:
            answer = self._get(UPCOMING, alt="json")
        except SourceError as exc:
            # days of notice: a failed read keeps what was known, and must not hide
            # maintenance-event's 60 s (a whole failed poll would); never read yet, it
            # is no answer (the caller lists the urgent notices without it)
            if last is None:
                raise
            if str(exc) != self._upcoming_error:
                log.warning("%s: %s; keeping what was known", UPCOMING, exc)
            self._upcoming_error = str(exc)
            if last[1] is None:  # tried again at its pace: a slow failure slows each poll
                self._upcoming = (now, None)
            return last[1]
        if self._upcoming_error:
            log.info("%s can be read again", UPCOMING)
            self._upcoming_error = ""
        event = parse_upcoming(answer, names)
        self._upcoming = (now, event)
        return event

    def events(self) -> Listing:
        names = tuple(sorted(self.node_names()))
        failed: SourceError | None = None
        try:
            upcoming = self._upcoming_event(names, self._clock())
        except SourceError as exc:
            upcoming, failed = None, exc
        # the urgent keys after the slow one: a change the watchers saw meanwhile is listed
        now = self._clock()
        found: list[MaintenanceEvent | None] = []
        unread: list[SourceError] = []
        for key, parse in ((MAINTENANCE, parse_maintenance_event), (PREEMPTED, parse_preempted)):
            try:
                found.append(parse(self._read(key), names, now))
            except SourceError as exc:  # hides no notice on the other key
                unread.append(SourceError(f"{key}: {exc}"))
        if failed is not None:
            unread.append(SourceError(f"{UPCOMING}: {failed}"))
        # nothing urgent to hide: no answer, never "no event"
        partial = self._unread.settle(unread, found=any(found))
        found.append(upcoming)
        listing = Listing(tuple(e for e in found if e is not None), partial=partial)
        self._warn(listing)
        return listing

    def _warn(self, listing: Listing) -> None:
        said = set()
        for event in listing.events:
            if event.problems:
                line = f"{event.event_id}: {'; '.join(event.problems)}"
                said.add(line)
                if line not in self._said:
                    log.warning("%s", line, extra={"event_id": event.event_id})
        self._said = said

    def approve(self, event_id: str) -> None:
        raise SourceError(
            "Google Cloud cannot start a maintenance from the VM (no approve call in its"
            " metadata server)"
        )

    def node_names(self) -> frozenset[str]:
        if not self._names:
            answers = [self._get(key) for key in NAME_KEYS]
            for key, answer in zip(NAME_KEYS, answers, strict=True):
                if answer.status != 200:
                    raise PayloadError(f"{key}: HTTP {answer.status}: {answer.text[:80]!r}")
            self._names = tuple(sorted(names_from(answers[0].text, answers[1].text)))
        return frozenset(self._names)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # a watcher's request in flight: it ends by watch_timeout
                log.debug("closing a metadata client failed", exc_info=True)


def _thread_name(key: str) -> str:
    return f"gcp-watch-{key.rsplit('/', 1)[-1]}"


def create(config: GcpConfig, stopping: threading.Event) -> GcpSource:
    return GcpSource(config, stopping=stopping)


PLUGIN = SourcePlugin(config_model=GcpConfig, create=create)
