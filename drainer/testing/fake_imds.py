"""A fake Azure Instance Metadata Service (IMDS), served over real HTTP.

For demos and tests, ours and users': it answers the Scheduled Events and compute
endpoints to the letter of the documented schema, and a control API scripts
maintenance the way Azure would::

    with FakeIMDS(clock=clock) as imds:              # a daemon thread on 127.0.0.1:<free port>
        event_id = imds.schedule("Reboot", ["web-1"], not_before_in=600)
        ...                                          # point the code under test at imds.url
        clock.advance(600)                           # the event is now Started
        imds.end_event(event_id)                     # ...and now gone

Metadata API (header ``Metadata: true``, no ``X-Forwarded-For``, ``?api-version=V``)::

    GET  /metadata/scheduledevents   200 {"DocumentIncarnation": int, "Events": [event, ...]}
    POST /metadata/scheduledevents   {"StartRequests": [{"EventId": id}, ...]}  200, empty body
    GET  /metadata/instance/compute  200 {"name": "web-1", "vmScaleSetName": "", ...}

    event = {"EventId", "EventType", "ResourceType", "Resources", "EventStatus",
             "NotBefore", "Description", "EventSource", "DurationInSeconds"}

    400 {"error": ...}  Metadata header missing or not "true", any X-Forwarded-For,
                        api-version missing or unknown, approval body of another shape
    404 {"error": ...}  unknown path            405  known path, wrong method
    429 {"error": ...}  more than ``rate_limit`` metadata requests in one second

Control API (JSON in, JSON out, no header needed, never rate limited)::

    POST /fake/events              {"type", "resources", "not_before_in", "duration", "source",
                                    "description", "start_on_approval", "end_after", "status"}
                                   (only type and resources required)  -> {"EventId": id}
    POST /fake/events/<id>/start   Scheduled -> Started                -> state
    POST /fake/events/<id>/end     the event disappears                -> state
    POST /fake/events/<id>/cancel  a Scheduled event disappears        -> state
    POST /fake/faults              {"kind", "count", "delay"}          -> state
    POST /fake/quirks              {"iso_not_before": true, ...}       -> state
    POST /fake/compute             {"field": "value", ...}             -> state
    GET  /fake/state               {"DocumentIncarnation", "Events", "approvals", "requests",
                                    "quirks"}
    POST /fake/reset               back to the state after __init__    -> state

    400 {"error": what is wrong}   404 {"error": ...} unknown event id or path

Rules the fake keeps:

- Scheduled events are accepted with api-versions 2017-03-01 ... 2020-07-01. Fields
  arrive with their version: ``Description`` 2019-04-01, ``EventSource`` 2019-08-01,
  ``DurationInSeconds`` 2020-07-01. Compute is accepted with 2021-02-01; a dotted
  compute field (``osProfile.computerName``) is served nested, as IMDS does.
- ``NotBefore`` is RFC 1123 while Scheduled and ``""`` once Started.
- ``DocumentIncarnation`` starts at 0 and grows by one whenever ``Events`` changes,
  and only then. Changes are evaluated lazily, against ``clock()``, on every request
  and on ``snapshot()``: a Scheduled event whose NotBefore has passed is Started (as
  of NotBefore), a Started event with ``end_after`` is gone that many seconds after it
  started. Several changes found by one evaluation count as one.
- An approval is recorded (every time, in order; unknown ids are ignored). It starts
  an event created with ``start_on_approval`` at once, for every VM in Resources.
- Faults (``inject``) hit the next well-formed GETs of the scheduled events, first
  in, first out: "500", "429", "slow" (wait ``delay`` seconds, then answer),
  "malformed" (invalid JSON), "schema" (valid JSON, ``Events`` an object without
  EventId), "drop" (close the connection without an answer), "reenabled" (the
  service was re-enabled after an outage: ``{"DocumentIncarnation": 1, "Events": []}``
  while the events still exist; the incarnation then counts on from 1 and the next
  normal answer lists the events again under incarnation 2).
- The rate limit and the lifecycle read the injected ``clock``: a test with a frozen
  clock advances it (or passes ``rate_limit=None``) to get past the limit.

Quirks: what real implementations send beyond the documentation (Microsoft's own
Scheduled Events mock server among them). Off by default; switch them on with
``FakeIMDS(quirks={...})``, ``set_quirks(name=True, ...)`` or ``POST /fake/quirks``
(``reset()`` returns to the constructor's set):

- ``iso_not_before``: ``NotBefore`` as ISO 8601 (``2026-11-30T00:13:25Z``), not RFC 1123.
- ``reissue_ids``: every change of status lists the event under a new ``EventId``
  (Scheduled id X, then Started id Y). The control API and approvals accept the
  id ``schedule`` returned as well as the one listed now.
- ``unknown_values``: ``schedule`` accepts any non-empty type and status
  (``"HotPatch"``, ``"InProgress"``, ``"Completed"``); such a status never advances by
  itself (``start_event`` or ``end_event`` moves it).
- ``extra_fields``: fields the documentation does not have, in every event and in
  the document.
- ``malformed_neighbour``: every document also lists a broken event of another VM
  (``Resources`` a string naming ``neighbour-vm``, an unreadable ``NotBefore``). It
  does not count as a change of ``Events``.

Programming errors raise ``ValueError``; an unknown event id raises
``UnknownEventError``. All state sits behind one lock; nothing is logged.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import Message
from email.utils import format_datetime
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from drainer.testing._fake import FakeService, check_quirks
from drainer.testing._fake import Reply as _Reply

__all__ = [
    "COMPUTE_API_VERSIONS",
    "EVENT_TYPES",
    "FAULT_KINDS",
    "NEIGHBOUR",
    "QUIRKS",
    "SCHEDULED_EVENTS_API_VERSIONS",
    "FakeIMDS",
    "UnknownEventError",
]

SCHEDULED_EVENTS_API_VERSIONS = (
    "2017-03-01",
    "2017-08-01",
    "2017-11-01",
    "2019-01-01",
    "2019-04-01",
    "2019-08-01",
    "2020-07-01",
)
COMPUTE_API_VERSIONS = ("2021-02-01",)
EVENT_TYPES = ("Freeze", "Reboot", "Redeploy", "Preempt", "Terminate")
FAULT_KINDS = ("500", "429", "slow", "malformed", "schema", "drop", "reenabled")
QUIRKS = (
    "iso_not_before",
    "reissue_ids",
    "unknown_values",
    "extra_fields",
    "malformed_neighbour",
)
NEIGHBOUR = "neighbour-vm"
_MALFORMED_NEIGHBOUR = {
    "EventId": "5D4C3B2A-0000-4000-8000-00000000BEEF",
    "EventType": "Reboot",
    "ResourceType": "VirtualMachine",
    "Resources": NEIGHBOUR,
    "EventStatus": "Scheduled",
    "NotBefore": "soon",
    "DurationInSeconds": "n/a",
}

_SCHEDULED = "Scheduled"
_STARTED = "Started"
_EVENTS_PATH = "/metadata/scheduledevents"
_COMPUTE_PATH = "/metadata/instance/compute"
_METADATA_ROUTES = {  # (method, path) -> accepted api-versions
    ("GET", _EVENTS_PATH): SCHEDULED_EVENTS_API_VERSIONS,
    ("POST", _EVENTS_PATH): SCHEDULED_EVENTS_API_VERSIONS,
    ("GET", _COMPUTE_PATH): COMPUTE_API_VERSIONS,
}
_FIELD_SINCE = {  # event field -> first api-version that has it
    "Description": "2019-04-01",
    "EventSource": "2019-08-01",
    "DurationInSeconds": "2020-07-01",
}
_LATEST = SCHEDULED_EVENTS_API_VERSIONS[-1]
_SCHEDULE_KEYS = {
    "type": "event_type",
    "resources": "resources",
    "not_before_in": "not_before_in",
    "duration": "duration",
    "source": "source",
    "description": "description",
    "start_on_approval": "start_on_approval",
    "end_after": "end_after",
    "status": "status",
}
_DEFAULT_COMPUTE = {
    "name": "web-1",
    "vmScaleSetName": "",
    "platformUpdateDomain": "0",
    "platformFaultDomain": "0",
    "zone": "",
    "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
    "resourceId": (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/drainer-demo"
        "/providers/Microsoft.Compute/virtualMachines/web-1"
    ),
    "location": "westeurope",
    "osProfile.computerName": "web-1",
}


class UnknownEventError(LookupError):
    """No event with this id is (still) in the document."""


@dataclass
class _Event:
    event_id: str
    event_type: str
    resources: list[str]
    status: str
    not_before: float
    description: str
    source: str
    duration: int
    start_on_approval: bool
    end_after: float | None
    started_at: float | None = None
    listed_id: str = ""  # the EventId served: another one after each change with reissue_ids

    def start(self, at: float, listed_id: str | None = None) -> None:
        self.status = _STARTED
        self.started_at = at
        self.listed_id = listed_id or self.listed_id

    def to_json(self, api_version: str, quirks: frozenset[str] = frozenset()) -> dict[str, Any]:
        not_before = ""
        if self.status != _STARTED:
            moment = datetime.fromtimestamp(self.not_before, timezone.utc)
            if "iso_not_before" in quirks:
                not_before = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
            else:
                not_before = format_datetime(moment, usegmt=True)
        document: dict[str, Any] = {
            "EventId": self.listed_id or self.event_id,
            "EventType": self.event_type,
            "ResourceType": "VirtualMachine",
            "Resources": list(self.resources),
            "EventStatus": self.status,
            "NotBefore": not_before,
            "Description": self.description,
            "EventSource": self.source,
            "DurationInSeconds": self.duration,
        }
        if "extra_fields" in quirks:
            document["Priority"] = "Normal"
            document["Impact"] = {"Kind": "Downtime", "Seconds": None}
        return {
            key: value
            for key, value in document.items()
            if api_version >= _FIELD_SINCE.get(key, api_version)
        }


@dataclass
class _Fault:
    kind: str
    remaining: int
    delay: float


def _json_reply(status: int, payload: object) -> _Reply:
    return _Reply(status, json.dumps(payload).encode())


def _error(status: int, message: str) -> _Reply:
    return _json_reply(status, {"error": message})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_compute(fields: dict[str, str]) -> None:
    for key, value in fields.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise ValueError(f"compute fields must map names to strings, got {key!r}: {value!r}")
        parts = key.split(".")
        for depth in range(1, len(parts)):
            if ".".join(parts[:depth]) in fields:
                raise ValueError(f"compute field {key!r} is nested under a string field")


def _nested(fields: dict[str, str]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in fields.items():
        *parents, leaf = key.split(".")
        node = document
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return document


def _check_quirks(flags: dict[str, Any]) -> dict[str, bool]:
    return check_quirks(flags, QUIRKS)


def _start_requests(body: bytes) -> list[str] | None:
    """The EventIds of an approval body, or None if it is not the documented shape."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("StartRequests"), list):
        return None
    requests = payload["StartRequests"]
    ids = [item.get("EventId") if isinstance(item, dict) else None for item in requests]
    if not all(isinstance(event_id, str) and event_id for event_id in ids):
        return None
    return cast(list[str], ids)


