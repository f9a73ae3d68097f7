"""AWS EC2, read from the instance metadata service (IMDS): scheduled events, Spot
interruption notices, rebalance recommendations and the Auto Scaling target lifecycle
state, each translated into ``MaintenanceEvent``s.

What the VM survives and what removes it (the core's rules ``events.*`` decide; these
are the types the source gives):

    scheduled  instance-reboot, system-reboot   Reboot     drained, back after the reboot
               system-maintenance               Freeze     drained, back once completed
               instance-retirement, -stop       Terminate  removed
    spot       terminate, stop, hibernate       Preempt    removed
    rebalance  a recommendation                 Rebalance  ignored unless events.Rebalance
    autoscaling  Terminated, Warmed:Terminated  Terminate  removed (under way)
                 Warmed:Stopped, -:Hibernated   Reboot     drained, back once InService

The AWS code is kept as the event's ``raw_type`` (logs and status show
``system-reboot``). A scheduled event is ``Scheduled`` while its State is ``active``;
``completed`` and ``canceled`` mean over; any other State is pending, drained at once.
IMDS speaks only of the instance asking, so every event names this VM (its resources are
``node_names()``); there is nothing to approve (``AwsConfig.can_approve`` is False).

IMDSv2 only, unless ``imdsv1`` is set: a token ``PUT`` with a TTL, kept until shortly
before it expires, dropped and fetched again on a 401 (the request is retried once).
Requests go straight to the endpoint (proxy variables ignored, no redirects). 429, 5xx
and timeouts are retried with backoff inside one poll. Each path is read on its own: one
that still fails makes the listing ``partial`` (the core keeps an event it does not
list), and the poll fails with SourceError only when no notice was read at all, or when
the service gave no answer at the first path (then the caller keeps what it knew); no
answer on a later one leaves it and the rest unread, and that path is asked last from
then on. A 404 means "none" on the four event paths (AWS answers ``[]`` or a 404 for no
scheduled events); any other answer that cannot be read is either an event read
liberally (a Spot notice whose ``time`` is unreadable is due now) or a failed poll,
never "no event".

Spot and rebalance notices and the lifecycle state have no id: theirs is derived from
fields that stay put while the notice is listed (the action, the instance id and the
time the instance last started, from the identity document), never from ``time``, which
AWS (and its own mock) may move while the notice stands.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import field_validator

from drainer._types import Duration, HttpUrl
from drainer.errors import PayloadError, SourceError
from drainer.model import EventStatus, EventType, Listing, MaintenanceEvent
from drainer.sources._metadata import MetadataHTTP, Retryable, Unreachable, Unread
from drainer.sources._times import parse_time
from drainer.sources.base import SourceConfig, SourcePlugin

if TYPE_CHECKING:  # imported at the first request
    import httpx

__all__ = [
    "SCHEDULED_CODES",
    "SPOT_ACTIONS",
    "AwsConfig",
    "AwsSource",
    "parse_lifecycle",
    "parse_rebalance",
    "parse_scheduled",
    "parse_spot",
]

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
SCHEDULED_PATH = "/latest/meta-data/events/maintenance/scheduled"
SPOT_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
LIFECYCLE_PATH = "/latest/meta-data/autoscaling/target-lifecycle-state"
_NOTICE_PATHS = frozenset({SPOT_PATH, REBALANCE_PATH, LIFECYCLE_PATH})
_PATHS = (SPOT_PATH, SCHEDULED_PATH, LIFECYCLE_PATH, REBALANCE_PATH)
IDENTITY_PATH = "/latest/dynamic/instance-identity/document"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"
HOSTNAME_PATH = "/latest/meta-data/local-hostname"
MAX_TOKEN_TTL = 21600

SCHEDULED_CODES = {
    "instance-reboot": EventType.REBOOT,
    "system-reboot": EventType.REBOOT,
    "system-maintenance": EventType.FREEZE,
    "instance-retirement": EventType.TERMINATE,
    "instance-stop": EventType.TERMINATE,
}
SPOT_ACTIONS = ("terminate", "stop", "hibernate")
# target lifecycle states that end the instance; those that stop it for a while (back
# to a warm pool on scale in, with ReuseOnScaleIn: drained until InService again); the
# others (InService, Standby, Detached, Warmed:Running: it keeps running) are no
# maintenance of this node
_ENDING = frozenset({"terminated", "warmed:terminated"})
_PAUSING = frozenset({"warmed:stopped", "warmed:hibernated"})
_LIFECYCLE_STATES = frozenset({"inservice", "standby", "detached", "warmed:running"})
_OVER = frozenset({"completed", "canceled", "cancelled"})

log = logging.getLogger("drainer")


class AwsConfig(SourceConfig):
    """The ``source:`` section for AWS (``type: aws``)."""

    can_approve: ClassVar[bool] = False

    type: str = "aws"
    endpoint: HttpUrl = "http://169.254.169.254"  # IPv6 (Nitro): http://[fd00:ec2::254]
    token_ttl: Duration = 3600.0  # the IMDSv2 token's life, 1s to 6h; renewed before its end
    imdsv1: bool = False  # fall back to IMDSv1 when the token PUT is refused or unanswered

    @field_validator("token_ttl")
    @classmethod
    def _ttl(cls, value: float) -> float:
        if not 1 <= value <= MAX_TOKEN_TTL:
            raise ValueError("must be between 1s and 6h (IMDS refuses other token lives)")
        return value


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _aws_time(value: Any, key: str, problems: list[str]) -> float | None:
    """None (due now) when missing or unreadable, with a problem said."""
    if isinstance(value, str) and value.strip():
        try:
            return parse_time(value.strip())
        except (ValueError, OverflowError, OSError):
            pass
    what = "missing" if value is None else f"{value!r} is not a time drainer can read"
    problems.append(f"{key} {what}: taken as due now")
    return None


def _text(item: dict[str, Any], key: str) -> str:
    value = item.get(key)
    return value if isinstance(value, str) else ""


def _scheduled(item: Any, place: int, names: tuple[str, ...]) -> MaintenanceEvent | None:
    """One entry of the scheduled events; None when its State says it is over."""
    if not isinstance(item, dict):
        text = json.dumps(item)
        return MaintenanceEvent(
            event_id=f"scheduled[{place}]#{_digest(text)}",
            event_type=EventType.UNKNOWN,
            status=EventStatus.UNKNOWN,
            resources=names,
            raw_type="?",
            raw_status="?",
            problems=(f"not an object: {text[:80]}",),
        )
    problems: list[str] = []
    state = _text(item, "State").strip()
    if state.lower() in _OVER:
        return None
    code = _text(item, "Code").strip()
    event_type = SCHEDULED_CODES.get(code.lower(), EventType.UNKNOWN)
    if event_type is EventType.UNKNOWN:
        problems.append(f"Code {item.get('Code')!r} unknown: the rule events.Unknown applies")
    status = EventStatus.SCHEDULED
    if state.lower() != "active":
        status = EventStatus.UNKNOWN
        problems.append(f"State {item.get('State')!r} unknown: pending, drained now")
    event_id = _text(item, "EventId")
    if not event_id:
        # stable while it is listed: neither State nor Description (which gains
        # "[Completed]") is part of it
        rest = {k: v for k, v in item.items() if k not in ("State", "Description")}
        event_id = f"scheduled[{place}]#{_digest(json.dumps(rest, sort_keys=True))}"
        problems.append(f"EventId {item.get('EventId')!r}: known here as {event_id}")
    not_before = _aws_time(item.get("NotBefore"), "NotBefore", problems)
    description = _text(item, "Description")
    not_after = item.get("NotAfter")
    if isinstance(not_after, str) and not_after:
        description = f"{description} (until {not_after})".strip()
    return MaintenanceEvent(
        event_id=event_id,
        event_type=event_type,
        status=status,
        resources=names,
        not_before=not_before,
        description=description,
        raw_type=code or "?",
        raw_status="" if status is EventStatus.SCHEDULED else state or "?",
        problems=tuple(problems),
    )


def parse_scheduled(doc: Any, names: tuple[str, ...]) -> list[MaintenanceEvent]:
    """``events/maintenance/scheduled``: a JSON array, each entry read on its own (an
    entry that cannot be read is this VM's all the same: unknown, due now). Anything
    but an array raises PayloadError."""
    if not isinstance(doc, list):
        raise PayloadError(f"{SCHEDULED_PATH}: not a JSON array: {json.dumps(doc)[:80]}")
    return [e for i, item in enumerate(doc) if (e := _scheduled(item, i, names)) is not None]


def parse_spot(doc: Any, launch: str, names: tuple[str, ...]) -> MaintenanceEvent:
    """``spot/instance-action`` (200: a notice, whatever it says): a Preempt at ``time``.
    Its id is the action and ``launch`` (this start of the instance), never ``time``."""
    problems: list[str] = []
    item = doc if isinstance(doc, dict) else {}
    if not isinstance(doc, dict):
        problems.append(f"not an object: {json.dumps(doc)[:80]}")
    action = _text(item, "action")
    if action.lower() not in SPOT_ACTIONS:
        problems.append(f"action {item.get('action')!r} unknown: an interruption all the same")
    key = action.lower() if action.lower() in SPOT_ACTIONS else "unknown"
    return MaintenanceEvent(
        event_id=f"spot-{key}-{launch}",
        event_type=EventType.PREEMPT,
        status=EventStatus.SCHEDULED,
        resources=names,
        not_before=_aws_time(item.get("time"), "time", problems),
        description=f"Spot interruption: {action or '?'}",
        raw_type=f"spot-{action or '?'}",
        problems=tuple(problems),
    )


def parse_rebalance(doc: Any, launch: str, names: tuple[str, ...]) -> MaintenanceEvent:
    """``events/recommendations/rebalance`` (200: a recommendation): no deadline."""
    notice = doc.get("noticeTime") if isinstance(doc, dict) else None
    problems = [] if isinstance(notice, str) else [f"no noticeTime: {json.dumps(doc)[:80]}"]
    return MaintenanceEvent(
        event_id=f"rebalance-{launch}",
        event_type=EventType.REBALANCE,
        status=EventStatus.SCHEDULED,
        resources=names,
        description=f"rebalance recommendation since {notice or '?'}",
        raw_type="rebalance-recommendation",
        problems=tuple(problems),
    )


def parse_lifecycle(text: str, launch: str, names: tuple[str, ...]) -> MaintenanceEvent | None:
    """``autoscaling/target-lifecycle-state``: ``Terminated`` is a termination under way,
    ``Warmed:Stopped`` or ``Warmed:Hibernated`` a stop (the instance goes back to the warm
    pool, and may serve again); the documented others are none; anything else is an
    event of unknown type."""
    state = text.strip()
    if state.lower() in _LIFECYCLE_STATES:
        return None
    ending, pausing = state.lower() in _ENDING, state.lower() in _PAUSING
    known = ending or pausing
    kind = EventType.TERMINATE if ending else EventType.REBOOT if pausing else EventType.UNKNOWN
    return MaintenanceEvent(
        event_id=f"autoscaling-{state.lower() if known else 'unknown'}-{launch}",
        event_type=kind,
        status=EventStatus.STARTED,
        resources=names,
        description=f"Auto Scaling target lifecycle state {state!r}",
        raw_type=f"autoscaling-{state or '?'}",
        problems=() if known else (f"target lifecycle state {state[:80]!r} unknown",),
    )


class AwsSource:
    def __init__(
        self,
        config: AwsConfig,
        *,
        stopping: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
        attempts: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._http = MetadataHTTP(
            config.endpoint,
            config.timeout,
            stopping=stopping,
            transport=transport,
            attempts=attempts,
        )
        self._clock = clock
        self._token: str | None = None
        self._token_until = 0.0  # renew at this clock() time
        self._v1_until = 0.0  # IMDSv1 fallback in use until then
        self._names: tuple[str, ...] = ()
        self._launch = ""  # digest of the instance id and its last start
        self._noticed = False  # the last poll listed a notice that has no id of its own
        self._key = ""  # the ids of the notices listed now end with this
        self._said: set[str] = set()
        self._unread = Unread()
        self._silent: str | None = None  # the path that last gave no answer: asked last

    # IMDSv2 tokens

    def _fetch_token(self) -> str | None:
        """A fresh token, or None when IMDSv1 is allowed and the PUT failed."""
        import httpx

        ttl = int(self._config.token_ttl)
        now = self._clock()
        try:
            reply = self._http.client.put(TOKEN_PATH, headers={TTL_HEADER: str(ttl)})
        except httpx.HTTPError as exc:
            problem = f"PUT {TOKEN_PATH}: {type(exc).__name__}: {exc}"
            if isinstance(exc, httpx.TimeoutException):
                problem += (
                    " (in a container, the instance's HttpPutResponseHopLimit must be at least 2)"
                )
            return self._no_token(problem, retry=True, cause=exc)
        if reply.status_code == 429 or reply.status_code >= 500:
            raise Retryable(f"PUT {TOKEN_PATH}: HTTP {reply.status_code}")
        if reply.status_code != 200 or not reply.text.strip():
            return self._no_token(f"PUT {TOKEN_PATH}: HTTP {reply.status_code}", retry=False)
        token = reply.text.strip()
        if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
            # a page (a proxy's?), not a token: kept, every request would fail until
            # its TTL ran out
            problem = f"PUT {TOKEN_PATH}: HTTP 200 but no token: {token[:60]!r}"
            return self._no_token(problem, retry=True)
        echoed = reply.headers.get(TTL_HEADER, "")
        if echoed.isdigit() and 0 < int(echoed) < ttl:
            ttl = int(echoed)  # the service's word on the token's life
        self._token = token
        self._token_until = now + ttl - min(60.0, ttl / 4)
        return self._token

    def _no_token(self, problem: str, *, retry: bool, cause: Exception | None = None) -> str | None:
        if self._config.imdsv1:
            log.warning("IMDSv2 token refused (%s): using IMDSv1 for a minute", problem)
            self._v1_until = self._clock() + 60.0
            return None
        if retry:  # from the transport's error: no answer at all is Unreachable
            raise Retryable(problem) from cause
        hint = "; IMDSv1 is not used unless source.imdsv1 is true"
        raise SourceError(f"metadata service at {self._config.endpoint}: {problem}{hint}")

    def _current_token(self) -> str | None:
        now = self._clock()
        if self._token is not None and now < self._token_until:
            return self._token
        if now < self._v1_until:
            return None
        return self._fetch_token()

    # requests

    def _get(self, path: str) -> httpx.Response | None:
        """200: the answer; 404: None. A 401 drops the token and tries once more."""

        def send() -> httpx.Response:
            token = self._current_token()
            headers = {TOKEN_HEADER: token} if token is not None else {}
            return self._http.send("GET", path, headers=headers)

        def once() -> httpx.Response | None:
            reply = send()
            if reply.status_code == 401:
                self._token, self._v1_until = None, 0.0  # expired or revoked: a new one
                reply = send()
            if reply.status_code == 404:
                return None
            if reply.status_code != 200:
                self._token = None if reply.status_code == 401 else self._token
                raise self._http.refused("GET", path, reply)
            return reply

        return self._http.retry(once)

    def _text(self, path: str) -> str | None:
        reply = self._get(path)
        return None if reply is None else reply.text

    # the EventSource protocol

    def node_names(self) -> frozenset[str]:
        """The instance id, its ``local-hostname`` and that name's first label."""
        if not self._names:
            instance_id = (self._text(INSTANCE_ID_PATH) or "").strip()
            if not instance_id:
                raise PayloadError(f"{INSTANCE_ID_PATH}: no instance id")
            names = [instance_id]
            hostname = (self._text(HOSTNAME_PATH) or "").strip()
            if hostname:
                names += [hostname, hostname.split(".")[0]]
            self._names = tuple(dict.fromkeys(names))
        return frozenset(self._names)

    def _launch_key(self) -> str:
        """This start of the instance: its id and ``pendingTime``. Read again when a
        notice appears (a hibernated instance resumes with this process in memory);
        the last value known when the read fails."""
        try:
            reply = self._get(IDENTITY_PATH)
            doc = json.loads(reply.text) if reply is not None else None
        except (SourceError, ValueError) as exc:
            log.warning("cannot read the instance identity document: %s", exc)
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("pendingTime"), str):
            self._launch = _digest(str(doc.get("instanceId")), doc["pendingTime"])
        return self._launch or _digest(*self._names)

    def _read(
        self, path: str, unread: dict[str, SourceError], *, first: bool = False
    ) -> httpx.Response | None:
        """``_get(path)``; a failure of this path alone goes to ``unread`` (None). No answer
        at all (``Unreachable``) fails the poll at its first path; after a path answered,
        it leaves this path and the ones after it unread (each would wait as long), and
        what was read is listed."""
        if any(isinstance(e, Unreachable) for e in unread.values()):
            unread[path] = Unreachable(f"GET {path}: not asked (no answer on a path before)")
            return None
        try:
            return self._get(path)
        except SourceError as exc:
            if isinstance(exc, Unreachable):
                self._silent = path
                if first:
                    raise
            unread[path] = exc
            return None

    def events(self) -> Listing:
        self.node_names()
        names = self._names
        self._http.retry(self._current_token)  # without a token no path can be read
        # Each path on its own: one that fails hides no notice on another. Then the
        # listing is partial (the core keeps an event it does not list), and with no
        # notice at all it is no answer, never "no event".
        unread: dict[str, SourceError] = {}
        # A path that gave no answer is asked last from then on, so that one path that
        # hangs at every poll fails one poll, not all of them with the others unread.
        order = sorted(_PATHS, key=lambda path: path == self._silent)  # stable: silent last
        self._silent = None
        replies = {path: self._read(path, unread, first=path == order[0]) for path in order}
        spot, scheduled = replies[SPOT_PATH], replies[SCHEDULED_PATH]
        lifecycle_reply, rebalance = replies[LIFECYCLE_PATH], replies[REBALANCE_PATH]
        events: list[MaintenanceEvent] = []
        try:
            events += parse_scheduled(_json_doc(scheduled), names)
        except PayloadError as exc:
            unread[SCHEDULED_PATH] = exc
        lifecycle = None if lifecycle_reply is None else lifecycle_reply.text
        # InService and the like are listed at every poll in a group: no notice
        ending = lifecycle is not None and lifecycle.strip().lower() not in _LIFECYCLE_STATES
        noticed = spot is not None or rebalance is not None or ending
        if noticed:
            if not self._noticed:  # kept while notices stand, whatever a later read says
                self._key = self._launch_key()
            launch = self._key
            if spot is not None:
                events.append(parse_spot(_loads(spot.text), launch, names))
            if rebalance is not None:
                events.append(parse_rebalance(_loads(rebalance.text), launch, names))
            if lifecycle is not None and ending:
                ended = parse_lifecycle(lifecycle, launch, names)
                events += [ended] if ended is not None else []
        # a notice path that failed may still hold the notice the key was made for
        self._noticed = noticed or (self._noticed and bool(unread.keys() & _NOTICE_PATHS))
        partial = self._unread.settle(list(unread.values()), found=bool(events))
        listing = Listing(tuple(events), partial=partial)
        self._warn(listing)
        return listing

    def _warn(self, listing: Listing) -> None:
        """Say once per event (not at every poll) what was odd about it."""
        said = {
            f"AWS event {e.event_id}: {'; '.join(e.problems)}" for e in listing.events if e.problems
        }
        for line in sorted(said - self._said):
            log.warning("%s", line)
        self._said = said

    def approve(self, event_id: str) -> None:
        raise SourceError(
            f"AWS cannot start event {event_id} from the VM (approve is never for aws)"
        )

    def close(self) -> None:
        self._http.close()


def _json_doc(reply: httpx.Response | None) -> Any:
    """The scheduled events' document: none for a 404 (or an unread path)."""
    if reply is None:
        return []
    try:
        return json.loads(reply.text)
    except ValueError as exc:
        raise PayloadError(f"{SCHEDULED_PATH}: invalid JSON: {exc}") from exc


def _loads(text: str) -> Any:
    """JSON, or the text itself when it is none (the parsers say what is odd)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def create(config: AwsConfig, stopping: threading.Event) -> AwsSource:
    return AwsSource(config, stopping=stopping)


PLUGIN = SourcePlugin(config_model=AwsConfig, create=create)
