"""A fake Google Compute Engine metadata server, served over real HTTP.

For demos and tests, ours and users': it answers the instance keys drainer reads the
way the metadata server documents them, hanging GETs included, and a control API
scripts maintenance the way Compute Engine would::

    with FakeGCP() as gce:                            # a daemon thread on 127.0.0.1:<free port>
        gce.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")   # 60 s before a live migration
        ...                                           # point the code under test at gce.url
        gce.set_maintenance("NONE")                   # the migration is over

Metadata API (header ``Metadata-Flavor: Google``; every answer carries it back, with an
``ETag``)::

    GET /computeMetadata/v1/instance/maintenance-event   NONE | MIGRATE_ON_HOST_MAINTENANCE
                                                         | TERMINATE_ON_HOST_MAINTENANCE
    GET /computeMetadata/v1/instance/preempted           FALSE | TRUE
    GET /computeMetadata/v1/instance/upcoming-maintenance[?alt=json]
        {"can_reschedule", "latest_window_start_time", "maintenance_reasons",
         "maintenance_status", "type", "window_end_time", "window_start_time"}  or  {}
    GET /computeMetadata/v1/instance/name | hostname | id | zone
        | scheduling/preemptible | scheduling/on-host-maintenance
    GET /computeMetadata/v1/project/project-id

    ?wait_for_change=true[&last_etag=E][&timeout_sec=N]  a hanging GET: answers at once
        when the value's ETag is not E, else when the value changes, or after N seconds
        with the value unchanged (no N: until it changes)
    403  Metadata-Flavor header missing or not "Google", or any X-Forwarded-For
    404  unknown key                          405  PUT or POST on a key

Control API (JSON in, JSON out, no header needed)::

    POST /fake/maintenance  {"value": "MIGRATE_ON_HOST_MAINTENANCE"}           -> state
    POST /fake/preempted    {"value": "TRUE"}                                  -> state
    POST /fake/upcoming     {"start_in": 86400, "hours": 2, "status": "PENDING",
                             "type": "SCHEDULED", "reasons": [...]}            -> state
                            or {"form": "empty" | "none" | "not_yet" | "absent"}
    POST /fake/instance     {"name": "web-1", "hostname": "web-1.c.demo.internal"} -> state
    POST /fake/faults       {"kind": "503" | "slow" | "404" | "drop", "count", "delay",
                             "key": "instance/maintenance-event" (default: every event key)}
    GET  /fake/state        {"values", "etags", "upcoming", "requests", "waiting"}
    POST /fake/reset        back to the state after __init__                   -> state

Rules the fake keeps:

- Each key has its own ETag, which changes when, and only when, its value changes; a
  hanging GET waiting on a key is answered the moment its value changes.
- ``upcoming-maintenance`` is ``{}`` with nothing scheduled (the documented form;
  ``form`` switches to the other ones real clients meet: ``NONE``, the JSON error
  ``"no notifications have been received yet, try again later"``, a 404 on machine
  types without the feature). A window advances by itself against ``clock()``:
  ``PENDING`` until its start, ``ONGOING`` until its end, then ``COMPLETE``.
- Faults (``inject``) hit the next GETs of the event keys (or of ``key``), first in,
  first out: "503" (the server's brief answer during a migration), "slow" (wait
  ``delay`` seconds, then answer), "404", "drop" (close the connection unanswered).
- ``values`` accepts only documented values unless ``odd=True``: what an unknown
  future value does to a client is a test too.

Programming errors raise ``ValueError``. All state sits behind one lock.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import Message
from typing import Any
from urllib.parse import parse_qs, urlsplit

from drainer.testing._fake import FakeService, Reply

__all__ = [
    "FAULT_KINDS",
    "MAINTENANCE_VALUES",
    "UPCOMING_FORMS",
    "FakeGCP",
]

PREFIX = "/computeMetadata/v1/"
MAINTENANCE = "instance/maintenance-event"
PREEMPTED = "instance/preempted"
UPCOMING = "instance/upcoming-maintenance"
EVENT_KEYS = (MAINTENANCE, PREEMPTED, UPCOMING)
MAINTENANCE_VALUES = ("NONE", "MIGRATE_ON_HOST_MAINTENANCE", "TERMINATE_ON_HOST_MAINTENANCE")
PREEMPTED_VALUES = ("FALSE", "TRUE")
FAULT_KINDS = ("503", "slow", "404", "drop")
UPCOMING_FORMS = ("empty", "none", "not_yet", "absent")
UPCOMING_STATUSES = ("PENDING", "ONGOING", "COMPLETE")
_NOT_YET = {"error": "no notifications have been received yet, try again later"}
_DEFAULT_INSTANCE = {
    "instance/name": "web-1",
    "instance/hostname": "web-1.c.drainer-demo.internal",
    "instance/id": "4520031799277581759",
    "instance/zone": "projects/123456789012/zones/europe-west1-b",
    "instance/scheduling/preemptible": "FALSE",
    "instance/scheduling/on-host-maintenance": "MIGRATE",
    "project/project-id": "drainer-demo",
}


@dataclass
class _Window:
    start: float
    end: float
    kind: str
    reasons: list[str]
    status: str | None  # None: follows the clock (PENDING, ONGOING, COMPLETE)
    can_reschedule: bool

    def to_json(self, now: float) -> dict[str, Any]:
        status = self.status
        if status is None:
            status = "PENDING" if now < self.start else "ONGOING" if now < self.end else "COMPLETE"
        start = _rfc3339(self.start)
        return {
            "can_reschedule": "true" if self.can_reschedule else "false",
            "latest_window_start_time": start,
            "maintenance_reasons": list(self.reasons),
            "maintenance_status": status,
            "type": self.kind,
            "window_end_time": _rfc3339(self.end),
            "window_start_time": start,
        }


@dataclass
class _Fault:
    kind: str
    remaining: int
    delay: float
    key: str | None


def _rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reply(status: int, body: bytes, etag: str = "", kind: str = "application/text") -> Reply:
    """An answer as the metadata server gives it: ``Metadata-Flavor: Google``, an ETag."""
    headers = (("Metadata-Flavor", "Google"), *((("ETag", etag),) if etag else ()))
    return Reply(status, body, content_type=kind, headers=headers)


def _text(status: int, text: str, etag: str = "") -> Reply:
    return _reply(status, text.encode(), etag)


def _json(status: int, payload: object) -> Reply:
    return _reply(status, json.dumps(payload).encode(), kind="application/json")


def _etag(key: str, version: int) -> str:
    return hashlib.sha256(f"{key}#{version}".encode()).hexdigest()[:16]


def _number(value: object, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


class FakeGCP(FakeService):
    """A fake metadata server on ``url``; see the module docstring for its API."""

    _thread_name = "fake-gcp"
    server_version = "Metadata Server for VM"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        instance: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._host = host
        self._port = port
        self._clock = clock
        self._initial = {**_DEFAULT_INSTANCE, **(instance or {})}
        self._changed = threading.Condition()  # its lock guards all the state
        self._stopping_event = threading.Event()
        self._values: dict[str, str] = {}
        self._versions: dict[str, int] = {}
        self._window: _Window | None = None
        self._form = "empty"
        self._faults: deque[_Fault] = deque()
        self._requests = 0
        self._waiting = 0
        self._reset_locked()

    # Lifecycle (testing._fake.FakeService: start, stop, with, url, serve_forever)

    def _stopping(self) -> None:
        super()._stopping()
        with self._changed:
            self._changed.notify_all()  # hanging GETs answer now

    # Scripting maintenance

    def set_maintenance(self, value: str, *, odd: bool = False) -> None:
        """``instance/maintenance-event``'s value (``odd``: any non-empty text)."""
        self._set(MAINTENANCE, value, MAINTENANCE_VALUES, odd)

    def set_preempted(self, value: str = "TRUE", *, odd: bool = False) -> None:
        """``instance/preempted``'s value: ``TRUE`` when Compute Engine preempts the VM."""
        self._set(PREEMPTED, value, PREEMPTED_VALUES, odd)

    def set_upcoming(
        self,
        *,
        start_in: float = 86400.0,
        hours: float = 2.0,
        kind: str = "SCHEDULED",
        reasons: list[str] | None = None,
        status: str | None = None,
        can_reschedule: bool = True,
    ) -> None:
        """A maintenance window ``start_in`` seconds from now, ``hours`` long. ``status``
        pins ``maintenance_status``; None lets it follow the clock."""
        start_in, hours = _number(start_in, "start_in"), _number(hours, "hours")
        if hours <= 0:
            raise ValueError(f"hours must be more than 0, got {hours}")
        if kind not in ("SCHEDULED", "UNSCHEDULED"):
            raise ValueError(f"type must be SCHEDULED or UNSCHEDULED, got {kind!r}")
        if status is not None and status not in UPCOMING_STATUSES:
            raise ValueError(f"status must be one of {', '.join(UPCOMING_STATUSES)}")
        with self._changed:
            start = self._clock() + start_in
            self._window = _Window(
                start=start,
                end=start + hours * 3600,
                kind=kind,
                reasons=list(reasons or ["PLANNED_UPDATE"]),
                status=status,
                can_reschedule=can_reschedule,
            )
            self._bump_locked(UPCOMING)

    def clear_upcoming(self, form: str = "empty") -> None:
        """Nothing scheduled, answered in one of ``UPCOMING_FORMS``."""
        if form not in UPCOMING_FORMS:
            raise ValueError(f"form must be one of {', '.join(UPCOMING_FORMS)}, got {form!r}")
        with self._changed:
            self._window, self._form = None, form
            self._bump_locked(UPCOMING)

    def set_instance(self, **fields: str) -> None:
        """Change ``name``, ``hostname``, ``id``... (keys under ``instance/``)."""
        with self._changed:
            for name, value in fields.items():
                if not isinstance(value, str):
                    raise ValueError(f"{name} must be a string, got {value!r}")
                key = f"instance/{name.replace('_', '-')}"
                if key not in self._values:
                    raise ValueError(f"no instance key {name!r}")
                self._values[key] = value
                self._bump_locked(key)

    def inject(
        self, kind: str, *, count: int = 1, delay: float = 5.0, key: str | None = None
    ) -> None:
        """Make the next ``count`` GETs of the event keys (or of ``key``) fail this way."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        if _number(delay, "delay") < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        if key is not None and key not in EVENT_KEYS:
            raise ValueError(f"key must be one of {', '.join(EVENT_KEYS)}, got {key!r}")
        with self._changed:
            self._faults.append(_Fault(kind, count, delay, key))

    def snapshot(self) -> dict[str, Any]:
        """The values, their ETags, the window, requests so far and hanging GETs waiting."""
        with self._changed:
            return {
                "values": dict(self._values),
                "etags": {key: self._etag_locked(key) for key in self._values},
                "upcoming": self._upcoming_locked(),
                "requests": self._requests,
                "waiting": self._waiting,
            }

    def reset(self) -> None:
        with self._changed:
            self._reset_locked()
            self._changed.notify_all()

    # State, always under self._changed

    def _set(self, key: str, value: str, allowed: tuple[str, ...], odd: bool) -> None:
        if not isinstance(value, str) or not (value in allowed or (odd and value)):
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        with self._changed:
            if self._values[key] != value:
                self._values[key] = value
                self._bump_locked(key)

    def _reset_locked(self) -> None:
        self._values = {**self._initial, MAINTENANCE: "NONE", PREEMPTED: "FALSE"}
        self._versions = {key: self._versions.get(key, 0) + 1 for key in (*self._values, UPCOMING)}
        self._window, self._form = None, "empty"
        self._faults = deque()
        self._requests = 0

    def _bump_locked(self, key: str) -> None:
        self._versions[key] = self._versions.get(key, 0) + 1
        self._changed.notify_all()

    def _etag_locked(self, key: str) -> str:
        return _etag(key, self._versions.get(key, 0))

    def _upcoming_locked(self) -> Any:
        if self._window is not None:
            return self._window.to_json(self._clock())
        return {"empty": {}, "none": "NONE", "not_yet": _NOT_YET, "absent": None}[self._form]

    def _take_fault_locked(self, key: str) -> _Fault | None:
        for fault in self._faults:
            if fault.key in (None, key):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _answer_locked(self, key: str, alt: str) -> Reply:
        etag = self._etag_locked(key)
        if key == UPCOMING:
            doc = self._upcoming_locked()
            if doc is None:
                return _text(404, "Not Found")
            if isinstance(doc, str):
                return _text(200, doc, etag)
            return _reply(200, json.dumps(doc).encode(), etag, "application/json")
        value = self._values[key]
        if alt == "json":
            return _reply(200, json.dumps(value).encode(), etag, "application/json")
        return _text(200, value, etag)

    # HTTP, called by the request handler's threads

    def _handle(self, method: str, target: str, headers: Message, body: bytes) -> Reply:
        parts = urlsplit(target)
        if parts.path.startswith("/fake/"):
            return self._control(method, parts.path, body)
        if not parts.path.startswith(PREFIX):
            return _text(404, "Not Found")
        key = parts.path[len(PREFIX) :].rstrip("/")
        with self._changed:
            self._requests += 1
            known = key in self._values or key == UPCOMING
        if not known:
            return _text(404, "Not Found")
        if method != "GET":
            return _text(405, "Method Not Allowed")
        if headers.get("X-Forwarded-For") is not None:
            return _text(403, "Forbidden: requests with X-Forwarded-For are not accepted")
        if headers.get("Metadata-Flavor") != "Google":
            return _text(403, "Forbidden: Missing Metadata-Flavor:Google header.")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        fault = None
        if key in EVENT_KEYS:
            with self._changed:
                fault = self._take_fault_locked(key)
        if fault is not None:
            match fault.kind:
                case "503":
                    return _text(503, "Service Unavailable")
                case "404":
                    return _text(404, "Not Found")
                case "drop":
                    return Reply(0, drop=True)
                case "slow":
                    self._stopping_event.wait(fault.delay)
        if query.get("wait_for_change", "").lower() == "true":
            return self._hang(key, query)
        with self._changed:
            return self._answer_locked(key, query.get("alt", ""))

    def _hang(self, key: str, query: dict[str, str]) -> Reply:
        timeout: float | None = None
        if "timeout_sec" in query:
            try:
                timeout = float(int(query["timeout_sec"]))
            except ValueError:
                return _text(400, "timeout_sec must be an integer")
        with self._changed:
            start = self._etag_locked(key)
            last = query.get("last_etag") or start
            deadline = None if timeout is None else time.monotonic() + timeout
            self._waiting += 1
            try:
                while self._etag_locked(key) == last and not self._stopping_event.is_set():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._changed.wait(left)
            finally:
                self._waiting -= 1
            return self._answer_locked(key, query.get("alt", ""))

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return _json(400, {"error": f"body is not JSON: {exc}"})
        try:
            if not isinstance(payload, dict):
                raise ValueError("body must be a JSON object")
            match method, path.strip("/").split("/")[1:]:
                case "POST", ["maintenance"]:
                    self.set_maintenance(payload.get("value", ""), odd=payload.get("odd", False))
                case "POST", ["preempted"]:
                    self.set_preempted(payload.get("value", "TRUE"), odd=payload.get("odd", False))
                case "POST", ["upcoming"]:
                    self._control_upcoming(payload)
                case "POST", ["instance"]:
                    self.set_instance(**payload)
                case "POST", ["faults"]:
                    unknown = sorted(set(payload) - {"kind", "count", "delay", "key"})
                    if unknown:
                        raise ValueError(f"unknown keys: {', '.join(unknown)}")
                    count = payload.get("count", 1)
                    if not isinstance(count, int) or isinstance(count, bool):
                        raise ValueError(f"count must be an integer, got {count!r}")
                    self.inject(
                        str(payload.get("kind")),
                        count=count,
                        delay=payload.get("delay", 5.0),
                        key=payload.get("key"),
                    )
                case "GET", ["state"]:
                    pass
                case "POST", ["reset"]:
                    self.reset()
                case _:
                    return _json(404, {"error": f"no control endpoint {method} {path}"})
        except (ValueError, TypeError) as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, self.snapshot())

    def _control_upcoming(self, payload: dict[str, Any]) -> None:
        if "form" in payload:
            if len(payload) != 1:
                raise ValueError("form stands alone")
            self.clear_upcoming(str(payload["form"]))
            return
        keys = {"start_in", "hours", "status", "type", "reasons", "can_reschedule"}
        unknown = sorted(set(payload) - keys)
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(unknown)}")
        reasons = payload.get("reasons")
        if reasons is not None and not (
            isinstance(reasons, list) and all(isinstance(r, str) for r in reasons)
        ):
            raise ValueError(f"reasons must be a list of strings, got {reasons!r}")
        self.set_upcoming(
            start_in=payload.get("start_in", 86400.0),
            hours=payload.get("hours", 2.0),
            kind=payload.get("type", "SCHEDULED"),
            reasons=reasons,
            status=payload.get("status"),
            can_reschedule=bool(payload.get("can_reschedule", True)),
        )