def _schedule_args(payload: object) -> dict[str, Any]:
    """Turn a POST /fake/events body into keyword arguments of FakeIMDS.schedule."""
    if not isinstance(payload, dict):
        raise ValueError("body must be a JSON object")
    unknown = sorted(set(payload) - set(_SCHEDULE_KEYS))
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(unknown)}")
    for key in ("type", "resources"):
        if key not in payload:
            raise ValueError(f"{key} is required")
    checks: dict[str, tuple[Callable[[object], bool], str]] = {
        "type": (lambda v: isinstance(v, str), "a string"),
        "resources": (
            lambda v: isinstance(v, list) and all(isinstance(r, str) for r in v),
            "a list of strings",
        ),
        "not_before_in": (_is_number, "a number"),
        "duration": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        "source": (lambda v: isinstance(v, str), "a string"),
        "description": (lambda v: isinstance(v, str), "a string"),
        "start_on_approval": (lambda v: isinstance(v, bool), "a boolean"),
        "end_after": (lambda v: v is None or _is_number(v), "a number or null"),
        "status": (lambda v: isinstance(v, str), "a string"),
    }
    for key, value in payload.items():
        ok, expected = checks[key]
        if not ok(value):
            raise ValueError(f"{key} must be {expected}, got {value!r}")
    return {_SCHEDULE_KEYS[key]: value for key, value in payload.items()}


