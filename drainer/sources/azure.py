"""Azure Scheduled Events, read from the Instance Metadata Service (IMDS).

Every request carries ``Metadata: true``, goes straight to the endpoint (proxy
variables ignored, redirects not followed: IMDS rejects proxied requests) and has short
timeouts. 429, 5xx and timeouts are retried with backoff inside one poll; after that the
poll fails with SourceError and the caller keeps what it knew. Events are read
liberally and each on its own (see ``parse_events``); only an answer that is not a
Scheduled Events document at all raises PayloadError: it is never read as "no events",
since that would put a node back in service in the middle of its maintenance. What was
odd about an event is logged once, as a warning, while the event is listed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar

from drainer._types import HttpUrl
from drainer.errors import PayloadError, SourceError
from drainer.model import Damaged, EventStatus, EventType, Listing, MaintenanceEvent
from drainer.sources.base import SourceConfig, SourcePlugin

if TYPE_CHECKING:  # imported at the first request: `config check` and `status` need none
    import httpx
    from tenacity import RetryCallState, Retrying

API_VERSION = "2020-07-01"
COMPUTE_API_VERSION = "2021-02-01"
EVENTS_PATH = "/metadata/scheduledevents"
COMPUTE_PATH = "/metadata/instance/compute"

log = logging.getLogger("drainer")


class AzureConfig(SourceConfig):
    """The ``source:`` section for Azure: where the metadata service is. (The keys
    every source has, most of them the core's policy, are ``SourceConfig``'s.)"""

    type: str = "azure"
    endpoint: HttpUrl = "http://169.254.169.254"  # refused when read, not by every poll


class _Retryable(Exception):
    """429, 5xx or a transport failure: worth another try within this poll."""


_OVER = frozenset({"completed", "canceled"})  # statuses that mean the event is no more
# ISO 8601 as IMDS and .NET write it; normalised for datetime.fromisoformat, which on
# Python 3.10 takes neither "Z", nor a fraction of other than 3 or 6 digits, nor "+0000".
_ISO = re.compile(
    r"(?P<stamp>\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2})?)"
    r"(?:[.,](?P<fraction>\d+))?\s*(?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?)?"
)


def _iso(text: str) -> str:
    match = _ISO.fullmatch(text)
    if match is None:
        return text  # fromisoformat says what it cannot read
    out = match["stamp"].replace("t", "T")
    if match["fraction"]:
        out += "." + match["fraction"][:6].ljust(6, "0")  # datetime keeps microseconds
    zone = match["zone"] or ""
    if zone in ("Z", "z"):
        zone = "+00:00"
    elif zone and ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:] or '00'}"
    return out + zone


def _time(text: str) -> float:
    """RFC 1123 or ISO 8601 (any offset, ``Z``, fractional seconds); no offset means UTC."""
    try:
        # parsedate ignores the weekday: Microsoft's own sample has a wrong one.
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        moment = datetime.fromisoformat(_iso(text.strip()))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _not_before(item: dict[str, Any], problems: list[str]) -> float | None:
    """None (at once) when blank; when unreadable too, with a problem said."""
    text = item.get("NotBefore")
    if text == "":
        return None
    if isinstance(text, str):
        try:
            return _time(text)
        except (ValueError, OverflowError, OSError):
            pass
    problems.append(f"NotBefore {text!r} is not a time drainer can read: taken as due now")
    return None


def _name(item: dict[str, Any], key: str, problems: list[str]) -> str:
    value = item.get(key)
    if isinstance(value, str) and value:
        return value
    problems.append(f"{key} {'missing' if value is None else repr(value)}")
    return ""


E = TypeVar("E", EventType, EventStatus)


def _known(kind: type[E], text: str, problems: list[str], key: str, meaning: str) -> tuple[E, str]:
    """The member named ``text``, or UNKNOWN and the name as listed (``?`` when blank)."""
    try:
        return kind(text), ""
    except ValueError:
        if text:
            problems.append(f"{key} {text!r} unknown: {meaning}")
        return kind.UNKNOWN, text or "?"


def _translate(item: dict[str, Any], key: str) -> tuple[MaintenanceEvent, bool] | None:
    """The event as far as it can be read, and whether its Resources could be; None
    when its status says it is over."""
    problems: list[str] = []
    if not isinstance(item.get("EventId"), str) or not item["EventId"]:
        problems.append(f"EventId {item.get('EventId')!r}: known here as {key}")
    kind = _name(item, "EventType", problems)
    status = _name(item, "EventStatus", problems)
    if status.lower() in _OVER:
        return None
    event_type, raw_type = _known(
        EventType, kind, problems, "EventType", "the rule events.Unknown applies"
    )
    event_status, raw_status = _known(
        EventStatus, status, problems, "EventStatus", "pending, drained now, never approved"
    )
    resources = item.get("Resources")
    readable = isinstance(resources, list) and all(isinstance(r, str) for r in resources)
    if not readable:
        problems.append(f"Resources {resources!r} is not a list of names")
    names = [r for r in resources if isinstance(r, str)] if isinstance(resources, list) else []
    duration = item.get("DurationInSeconds", -1)
    if not isinstance(duration, int) or isinstance(duration, bool) or duration < -1:
        problems.append(f"DurationInSeconds {duration!r}: taken as unknown")
        duration = -1
    source, description = item.get("EventSource"), item.get("Description")
    event = MaintenanceEvent(
        event_id=key,
        event_type=event_type,
        status=event_status,
        resources=tuple(names),
        not_before=_not_before(item, problems),
        duration=duration,
        source=source if isinstance(source, str) else "",
        description=description if isinstance(description, str) else "",
        raw_type=raw_type,
        raw_status=raw_status,
        problems=tuple(problems),
    )
    return event, readable


def _place(i: int, item: Any) -> str:
    """The name of an entry without an EventId: its place, and a digest of what it says
    but its status, so that an id an operator's undrain dismissed is never given to
    another event later listed in the same place."""
    rest = {k: v for k, v in item.items() if k != "EventStatus"} if isinstance(item, dict) else item
    digest = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]
    return f"Events[{i}]#{digest}"


def parse_events(doc: Any) -> Listing:
    """Translate a Scheduled Events document, each event on its own.

    Unknown fields are ignored; an unknown type or status is kept as UNKNOWN; an
    unreadable NotBefore is "due now"; a ``Completed`` or ``Canceled`` event is over
    (left out). An entry whose Resources cannot be read is ``Damaged``: the core
    decides whether it names this VM. Only a document that is not a Scheduled Events
    document at all (not an object, no ``Events`` list) raises PayloadError.
    """
    if not isinstance(doc, dict):
        raise PayloadError("the document is not a JSON object")
    raw = doc.get("Events")
    if not isinstance(raw, list):
        raise PayloadError("Events: missing or not a list")
    incarnation = doc.get("DocumentIncarnation")
    if not isinstance(incarnation, int) or isinstance(incarnation, bool):
        incarnation = None
    events: list[MaintenanceEvent] = []
    damaged: list[Damaged] = []
    for i, item in enumerate(raw):
        key = _place(i, item)
        if not isinstance(item, dict):
            text = json.dumps(item)
            event = MaintenanceEvent(
                event_id=key,
                event_type=EventType.UNKNOWN,
                status=EventStatus.UNKNOWN,
                resources=(),
                raw_type="?",
                raw_status="?",
                problems=(f"not an object: {text[:80]}",),
            )
            damaged.append(Damaged(event, text))
            continue
        if isinstance(item.get("EventId"), str) and item["EventId"]:
            key = item["EventId"]
        translated = _translate(item, key)
        if translated is None:
            continue
        event, readable = translated
        if readable:
            events.append(event)
        else:
            damaged.append(Damaged(event, json.dumps(item)))
    return Listing(tuple(events), incarnation, tuple(damaged))


def names_from_compute(doc: Any) -> frozenset[str]:
    """A standalone VM is ``name``; a uniform scale-set instance ``<scaleSet>_<instanceId>``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
        raise PayloadError("compute: no VM name in the instance metadata")
    names = {doc["name"]}
    scale_set = doc.get("vmScaleSetName") or ""
    resource_id = doc.get("resourceId") or ""
    if scale_set and isinstance(resource_id, str) and "/virtualMachines/" in resource_id:
        names.add(f"{scale_set}_{resource_id.rsplit('/', 1)[-1]}")
    return frozenset(names)


