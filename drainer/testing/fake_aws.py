"""A fake AWS EC2 instance metadata service (IMDS), served over real HTTP.

For demos and tests, ours and users': the paths drainer reads, with the payloads of
AWS's documentation and of its own mock (amazon-ec2-metadata-mock, "AEMM") field for
field, and a control API that scripts maintenance::

    with FakeAWS() as imds:                          # a daemon thread on 127.0.0.1:<free port>
        event_id = imds.schedule("system-reboot", not_before_in=600)
        imds.spot("terminate")                       # a Spot interruption in two minutes
        imds.complete(event_id)                      # State active -> completed

Metadata API (IMDSv2: ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds:
1..21600`` answers a token, then every GET carries ``X-aws-ec2-metadata-token``)::

    PUT /latest/api/token                                   200 text/plain token, TTL header
    GET /latest/meta-data/events/maintenance/scheduled      200 [event, ...]  ([] or 404: none)
    GET /latest/meta-data/spot/instance-action              200 {"action", "time"} | 404
    GET /latest/meta-data/spot/termination-time             200 time (text) | 404
    GET /latest/meta-data/events/recommendations/rebalance  200 {"noticeTime"} | 404
    GET /latest/meta-data/autoscaling/target-lifecycle-state  200 text | 404 (never set)
    GET /latest/meta-data/instance-id | local-hostname | hostname   200 text
    GET /latest/dynamic/instance-identity/document          200 {"instanceId", "pendingTime", ...}

    event = {"Code", "Description", "State", "EventId", "NotBefore", "NotAfter",
             "NotBeforeDeadline"}   times as "21 Jan 2019 09:00:43 GMT"; NotAfter and
                                    NotBeforeDeadline may be absent

    400  PUT without a TTL header, or a TTL outside 1..21600
    401  GET without a token (``tokens="required"``, the default), with an unknown one,
         or with one past its TTL
    403  PUT carrying X-Forwarded-For      404  unknown path      405  GET on the token path

Control API (JSON in, JSON out, no token)::

    POST /fake/scheduled           {"code", "not_before_in", "not_after_in", "deadline_in",
                                    "state", "description"}          -> {"EventId": id}
                                   (only code required; "not_after_in": null leaves it out)
    POST /fake/scheduled/<id>/state {"state": "completed" | "canceled" | "active"} -> state
    POST /fake/scheduled/<id>/remove  no longer listed                -> state
    POST /fake/spot                {"action", "in"}                   -> state
    POST /fake/spot/clear          POST /fake/rebalance {"at_in"}   POST /fake/rebalance/clear
    POST /fake/lifecycle           {"state": "Terminated" | ... | null}  -> state
    POST /fake/tokens/expire       every token given so far is refused from now on
    POST /fake/faults              {"kind", "count", "delay", "path"} -> state
    POST /fake/quirks              {"spot_time_moves": true, ...}     -> state
    GET  /fake/state               POST /fake/reset

Faults (``inject``) hit the next metadata GETs, first in, first out (only GETs of
``path`` when one is given): "503" (a burst: ``count`` of them), "401" (as for an
expired token), "404", "slow" (wait ``delay`` seconds, then answer), "malformed"
(invalid JSON with a 200), "html" (a proxy's HTML page with a 200), "drop" (close
the connection without an answer). With ``path="/latest/api/token"`` they hit the
token PUTs instead ("slow" or "drop" is how a hop limit of 1 looks from a container:
no answer).
``expire_tokens()`` makes every token given so far fail with 401, as a TTL ending would.

Quirks (off by default; ``FakeAWS(quirks=...)``, ``set_quirks`` or ``POST /fake/quirks``):

- ``spot_time_moves``: the Spot notice's ``time`` is two minutes from each request, as
  AEMM serves it (and as AWS may move it: aws-node-termination-handler#146).
- ``scheduled_404``: no scheduled events is a 404, not ``[]`` (seen on real instances).

``tokens`` chooses the IMDS mode: "required" (IMDSv2 only, the default), "optional"
(IMDSv1 answered too) or "none" (no token endpoint: the PUT is a 404, as on an old
service or where a hop limit drops it). Times read the injected ``clock``.
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import Message
from typing import Any
from urllib.parse import urlsplit

from drainer.testing._fake import FakeService, Reply, check_quirks

__all__ = [
    "CODES",
    "DEFAULT_INSTANCE_ID",
    "FAULT_KINDS",
    "LIFECYCLE_STATES",
    "QUIRKS",
    "SPOT_ACTIONS",
    "FakeAWS",
]

CODES = (
    "instance-reboot",
    "system-reboot",
    "system-maintenance",
    "instance-retirement",
    "instance-stop",
)
SPOT_ACTIONS = ("terminate", "stop", "hibernate")
LIFECYCLE_STATES = (
    "InService",
    "Terminated",
    "Detached",
    "Standby",
    "Warmed:Hibernated",
    "Warmed:Running",
    "Warmed:Stopped",
    "Warmed:Terminated",
)
_HTML = b"<!DOCTYPE html>\n<html><body>\n<h1>Proxy</h1>\n</body></html>\n"
FAULT_KINDS = ("503", "401", "404", "slow", "malformed", "html", "drop")
QUIRKS = ("spot_time_moves", "scheduled_404")
STATES = ("active", "completed", "canceled")
DEFAULT_INSTANCE_ID = "i-1234567890abcdef0"  # AEMM's
DEFAULT_HOSTNAME = "ip-172-16-34-43.ec2.internal"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL = 21600

_META = "/latest/meta-data/"
_SCHEDULED = _META + "events/maintenance/scheduled"
_SPOT = _META + "spot/instance-action"
_TERMINATION_TIME = _META + "spot/termination-time"
_REBALANCE = _META + "events/recommendations/rebalance"
_LIFECYCLE = _META + "autoscaling/target-lifecycle-state"
_IDENTITY = "/latest/dynamic/instance-identity/document"
_TOKEN = "/latest/api/token"


def _page(status: int, title: str) -> bytes:
    """IMDS's error pages (AEMM copies them)."""
    return (
        '<?xml version="1.0" encoding="iso-8859-1"?>\n'
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"\n'
        '\t"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">\n'
        '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
        f" <head>\n  <title>{status} - {title}</title>\n </head>\n"
        f" <body>\n  <h1>{status} - {title}</h1>\n </body>\n</html>\n"
    ).encode()