class FakeIMDS(FakeService):
    """A fake IMDS on ``url``; see the module docstring for its HTTP and control API."""

    _thread_name = "fake-imds"
    server_version = "FakeIMDS/1.0"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        compute: dict[str, str] | None = None,
        rate_limit: int | None = 5,
        clock: Callable[[], float] = time.time,
        quirks: Iterable[str] = (),
    ) -> None:
        initial_compute = dict(_DEFAULT_COMPUTE if compute is None else compute)
        _check_compute(initial_compute)
        if rate_limit is not None and rate_limit < 1:
            raise ValueError(f"rate_limit must be at least 1 or None, got {rate_limit}")
        self._initial_quirks = _check_quirks(dict.fromkeys(quirks, True))
        self._quirks: frozenset[str] = frozenset()
        self._reenabled = False  # a "reenabled" answer hid the events; the next one lists them
        self._host = host
        self._port = port
        self._initial_compute = initial_compute
        self._rate_limit = rate_limit
        self._clock = clock
        self._lock = threading.Lock()
        self._stopping_event = threading.Event()
        self._events: dict[str, _Event] = {}
        self._incarnation = 0
        self._approvals: list[str] = []
        self._faults: deque[_Fault] = deque()
        self._compute: dict[str, str] = {}
        self._requests = 0
        self._recent: deque[float] = deque()  # times of the metadata requests of the last second
        self._reset_locked()

    # Scripting maintenance

    def schedule(
        self,
        event_type: str,
        resources: list[str],
        *,
        not_before_in: float = 900.0,
        duration: int = -1,
        source: str = "Platform",
        description: str = "",
        start_on_approval: bool = True,
        end_after: float | None = None,
        status: str = _SCHEDULED,
    ) -> str:
        """Add an event and return its EventId; status="Started" is a no-notice event."""
        odd = "unknown_values" in self._quirks
        if event_type not in EVENT_TYPES and not (
            odd and isinstance(event_type, str) and event_type
        ):
            raise ValueError(f"type must be one of {', '.join(EVENT_TYPES)}, got {event_type!r}")
        if not resources or not all(isinstance(r, str) and r for r in resources):
            raise ValueError(f"resources must be a non-empty list of VM names, got {resources!r}")
        if source not in ("Platform", "User"):
            raise ValueError(f"source must be Platform or User, got {source!r}")
        if status not in (_SCHEDULED, _STARTED) and not (
            odd and isinstance(status, str) and status
        ):
            raise ValueError(f"status must be Scheduled or Started, got {status!r}")
        if duration < -1:
            raise ValueError(f"duration must be -1 (unknown) or more, got {duration}")
        if not math.isfinite(not_before_in):
            raise ValueError(f"not_before_in must be finite, got {not_before_in}")
        if end_after is not None and not (math.isfinite(end_after) and end_after >= 0):
            raise ValueError(f"end_after must be a number of seconds >= 0, got {end_after}")
        event_id = str(uuid.uuid4()).upper()
        with self._lock:
            now = self._advance_locked()
            event = _Event(
                event_id=event_id,
                event_type=event_type,
                resources=list(resources),
                status=_SCHEDULED,
                not_before=now + not_before_in,
                description=description,
                source=source,
                duration=duration,
                start_on_approval=start_on_approval,
                end_after=end_after,
                listed_id=event_id,
            )
            if status == _STARTED:
                event.start(now)
            elif status != _SCHEDULED:
                event.status = status
            self._events[event_id] = event
            self._incarnation += 1
        return event_id

    def start_event(self, event_id: str) -> None:
        """Scheduled -> Started now (NotBefore becomes ""); a Started event stays as it is."""
        with self._lock:
            now = self._advance_locked()
            event = self._event_locked(event_id)
            if event.status != _STARTED:
                event.start(now, self._new_id_locked())
                self._incarnation += 1

    def end_event(self, event_id: str) -> None:
        """The event is over: it disappears, whatever its status."""
        with self._lock:
            self._advance_locked()
            del self._events[self._event_locked(event_id).event_id]
            self._incarnation += 1

    def cancel_event(self, event_id: str) -> None:
        """Azure called the event off: a Scheduled event disappears; a Started one can't."""
        with self._lock:
            self._advance_locked()
            event = self._event_locked(event_id)
            if event.status == _STARTED:
                raise ValueError(f"event {event_id} has started and can no longer be cancelled")
            del self._events[event.event_id]
            self._incarnation += 1

    def set_quirks(self, **flags: bool) -> None:
        """Switch quirks on (True) or off (False); see the module docstring."""
        changes = _check_quirks(flags)
        with self._lock:
            self._quirks = frozenset(
                name for name in QUIRKS if changes.get(name, name in self._quirks)
            )

    @property
    def quirks(self) -> frozenset[str]:
        with self._lock:
            return self._quirks

    def inject(self, kind: str, *, count: int = 1, delay: float = 5.0) -> None:
        """Make the next ``count`` scheduled-events GETs fail in this way (after earlier faults)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if not (math.isfinite(delay) and delay >= 0):
            raise ValueError(f"delay must be a number of seconds >= 0, got {delay}")
        with self._lock:
            self._faults.append(_Fault(kind, count, delay))

    def set_compute(self, **fields: str) -> None:
        """Change or add fields of the compute answer (a dotted name is served nested)."""
        with self._lock:
            compute = {**self._compute, **fields}
            _check_compute(compute)
            self._compute = compute

    def snapshot(self) -> dict[str, Any]:
        """The document as the newest api-version serves it, the approvals and the
        number of metadata requests so far (rejected ones included)."""
        with self._lock:
            self._advance_locked()
            return {
                **self._document_locked(_LATEST),
                "approvals": list(self._approvals),
                "requests": self._requests,
                "quirks": sorted(self._quirks),
            }

    def reset(self) -> None:
        """Back to the state right after __init__ (the server keeps running)."""
        with self._lock:
            self._reset_locked()

    # State, always under self._lock

    def _reset_locked(self) -> None:
        self._events = {}
        self._incarnation = 0
        self._approvals = []
        self._faults = deque()
        self._compute = dict(self._initial_compute)
        self._requests = 0
        self._recent = deque()
        self._quirks = frozenset(name for name, on in self._initial_quirks.items() if on)
        self._reenabled = False

    def _new_id_locked(self) -> str | None:
        """A new listed EventId for a change of status, with reissue_ids."""
        return str(uuid.uuid4()).upper() if "reissue_ids" in self._quirks else None

    def _advance_locked(self) -> float:
        """Apply what the clock says happened since the last look; return now."""
        now = self._clock()
        changed = False
        for event in list(self._events.values()):
            if event.status == _SCHEDULED and now >= event.not_before:
                event.start(event.not_before, self._new_id_locked())
                changed = True
            if (
                event.started_at is not None
                and event.end_after is not None
                and now >= event.started_at + event.end_after
            ):
                del self._events[event.event_id]
                changed = True
        if changed:
            self._incarnation += 1
        return now

    def _find_locked(self, event_id: str) -> _Event | None:
        """By the id ``schedule`` returned or by the one listed now."""
        event = self._events.get(event_id)
        if event is None:
            event = next((e for e in self._events.values() if e.listed_id == event_id), None)
        return event

    def _event_locked(self, event_id: str) -> _Event:
        event = self._find_locked(event_id)
        if event is None:
            raise UnknownEventError(f"no event {event_id}")
        return event

    def _document_locked(self, api_version: str) -> dict[str, Any]:
        quirks = self._quirks
        events = [event.to_json(api_version, quirks) for event in self._events.values()]
        if "malformed_neighbour" in quirks:
            events.insert(0, dict(_MALFORMED_NEIGHBOUR))
        document: dict[str, Any] = {"DocumentIncarnation": self._incarnation, "Events": events}
        if "extra_fields" in quirks:
            document["Region"] = "westeurope"
        return document

    def _over_rate_limit_locked(self, now: float) -> bool:
        """Count this request; True if it is one too many in the last second."""
        if self._rate_limit is None:
            return False
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        return len(self._recent) > self._rate_limit

    def _take_fault_locked(self) -> _Fault | None:
        if not self._faults:
            return None
        fault = self._faults[0]
        fault.remaining -= 1
        if fault.remaining == 0:
            self._faults.popleft()
        return fault

    # HTTP, called by the request handler's threads

    def _handle(self, method: str, target: str, headers: Message, body: bytes) -> _Reply:
        parts = urlsplit(target)
        if parts.path.startswith("/fake/"):
            return self._control(method, parts.path, body)
        if not parts.path.startswith("/metadata/"):
            return _error(404, f"not found: {parts.path}")
        with self._lock:
            self._requests += 1
            if self._over_rate_limit_locked(self._clock()):
                return _error(429, "Too many requests")
        versions = _METADATA_ROUTES.get((method, parts.path))
        if versions is None:
            if parts.path in (_EVENTS_PATH, _COMPUTE_PATH):
                return _error(405, f"{method} is not allowed on {parts.path}")
            return _error(404, f"not found: {parts.path}")
        if headers.get("X-Forwarded-For") is not None:
            return _error(400, "Bad request. X-Forwarded-For header is not allowed")
        if (headers.get("Metadata") or "").lower() != "true":
            return _error(400, "Bad request. Required metadata header not specified")
        api_version = (parse_qs(parts.query).get("api-version") or [""])[-1]
        if not api_version:
            return _error(400, "Bad request. api-version was not specified in the request")
        if api_version not in versions:
            return _error(400, f"Bad request. api-version {api_version} is invalid")
        if parts.path == _COMPUTE_PATH:
            with self._lock:
                return _json_reply(200, _nested(self._compute))
        if method == "POST":
            return self._approve(body)
        return self._events_reply(api_version)

    def _events_reply(self, api_version: str) -> _Reply:
        with self._lock:
            fault = self._take_fault_locked()
        if fault is not None and fault.kind == "slow":
            self._stopping_event.wait(fault.delay)
        with self._lock:
            self._advance_locked()
            if fault is not None and fault.kind == "reenabled":
                self._incarnation, self._reenabled = 1, True
                return _json_reply(200, {"DocumentIncarnation": 1, "Events": []})
            if self._reenabled:  # the events are listed again: a change
                self._incarnation, self._reenabled = self._incarnation + 1, False
            document = self._document_locked(api_version)
        match fault.kind if fault is not None else None:
            case "500":
                return _error(500, "Internal server error")
            case "429":
                return _error(429, "Too many requests")
            case "malformed":
                return _Reply(200, b'{"DocumentIncarnation": 1, "Events": [{"EventId": ')
            case "schema":
                events = {"EventType": "Reboot", "EventStatus": "Scheduled"}
                return _json_reply(200, {**document, "Events": events})
            case "drop":
                return _Reply(0, drop=True)
        return _json_reply(200, document)

    def _approve(self, body: bytes) -> _Reply:
        event_ids = _start_requests(body)
        if event_ids is None:
            return _error(400, 'Bad request. Expected {"StartRequests": [{"EventId": "..."}]}')
        with self._lock:
            now = self._advance_locked()
            started = False
            for event_id in event_ids:
                event = self._find_locked(event_id)
                if event is None:
                    continue
                self._approvals.append(event_id)
                if event.start_on_approval and event.status == _SCHEDULED:
                    event.start(now, self._new_id_locked())
                    started = True
            if started:
                self._incarnation += 1
        return _Reply(200)

    def _control(self, method: str, path: str, body: bytes) -> _Reply:
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return _error(400, f"body is not JSON: {exc}")
        try:
            match method, path.strip("/").split("/")[1:]:
                case "POST", ["events"]:
                    return _json_reply(200, {"EventId": self.schedule(**_schedule_args(payload))})
                case "POST", ["events", event_id, "start"]:
                    self.start_event(event_id)
                case "POST", ["events", event_id, "end"]:
                    self.end_event(event_id)
                case "POST", ["events", event_id, "cancel"]:
                    self.cancel_event(event_id)
                case "POST", ["faults"]:
                    self._control_inject(payload)
                case "POST", ["quirks"]:
                    if not isinstance(payload, dict):
                        raise ValueError("body must be a JSON object of quirk names to booleans")
                    self.set_quirks(**payload)
                case "POST", ["compute"]:
                    if not isinstance(payload, dict):
                        raise ValueError("body must be a JSON object of strings")
                    self.set_compute(**payload)
                case "GET", ["state"]:
                    pass
                case "POST", ["reset"]:
                    self.reset()
                case _:
                    return _error(404, f"no control endpoint {method} {path}")
        except UnknownEventError as exc:
            return _error(404, str(exc))
        except ValueError as exc:
            return _error(400, str(exc))
        return _json_reply(200, self.snapshot())

    def _control_inject(self, payload: object) -> None:
        if not isinstance(payload, dict) or not isinstance(payload.get("kind"), str):
            raise ValueError("body must be a JSON object with a string kind")
        unknown = sorted(set(payload) - {"kind", "count", "delay"})
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(unknown)}")
        count, delay = payload.get("count", 1), payload.get("delay", 5.0)
        if not (isinstance(count, int) and not isinstance(count, bool)):
            raise ValueError(f"count must be an integer, got {count!r}")
        if not _is_number(delay):
            raise ValueError(f"delay must be a number, got {delay!r}")
        self.inject(payload["kind"], count=count, delay=delay)