class AzureSource:
    def __init__(
        self,
        config: AzureConfig,
        *,
        stopping: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
        attempts: int = 3,
    ) -> None:
        # made at the first request: a command that asks nothing (`drainer status` with
        # node.name set) imports no httpx and builds no SSL context
        self._config = config
        self._transport = transport
        self._made: httpx.Client | None = None
        self._endpoint = config.endpoint
        self._said: set[str] = set()  # the warnings about the events listed last time
        self._stopping = stopping or threading.Event()
        self._attempts = attempts
        self._retries: Retrying | None = None  # made at the first request too

    @property
    def _retrying(self) -> Retrying:
        if self._retries is None:
            from tenacity import (
                Retrying,
                retry_if_exception,
                stop_after_attempt,
                stop_when_event_set,
                wait_exponential,
            )

            self._retries = Retrying(
                stop=stop_after_attempt(self._attempts) | stop_when_event_set(self._stopping),
                wait=wait_exponential(multiplier=0.25, max=2.0),
                retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
                sleep=self._pause,
                retry_error_callback=self._give_up,
            )
        return self._retries

    @property
    def _client(self) -> httpx.Client:
        if self._made is None:
            import httpx

            timeout = self._config.timeout
            self._made = httpx.Client(
                base_url=self._config.endpoint,
                headers={"Metadata": "true"},
                timeout=httpx.Timeout(timeout, connect=min(timeout, 1.0)),
                trust_env=False,
                follow_redirects=False,
                transport=self._transport,
            )
        return self._made

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # returns at once on shutdown

    def _give_up(self, state: RetryCallState) -> Any:
        exc = state.outcome.exception() if state.outcome else None
        raise SourceError(f"metadata service at {self._endpoint}: {exc}") from exc

    def _request(self, method: str, path: str, version: str, body: Any = None) -> httpx.Response:
        import httpx

        def once() -> httpx.Response:
            try:
                reply = self._client.request(
                    method, path, params={"api-version": version}, json=body
                )
            except httpx.HTTPError as exc:
                raise _Retryable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            if reply.status_code == 429 or reply.status_code >= 500:
                raise _Retryable(f"{method} {path}: HTTP {reply.status_code}")
            if reply.status_code != 200:
                raise SourceError(
                    f"metadata service at {self._endpoint}: {method} {path}: "
                    f"HTTP {reply.status_code}: {reply.text[:200]}"
                )
            return reply

        result: httpx.Response = self._retrying(once)
        return result

    def _json(self, reply: httpx.Response) -> Any:
        try:
            return reply.json()
        except ValueError as exc:
            raise PayloadError(f"metadata service answered invalid JSON: {exc}") from exc

    def events(self) -> Listing:
        listing = parse_events(self._json(self._request("GET", EVENTS_PATH, API_VERSION)))
        self._warn(listing)
        return listing

    def _warn(self, listing: Listing) -> None:
        """Say once per event (not at every poll) what was odd about it."""
        said: set[str] = set()
        for event, damaged in [(e, False) for e in listing.events] + [
            (d.event, True) for d in listing.damaged
        ]:
            if not event.problems:
                continue
            line = f"scheduled event {event.event_id}: {'; '.join(event.problems)}"
            if damaged:
                line += "; skipped unless it names this VM (then: due now, never approved)"
            said.add(line)
            if line not in self._said:
                log.warning("%s", line, extra={"event_id": event.event_id})
        self._said = said

    def approve(self, event_id: str) -> None:
        body = {"StartRequests": [{"EventId": event_id}]}
        self._request("POST", EVENTS_PATH, API_VERSION, body)

    def node_names(self) -> frozenset[str]:
        return names_from_compute(
            self._json(self._request("GET", COMPUTE_PATH, COMPUTE_API_VERSION))
        )

    def close(self) -> None:
        if self._made is not None:
            self._made.close()


def create(config: AzureConfig, stopping: threading.Event) -> AzureSource:
    return AzureSource(config, stopping=stopping)


PLUGIN = SourcePlugin(config_model=AzureConfig, create=create)
