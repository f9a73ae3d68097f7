"""Azure Scheduled Events, read from the Instance Metadata Service (IMDS).

Every request carries ``Metadata: true``, goes straight to the endpoint (proxy
variables ignored, redirects not followed: IMDS rejects proxied requests) and has short
timeouts. 429, 5xx and timeouts are retried with backoff inside one poll; after that the
poll fails with SourceError and the caller keeps what it knew. An answer that breaks the
documented schema raises PayloadError: it is never read as "no events", since that
would put a node back in service in the middle of its maintenance.
"""

from __future__ import annotations

import threading
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_exponential,
)

from drainer.config import SourceConfig
from drainer.errors import PayloadError, SourceError
from drainer.model import EventStatus, EventType, MaintenanceEvent
from drainer.sources.base import SourcePlugin

API_VERSION = "2020-07-01"
COMPUTE_API_VERSION = "2021-02-01"
EVENTS_PATH = "/metadata/scheduledevents"
COMPUTE_PATH = "/metadata/instance/compute"


class _Retryable(Exception):
    """429, 5xx or a transport failure: worth another try within this poll."""


def _field(event: dict[str, Any], key: str, index: int, kind: type | tuple[type, ...]) -> Any:
    if key not in event:
        raise PayloadError(f"Events[{index}].{key}: missing")
    value = event[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PayloadError(f"Events[{index}].{key}: unexpected value {value!r}")
    return value


def _not_before(text: str, index: int) -> float | None:
    if text == "":
        return None
    try:
        # parsedate ignores the weekday: Microsoft's own sample has a wrong one.
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"Events[{index}].NotBefore: not an RFC 1123 time: {text!r}") from exc


def parse_events(doc: Any) -> tuple[MaintenanceEvent, ...]:
    """Translate a Scheduled Events document; PayloadError names the first thing off-schema."""
    if not isinstance(doc, dict):
        raise PayloadError("the document is not a JSON object")
    if not isinstance(doc.get("DocumentIncarnation"), int):
        raise PayloadError("DocumentIncarnation: missing or not an integer")
    raw = doc.get("Events")
    if not isinstance(raw, list):
        raise PayloadError("Events: missing or not a list")
    events = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise PayloadError(f"Events[{i}]: not an object")
        kind = _field(item, "EventType", i, str)
        status = _field(item, "EventStatus", i, str)
        try:
            event_type, event_status = EventType(kind), EventStatus(status)
        except ValueError as exc:
            raise PayloadError(f"Events[{i}]: unknown EventType or EventStatus: {exc}") from exc
        resources = _field(item, "Resources", i, list)
        if not all(isinstance(r, str) for r in resources):
            raise PayloadError(f"Events[{i}].Resources: not a list of names")
        duration = item.get("DurationInSeconds", -1)
        if not isinstance(duration, int) or isinstance(duration, bool):
            raise PayloadError(f"Events[{i}].DurationInSeconds: unexpected value {duration!r}")
        events.append(
            MaintenanceEvent(
                event_id=_field(item, "EventId", i, str),
                event_type=event_type,
                status=event_status,
                resources=tuple(resources),
                not_before=_not_before(_field(item, "NotBefore", i, str), i),
                duration=duration,
                source=str(item.get("EventSource", "")),
                description=str(item.get("Description", "")),
            )
        )
    return tuple(events)


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
        config: SourceConfig,
        *,
        stopping: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
        attempts: int = 3,
    ) -> None:
        self._client = httpx.Client(
            base_url=config.endpoint,
            headers={"Metadata": "true"},
            timeout=httpx.Timeout(config.timeout, connect=min(config.timeout, 1.0)),
            trust_env=False,
            follow_redirects=False,
            transport=transport,
        )
        self._endpoint = config.endpoint
        stopping = stopping or threading.Event()
        self._stopping = stopping
        self._retrying = Retrying(
            stop=stop_after_attempt(attempts) | stop_when_event_set(stopping),
            wait=wait_exponential(multiplier=0.25, max=2.0),
            retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
            sleep=self._pause,
            retry_error_callback=self._give_up,
        )

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # returns at once on shutdown

    def _give_up(self, state: RetryCallState) -> Any:
        exc = state.outcome.exception() if state.outcome else None
        raise SourceError(f"metadata service at {self._endpoint}: {exc}") from exc

    def _request(self, method: str, path: str, version: str, body: Any = None) -> httpx.Response:
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

    def events(self) -> tuple[MaintenanceEvent, ...]:
        return parse_events(self._json(self._request("GET", EVENTS_PATH, API_VERSION)))

    def approve(self, event_id: str) -> None:
        body = {"StartRequests": [{"EventId": event_id}]}
        self._request("POST", EVENTS_PATH, API_VERSION, body)

    def node_names(self) -> frozenset[str]:
        return names_from_compute(
            self._json(self._request("GET", COMPUTE_PATH, COMPUTE_API_VERSION))
        )

    def close(self) -> None:
        self._client.close()


def create(config: SourceConfig, stopping: threading.Event) -> AzureSource:
    return AzureSource(config, stopping=stopping)


PLUGIN = SourcePlugin(create=create)