def aws_time(moment: float) -> str:
    """``21 Jan 2019 09:00:43 GMT`` (Go's ``2 Jan 2006 15:04:05 GMT``: no leading zero)."""
    at = datetime.fromtimestamp(moment, timezone.utc)
    return f"{at.day} {at:%b %Y %H:%M:%S} GMT"


def rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Scheduled:
    event_id: str
    code: str
    state: str
    not_before: float
    not_after: float | None
    deadline: float | None
    description: str

    def to_json(self) -> dict[str, str]:
        prefix = {"completed": "[Completed] ", "canceled": "[Canceled] "}.get(self.state, "")
        out = {
            "Code": self.code,
            "Description": prefix + self.description,
            "State": self.state,
            "EventId": self.event_id,
            "NotBefore": aws_time(self.not_before),
        }
        if self.not_after is not None:
            out["NotAfter"] = aws_time(self.not_after)
        if self.deadline is not None:
            out["NotBeforeDeadline"] = aws_time(self.deadline)
        return out


@dataclass
class _Fault:
    kind: str
    remaining: int
    delay: float
    path: str | None


def _text(status: int, text: str) -> Reply:
    return Reply(status, text.encode(), "text/plain")


def _json(payload: object, *, indent: str | None = "\t") -> Reply:
    return Reply(200, json.dumps(payload, indent=indent).encode(), "application/json")


def _error(status: int) -> Reply:
    title = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
    return Reply(status, _page(status, title.get(status, "Error")), "text/html")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class FakeAWS(FakeService):
    """A fake EC2 IMDS on ``url``; see the module docstring for its HTTP and control API."""

    _thread_name = "fake-aws"
    server_version = "EC2ws"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        instance_id: str = DEFAULT_INSTANCE_ID,
        local_hostname: str = DEFAULT_HOSTNAME,
        tokens: str = "required",
        clock: Callable[[], float] = time.time,
        quirks: Iterable[str] = (),
    ) -> None:
        if tokens not in ("required", "optional", "none"):
            raise ValueError(f"tokens must be required, optional or none, got {tokens!r}")
        if not instance_id.startswith("i-"):
            raise ValueError(f"an instance id starts with i-, got {instance_id!r}")
        self._host, self._port = host, port
        self._instance_id = instance_id
        self._hostname = local_hostname
        self._tokens_mode = tokens
        self._clock = clock
        self._initial_quirks = check_quirks(dict.fromkeys(quirks, True), QUIRKS)
        self._lock = threading.Lock()
        self._stopping_event = threading.Event()
        self._scheduled: dict[str, _Scheduled] = {}
        self._spot: tuple[str, float] | None = None  # (action, time)
        self._rebalance: float | None = None  # noticeTime
        self._lifecycle: str | None = None
        self._tokens: dict[str, float] = {}  # token -> expiry (clock time)
        self._faults: deque[_Fault] = deque()
        self._quirks: frozenset[str] = frozenset()
        self._reset_locked()

    # Scripting maintenance

    def schedule(
        self,
        code: str,
        *,
        not_before_in: float = 900.0,
        not_after_in: float | None = 7 * 86400.0,
        deadline_in: float | None = None,
        state: str = "active",
        description: str = "",
    ) -> str:
        """Add a scheduled event and return its EventId. ``not_after_in=None``: no NotAfter
        (AWS leaves it out for some events); times count from now."""
        if code not in CODES:
            raise ValueError(f"code must be one of {', '.join(CODES)}, got {code!r}")
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        for name, value in (
            ("not_before_in", not_before_in),
            ("not_after_in", not_after_in),
            ("deadline_in", deadline_in),
        ):
            if value is not None and not _number(value):
                raise ValueError(f"{name} must be a number of seconds, got {value!r}")
        event_id = "instance-event-" + secrets.token_hex(9)[:17]
        with self._lock:
            now = self._clock()
            self._scheduled[event_id] = _Scheduled(
                event_id=event_id,
                code=code,
                state=state,
                not_before=now + not_before_in,
                not_after=None if not_after_in is None else now + not_after_in,
                deadline=None if deadline_in is None else now + deadline_in,
                description=description or f"The instance is scheduled for {code}",
            )
        return event_id

    def set_state(self, event_id: str, state: str) -> None:
        """active -> completed or canceled (the Description gains ``[Completed]``...)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        with self._lock:
            self._event_locked(event_id).state = state

    def complete(self, event_id: str) -> None:
        self.set_state(event_id, "completed")

    def cancel(self, event_id: str) -> None:
        self.set_state(event_id, "canceled")

    def remove(self, event_id: str) -> None:
        """The event is no longer listed (AWS moves it to events/maintenance/history)."""
        with self._lock:
            del self._scheduled[self._event_locked(event_id).event_id]

    def spot(self, action: str = "terminate", *, in_seconds: float = 120.0) -> None:
        """A Spot interruption notice: ``action`` at now + ``in_seconds``; again to move it."""
        if action not in SPOT_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(SPOT_ACTIONS)}, got {action!r}")
        if not _number(in_seconds):
            raise ValueError(f"in_seconds must be a number, got {in_seconds!r}")
        with self._lock:
            self._spot = (action, self._clock() + in_seconds)

    def clear_spot(self) -> None:
        with self._lock:
            self._spot = None

    def rebalance(self, *, at_in: float = 0.0) -> None:
        """A rebalance recommendation, noticed at now + ``at_in``."""
        if not _number(at_in):
            raise ValueError(f"at_in must be a number, got {at_in!r}")
        with self._lock:
            self._rebalance = self._clock() + at_in

    def clear_rebalance(self) -> None:
        with self._lock:
            self._rebalance = None

    def set_lifecycle(self, state: str | None) -> None:
        """The Auto Scaling target lifecycle state (None: never set, a 404)."""
        if state is not None and state not in LIFECYCLE_STATES:
            raise ValueError(f"state must be one of {', '.join(LIFECYCLE_STATES)} or None")
        with self._lock:
            self._lifecycle = state

    def restart_instance(self) -> None:
        """A stop and start: a new ``pendingTime``; notices and the tokens are gone."""
        with self._lock:
            self._pending = self._clock()
            self._spot, self._rebalance, self._tokens = None, None, {}

    def expire_tokens(self) -> None:
        """Every token given so far is refused (401) from now on."""
        with self._lock:
            self._tokens = {}

    def inject(
        self, kind: str, *, count: int = 1, delay: float = 5.0, path: str | None = None
    ) -> None:
        """Make the next ``count`` metadata GETs (of ``path`` only, if given) fail this way."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"count must be an integer of at least 1, got {count!r}")
        if not (_number(delay) and delay >= 0):
            raise ValueError(f"delay must be a number of seconds >= 0, got {delay!r}")
        if path is not None and not (isinstance(path, str) and path.startswith("/latest/")):
            raise ValueError(f"path must start with /latest/, got {path!r}")
        with self._lock:
            self._faults.append(_Fault(kind, count, float(delay), path))

    def set_quirks(self, **flags: bool) -> None:
        changes = check_quirks(flags, QUIRKS)
        with self._lock:
            self._quirks = frozenset(
                name for name in QUIRKS if changes.get(name, name in self._quirks)
            )

    def snapshot(self) -> dict[str, Any]:
        """What is served now, and the counts of requests so far."""
        with self._lock:
            now = self._clock()
            return {
                "scheduled": [e.to_json() for e in self._scheduled.values()],
                "spot": self._spot_json_locked(now),
                "rebalance": self._rebalance_json_locked(),
                "lifecycle": self._lifecycle,
                "requests": self._requests,
                "token_puts": self._token_puts,
                "unauthorized": self._unauthorized,
                "quirks": sorted(self._quirks),
                "approvals": [],  # IMDS has no approval
            }

    def reset(self) -> None:
        with self._lock:
            self._reset_locked()

    # State, always under self._lock

    def _reset_locked(self) -> None:
        self._scheduled = {}
        self._spot = self._rebalance = self._lifecycle = None
        self._tokens = {}
        self._faults = deque()
        self._requests = 0
        self._token_puts = 0
        self._unauthorized = 0
        self._pending = self._clock()
        self._quirks = frozenset(n for n, on in self._initial_quirks.items() if on)

    def _event_locked(self, event_id: str) -> _Scheduled:
        event = self._scheduled.get(event_id)
        if event is None:
            raise LookupError(f"no scheduled event {event_id}")
        return event

    def _spot_json_locked(self, now: float) -> dict[str, str] | None:
        if self._spot is None:
            return None
        action, at = self._spot
        if "spot_time_moves" in self._quirks:
            at = now + 120.0
        return {"action": action, "time": rfc3339(at)}

    def _rebalance_json_locked(self) -> dict[str, str] | None:
        return None if self._rebalance is None else {"noticeTime": rfc3339(self._rebalance)}

    def _take_fault_locked(self, path: str) -> _Fault | None:
        """The next fault for a request of ``path``; a token PUT's only if named."""
        wanted = (path,) if path == _TOKEN else (None, path)
        fault = next((f for f in self._faults if f.path in wanted), None)
        if fault is not None:
            fault.remaining -= 1
            if fault.remaining == 0:
                self._faults.remove(fault)
        return fault

    # HTTP, called by the request handler's threads

    def _handle(self, method: str, target: str, headers: Message, body: bytes) -> Reply:
        path = urlsplit(target).path
        if path.startswith("/fake/"):
            return self._control(method, path, body)
        if path != "/" and path.endswith("/"):
            path = path.rstrip("/")  # IMDS ignores a trailing slash
        if path == _TOKEN:
            with self._lock:
                fault = self._take_fault_locked(_TOKEN) if method == "PUT" else None
            return self._faulty(fault) or self._put_token(method, headers)
        if method != "GET":
            return _error(405)
        with self._lock:
            self._requests += 1
            denied = self._denied_locked(headers.get(TOKEN_HEADER))
            if denied:
                self._unauthorized += 1
                return _error(401)
            fault = self._take_fault_locked(path)
        faulty = self._faulty(fault)
        if faulty is not None:
            return faulty
        with self._lock:
            return self._metadata_locked(path)

    def _faulty(self, fault: _Fault | None) -> Reply | None:
        """The answer ``fault`` makes (None: the normal one, maybe after a "slow" wait)."""
        if fault is not None and fault.kind == "slow":
            self._stopping_event.wait(fault.delay)
        match fault.kind if fault is not None else None:
            case "503":
                return _text(503, "Service Unavailable")
            case "401":
                return _error(401)
            case "404":
                return _error(404)
            case "malformed":
                return Reply(200, b'[{"Code": "system-reboot", "State": ', "application/json")
            case "html":  # a proxy's or captive portal's page, answered with a 200
                return Reply(200, _HTML, "text/html; charset=utf-8")
            case "drop":
                return Reply(0, drop=True)
        return None

    def _denied_locked(self, token: str | None) -> bool:
        if token is None:
            return self._tokens_mode == "required"
        expiry = self._tokens.get(token)
        return self._tokens_mode == "none" or expiry is None or self._clock() >= expiry

    def _put_token(self, method: str, headers: Message) -> Reply:
        if self._tokens_mode == "none":
            return _error(404)
        if method != "PUT":
            return _error(405)
        if headers.get("X-Forwarded-For") is not None:
            return _error(403)
        ttl = (headers.get(TTL_HEADER) or "").strip()
        if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL:
            return _error(400)
        token = base64.b64encode(secrets.token_bytes(32)).decode()
        with self._lock:
            self._token_puts += 1
            self._tokens[token] = self._clock() + int(ttl)
        return Reply(200, token.encode(), "text/plain", headers=((TTL_HEADER, ttl),))

    def _metadata_locked(self, path: str) -> Reply:
        now = self._clock()
        if path == _SCHEDULED:
            events = [e.to_json() for e in self._scheduled.values()]
            if not events and "scheduled_404" in self._quirks:
                return _error(404)
            # as AWS's documentation prints it
            return Reply(
                200,
                json.dumps(events, indent=2, separators=(",", " : ")).encode(),
                "application/json",
            )
        if path in (_SPOT, _TERMINATION_TIME):
            spot = self._spot_json_locked(now)
            if spot is None:
                return _error(404)
            return _json(spot) if path == _SPOT else _text(200, spot["time"])
        if path == _REBALANCE:
            notice = self._rebalance_json_locked()
            return _error(404) if notice is None else _json(notice)
        if path == _LIFECYCLE:
            return _error(404) if self._lifecycle is None else _text(200, self._lifecycle)
        if path == _META + "instance-id":
            return _text(200, self._instance_id)
        if path in (_META + "local-hostname", _META + "hostname"):
            return _text(200, self._hostname)
        if path == _IDENTITY:
            return _json(self._identity_locked())
        return _error(404)

    def _identity_locked(self) -> dict[str, Any]:
        return {  # AEMM's defaults, with this fake's instance and its last start
            "accountId": "0123456789",
            "imageId": "ami-0b69ea66ff7391e80",
            "availabilityZone": "us-east-1f",
            "ramdiskId": None,
            "kernelId": None,
            "devpayProductCodes": None,
            "marketplaceProductCodes": None,
            "version": "2017-09-30",
            "privateIp": "10.0.7.10",
            "billingProducts": None,
            "instanceId": self._instance_id,
            "pendingTime": rfc3339(self._pending),
            "architecture": "x86_64",
            "instanceType": "m4.xlarge",
            "region": "us-east-1",
        }

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            return Reply(400, json.dumps({"error": f"body is not JSON: {exc}"}).encode())
        try:
            if not isinstance(payload, dict):
                raise ValueError("body must be a JSON object")
            reply = self._command(method, path.strip("/").split("/")[1:], payload)
        except LookupError as exc:
            return Reply(404, json.dumps({"error": str(exc)}).encode(), "application/json")
        except (TypeError, ValueError) as exc:
            return Reply(400, json.dumps({"error": str(exc)}).encode(), "application/json")
        return _json(reply if reply is not None else self.snapshot(), indent=None)

    def _command(self, method: str, parts: list[str], args: dict[str, Any]) -> Any:
        match method, parts:
            case "POST", ["scheduled"]:
                return {"EventId": self.schedule(**_only(args, "code", *_SCHEDULE_KEYS))}
            case "POST", ["scheduled", event_id, "state"]:
                self.set_state(event_id, str(_only(args, "state").get("state")))
            case "POST", ["scheduled", event_id, "remove"]:
                self.remove(event_id)
            case "POST", ["spot"]:
                args = _only(args, "action", "in")
                self.spot(args.get("action", "terminate"), in_seconds=args.get("in", 120.0))
            case "POST", ["spot", "clear"]:
                self.clear_spot()
            case "POST", ["rebalance"]:
                self.rebalance(**_only(args, "at_in"))
            case "POST", ["rebalance", "clear"]:
                self.clear_rebalance()
            case "POST", ["lifecycle"]:
                self.set_lifecycle(_only(args, "state").get("state"))
            case "POST", ["tokens", "expire"]:
                self.expire_tokens()
            case "POST", ["faults"]:
                args = _only(args, "kind", "count", "delay", "path")
                self.inject(str(args.pop("kind", "")), **args)
            case "POST", ["quirks"]:
                self.set_quirks(**args)
            case "POST", ["instance", "restart"]:
                self.restart_instance()
            case "GET", ["state"]:
                pass
            case "POST", ["reset"]:
                self.reset()
            case _:
                raise LookupError(f"no control endpoint {method} /fake/{'/'.join(parts)}")
        return None


_SCHEDULE_KEYS = ("not_before_in", "not_after_in", "deadline_in", "state", "description")


def _only(args: dict[str, Any], *keys: str) -> dict[str, Any]:
    unknown = sorted(set(args) - set(keys))
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(unknown)} (known: {', '.join(keys)})")
    return args
