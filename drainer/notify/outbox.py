"""The outbox: notices waiting for their webhooks, delivered by a worker thread per webhook.

Nothing here may delay a drain. The engine's turn only builds a notice and queues it
(``changed``, ``alert``): a short lock and the write of a small file, never a network
call. A worker thread per webhook (``drainer-notify``) sends its letters in order (one
webhook failing, retrying for ``retry_for``, never holds up another), each attempt cut
at ``notify.timeout`` in all (``_Deadline``: httpx's is per read), retrying with
exponential backoff (tenacity) for ``notify.retry_for`` while the answer is worth
retrying (no answer, 408, 429, 5xx); any 2xx is delivered,
another 4xx fails at once. The queue holds ``notify.queue_size`` letters (one notice for
one webhook); a full queue drops the oldest waiting alert (else the oldest waiting
letter), counted and logged: a flood is made of alerts, and a held notice must stay.

On disk: ``<state_dir>/notifications.json`` holds every letter not yet delivered (the
one being sent first), rewritten atomically at each change, so what a crash, a SIGTERM
or a reboot interrupts is sent by the next ``drainer run``. A letter names its webhook by
a hash of the URL (a Slack URL is itself a secret): one no longer configured is dropped
at restart. Delivery is at least once: a letter sent just before a crash is sent again
with the same notice id.

Metrics: ``drainer_notifications_total{result="delivered|failed|dropped"}`` and
``drainer_notification_queue``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from drainer._files import write_atomically
from drainer.core import Phase, Record
from drainer.metrics import Metrics, build_version
from drainer.notify.config import NotifyConfig, Webhook
from drainer.notify.notice import Notice, alert_notice, body, transition_notice

if TYPE_CHECKING:
    import httpx

    from drainer.config import Config
    from drainer.engine import Engine

__all__ = ["FILE", "Letter", "Outbox", "Outcome", "send_once", "test_webhooks"]

log = logging.getLogger("drainer")

FILE = "notifications.json"
RECENT_ALERTS = 32  # distinct alert messages remembered, each not sent again


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:24]


class Letter(NamedTuple):
    """One notice for one webhook (named by ``url_key`` of its URL)."""

    webhook: str
    notice: Notice


@dataclass(frozen=True)
class Outcome:
    ok: bool
    again: bool  # worth another attempt
    detail: str  # the status, or why it failed; never a header or the URL's path


def send_once(client: httpx.Client, webhook: Webhook, notice: Notice, *, timeout: float) -> Outcome:
    """One attempt: POST the notice's body to ``webhook`` within ``timeout`` seconds."""
    import httpx

    _hide([webhook])
    try:
        headers = webhook.resolved_headers()
    except ValueError as exc:  # a secret file may appear (a mount), an env var not: retry
        return Outcome(False, True, str(exc))
    headers.setdefault("User-Agent", f"drainer/{build_version()}")
    deadline = _Deadline(timeout)
    try:
        reply = client.post(
            webhook.url,
            json=body(notice, webhook.format),
            headers=headers,
            timeout=timeout,
            extensions={"trace": deadline.trace},
        )
    except httpx.HTTPError as exc:
        if deadline.cut:
            return Outcome(False, True, f"no complete answer within {timeout:g}s")
        detail = str(exc).replace(webhook.url, webhook.label) or "no answer"
        return Outcome(False, True, f"{type(exc).__name__}: {detail}")
    finally:
        deadline.cancel()
    status = f"HTTP {reply.status_code} {reply.reason_phrase}".rstrip()
    if reply.is_success:
        return Outcome(True, False, status)
    again = reply.status_code in (408, 429) or reply.status_code >= 500
    if reply.is_redirect:  # never followed: the body and the secret headers stay ours
        status += ": a redirect, not followed: configure the URL it names"
    return Outcome(False, again, status)


class _Deadline:
    """``timeout`` for the whole attempt: httpx's is per read, so a receiver (or a proxy)
    sending a byte now and then would hold the worker, and every notice behind it, for
    ever. At the deadline the attempt's socket is shut down, which ends the blocked read;
    the client keeps no connection alive between attempts, so every attempt's socket is
    seen connecting here (``trace``)."""

    def __init__(self, seconds: float) -> None:
        self.cut = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        # connection.* directly; proxy.start_tls through a proxy's tunnel
        if event.endswith((".connect_tcp.complete", ".start_tls.complete")):
            with self._lock:  # TLS wraps the TCP socket: the newest is the one to shut
                self._socket = info["return_value"].get_extra_info("socket")
                if self.cut:
                    self._shut()

    def _expire(self) -> None:
        with self._lock:
            self.cut = True
            self._shut()

    def _shut(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):  # closed already: the attempt ended
                self._socket.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._socket = None


def _client(transport: httpx.BaseTransport | None) -> httpx.Client:
    import httpx

    # no connection kept alive: each attempt connects, so that _Deadline sees its socket
    return httpx.Client(transport=transport, limits=httpx.Limits(max_keepalive_connections=0))


class _Again(Exception):
    pass


class _Redact(logging.Filter):
    """httpx logs each request's URL (at INFO, to whoever configured the root logger): a
    webhook's is shown by its label, since a Slack URL's path is the secret."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and self.labels:
            record.args = tuple(
                f"{self.labels[str(arg)]}/..." if str(arg) in self.labels else arg
                for arg in record.args
            )
        return True


_REDACT = _Redact()
logging.getLogger("httpx").addFilter(_REDACT)


def _hide(webhooks: list[Webhook]) -> None:
    _REDACT.labels.update((w.url, w.label) for w in webhooks)


class Outbox:
    """The engine's watcher (``follow``) and the queue behind it; ``start`` the worker,
    ``close`` to stop it (what is left stays on disk for the next process)."""

    def __init__(
        self,
        config: NotifyConfig,
        state_dir: Path,
        metrics: Metrics,
        *,
        backoff: tuple[float, float] = (1.0, 60.0),  # first and longest wait between attempts
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = state_dir / FILE
        self.metrics = metrics
        self.node = ""
        self.lbs: tuple[str, ...] = ()
        self._config = config
        self._backoff = backoff
        self._transport = transport
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[Letter] = deque()
        self._flight: dict[str, Letter] = {}  # the letter being sent, per webhook
        self._stopping = threading.Event()
        self._started = False
        self._threads: dict[str, threading.Thread] = {}  # a worker per webhook
        self._client: httpx.Client | None = None
        self._alerted: OrderedDict[str, None] = OrderedDict()  # the latest alerts sent
        self._dropped = 0
        self._write_error = ""
        # the phase and its start of the last transition told, kept in the file: at start,
        # a record that moved on since then is told (catch_up)
        self._told: tuple[str, float] | None = None
        self._load()

    # -- the engine's side: never blocks on the network ----------------------------------

    def follow(self, engine: Engine) -> None:
        """Be told of ``engine``'s transitions and alerts (again after a reload)."""
        self.node = sorted(engine.policy.node_names)[0]
        self.lbs = tuple(engine.lbs)
        engine.watchers.append(self)

    def configure(self, config: NotifyConfig) -> None:
        """A reloaded configuration: letters to a webhook no longer there are given up, a
        new webhook gets its worker."""
        with self._lock:
            self._config = config
            if self._started:
                self._spawn()
            self._wake.notify_all()

    def changed(self, old: Record, new: Record) -> None:
        at = new.since or self._clock()  # when it happened, seen now or by another process
        notice = transition_notice(old, new, node=self.node, lbs=self.lbs, at=at, id=_new_id())
        if notice.alert:
            self._sent_alert(notice.alert)
        with self._lock:
            self._told = (new.phase.value, new.since)  # written with the notice
        if not self.submit(notice):
            with self._lock:
                if self._config.webhooks:
                    self._persist()

    def catch_up(self, record: Record) -> None:
        """At start, with ``record`` as on disk: tell a transition no process told (the
        last one killed between saving the record and queueing the notice, or ``drainer
        drain`` run while drainer was stopped)."""
        with self._lock:
            told = self._told
            if told is None:  # the first run with webhooks: from here on
                self._told = (record.phase.value, record.since)
                if self._config.webhooks:
                    self._persist()
                return
        if told[0] == record.phase.value:
            return
        self.changed(Record(phase=Phase(told[0]), since=told[1]), record)

    def alert(self, record: Record, message: str) -> None:
        # an alert sent lately (a transition just carried it, an approval failing every
        # minute, or failing one way then another) is not sent again
        if not self._sent_alert(message):
            return
        self.submit(
            alert_notice(
                record, message, node=self.node, lbs=self.lbs, at=self._clock(), id=_new_id()
            )
        )

    def _sent_alert(self, message: str) -> bool:
        """Remember ``message`` among the latest alerts; False when it was already."""
        known = message in self._alerted
        self._alerted[message] = None
        self._alerted.move_to_end(message)
        while len(self._alerted) > RECENT_ALERTS:
            self._alerted.popitem(last=False)
        return not known

    def submit(self, notice: Notice) -> bool:
        """Queue ``notice`` for every webhook whose ``on`` names it (a test: for all);
        False when none does."""
        with self._lock:
            hooks = [
                w for w in self._config.webhooks if notice.kind == "test" or notice.trigger in w.on
            ]
            if not hooks:
                return False
            for webhook in hooks:
                while len(self._waiting) >= self._config.queue_size:
                    # an alert first: a flood is made of them, and a held notice must stay
                    lost = next((x for x in self._waiting if x.notice.kind == "alert"), None)
                    lost = lost or self._waiting[0]
                    self._waiting.remove(lost)
                    self._dropped += 1
                    self.metrics.notifications.labels("dropped").inc()
                    log.warning(
                        "notification queue full (%d): dropped the oldest, a %s notice of %s"
                        " (%d dropped so far)",
                        self._config.queue_size,
                        lost.notice.trigger,
                        _iso_short(lost.notice.at),
                        self._dropped,
                    )
                self._waiting.append(Letter(url_key(webhook.url), notice))
            self._persist()
            self._wake.notify_all()
        return True

    def pending(self) -> list[Letter]:
        """What is not delivered yet, the letter being sent first."""
        with self._lock:
            return self._letters()

    # -- the worker --------------------------------------------------------------------

    def start(self) -> Outbox:
        """Start the workers; say now which webhook's secret cannot be read (each of its
        notices would fail until it can)."""
        for i, webhook in enumerate(self._config.webhooks):
            try:
                webhook.resolved_headers()
            except ValueError as exc:
                log.error("notify.webhooks[%d] (%s): %s", i, webhook.label, exc)
        with self._lock:
            self._started = True
            self._spawn()
        return self

    def _spawn(self) -> None:
        """(Under the lock.) A worker for every webhook without one, so that a webhook
        that fails, retrying for ``retry_for``, never holds up another's notices; the
        letters to a webhook no longer configured are given up."""
        keys = {url_key(w.url) for w in self._config.webhooks}
        gone = [x for x in self._waiting if x.webhook not in keys]
        for letter in gone:
            self._waiting.remove(letter)
            self.metrics.notifications.labels("failed").inc()
            log.warning(
                "notification (%s): its webhook is no longer configured; dropped it",
                letter.notice.trigger,
            )
        if gone:
            self._persist()
        for key in keys - self._threads.keys():
            thread = threading.Thread(
                target=self._work, args=(key,), name="drainer-notify", daemon=True
            )
            self._threads[key] = thread
            thread.start()

    def close(self, timeout: float = 0.25) -> None:
        """Stop the workers; an attempt under way may finish within ``timeout`` (for all
        of them), else its letter stays on disk, sent again by the next process."""
        with self._lock:
            self._stopping.set()
            self._wake.notify_all()
            threads = list(self._threads.values())
        end = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
        if self._client is not None and not any(t.is_alive() for t in threads):
            self._client.close()

    def _next(self, key: str) -> Letter | None:
        """(Under the lock.) The next letter to webhook ``key``; None when this worker
        ends: stopped, or its webhook is no longer configured."""
        while not self._stopping.is_set():
            if key not in {url_key(w.url) for w in self._config.webhooks}:
                break
            letter = next((x for x in self._waiting if x.webhook == key), None)
            if letter is not None:
                self._waiting.remove(letter)
                self._flight[key] = letter
                return letter
            self._wake.wait()
        del self._threads[key]
        return None

    def _work(self, key: str) -> None:
        while True:
            with self._lock:
                letter = self._next(key)
                if letter is None:
                    return
            try:
                result = self._deliver(letter)
            except Exception:  # a bug of ours must not end notifications for good
                log.exception("notification: unexpected error; the notice is given up")
                result = "failed"
            with self._lock:
                if result is None:  # stopped: the letter stays first on disk
                    return
                del self._flight[key]
                self._persist()
            self.metrics.notifications.labels(result).inc()

    def _deliver(self, letter: Letter) -> str | None:
        """The result for the metric (delivered, failed), or None when stopped first."""
        from tenacity import (
            RetryCallState,
            RetryError,
            Retrying,
            retry_if_exception_type,
            stop_after_delay,
            stop_any,
            stop_when_event_set,
            wait_exponential,
        )
        from tenacity.stop import stop_base

        gone = self._gone

        class removed(stop_base):  # a reload removed its webhook (or changed its URL)
            def __call__(self, retry_state: RetryCallState) -> bool:
                return gone(letter.webhook)

        with self._lock:
            config = self._config
        webhook = next((w for w in config.webhooks if url_key(w.url) == letter.webhook), None)
        trigger = letter.notice.trigger
        if webhook is None:
            log.warning(
                "notification (%s): its webhook is no longer configured; dropped it", trigger
            )
            return "failed"
        client = self._http()
        tries = 0
        first, longest = self._backoff
        retrying = Retrying(
            stop=stop_any(
                stop_after_delay(config.retry_for),
                stop_when_event_set(self._stopping),
                removed(),
            ),
            wait=wait_exponential(multiplier=first, min=first, max=longest),
            retry=retry_if_exception_type(_Again),
            sleep=self._pause,
        )
        try:
            for attempt in retrying:
                with attempt:
                    tries += 1
                    outcome = send_once(client, webhook, letter.notice, timeout=config.timeout)
                    if outcome.again:
                        if tries == 1:
                            log.warning(
                                "notification to %s (%s) failed (%s): retrying for up to %gs",
                                webhook.label,
                                trigger,
                                outcome.detail,
                                config.retry_for,
                            )
                        raise _Again(outcome.detail)
        except RetryError as exc:
            if self._stopping.is_set():
                return None
            if self._gone(letter.webhook):
                log.warning(
                    "notification to %s (%s): its webhook is no longer configured; dropped it",
                    webhook.label,
                    trigger,
                )
                return "failed"
            detail = str(exc.last_attempt.exception())
            log.error(
                "notification to %s (%s) given up after %d attempts in %gs: %s",
                webhook.label,
                trigger,
                tries,
                config.retry_for,
                detail,
            )
            return "failed"
        if not outcome.ok:
            log.error(
                "notification to %s (%s) refused: %s (not retried)",
                webhook.label,
                trigger,
                outcome.detail,
            )
            return "failed"
        after = f" after {tries} attempts" if tries > 1 else ""
        log.info("notification delivered to %s (%s)%s", webhook.label, trigger, after)
        return "delivered"

    def _gone(self, key: str) -> bool:
        with self._lock:
            return key not in {url_key(w.url) for w in self._config.webhooks}

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # a stop cuts the wait between attempts short

    def _http(self) -> httpx.Client:

        if self._client is None:
            self._client = _client(self._transport)
        return self._client

    # -- on disk -------------------------------------------------------------------------

    def _letters(self) -> list[Letter]:
        return list(self._flight.values()) + list(self._waiting)

    def _persist(self) -> None:
        letters = self._letters()
        self.metrics.notification_queue.set(len(letters))
        data = {
            "version": 1,
            "pending": [{"webhook": x.webhook, "notice": x.notice.to_json()} for x in letters],
            "told": list(self._told) if self._told else None,
        }
        try:
            if letters or self._told or self.path.exists():
                write_atomically(self.path, json.dumps(data, indent=1) + "\n")
        except OSError as exc:
            if self._write_error != str(exc):
                log.error(
                    "cannot keep the undelivered notifications in %s: %s; they are sent"
                    " while this process runs, and lost if it stops first",
                    self.path,
                    exc.strerror or exc,
                )
            self._write_error = str(exc)
        else:
            self._write_error = ""

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            letters = [
                Letter(str(item["webhook"]), Notice.from_json(item["notice"]))
                for item in data["pending"]
            ]
            self._told = _told(data.get("told"))  # absent in a file of an older drainer
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            # not UTF-8, not JSON, not ours, a directory: else never written again
            aside = self.path.with_name(self.path.name + ".damaged")
            try:  # the next notice would overwrite it: keep what it held for a person
                self.path.replace(aside)
                kept = f"kept as {aside}"
            except OSError as err:
                kept = f"cannot keep it as {aside}: {err.strerror or err}"
            log.error(
                "the undelivered notifications in %s cannot be read (%.200s): not sent; %s",
                self.path,
                exc,
                kept,
            )
            return
        keep = letters[-self._config.queue_size :]
        if len(keep) < len(letters):
            self.metrics.notifications.labels("dropped").inc(len(letters) - len(keep))
        self._waiting.extend(keep)
        self.metrics.notification_queue.set(len(keep))
        if keep:
            log.info("%d notifications left undelivered by the last run: sending them", len(keep))


def _told(value: Any) -> tuple[str, float] | None:
    try:
        phase, since = value
        return Phase(phase).value, float(since)
    except (ValueError, TypeError):  # None, or not what a drainer wrote: nothing to catch up
        return None


def _new_id() -> str:
    return str(uuid.uuid4())


def _iso_short(seconds: float) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(seconds))


def test_webhooks(
    config: Config, *, transport: httpx.BaseTransport | None = None
) -> list[tuple[Webhook, Outcome]]:
    """``drainer notify test``: one test notice to every webhook, one attempt each (no
    retry, no queue: the answer is the one an operator needs to see)."""

    from drainer.errors import ConfigError, StateError
    from drainer.store import Store, remembered_names

    notify = config.notify
    if not notify.webhooks:
        raise ConfigError("notify.webhooks: none configured; add one (see the README)")
    names = remembered_names(config.state_dir) if config.node.name is None else None
    node = config.node.name or (sorted(names)[0] if names else socket.gethostname())
    try:
        phase = Store(config.state_dir).load().phase.value
    except StateError:
        phase = "unknown"
    notice = Notice(
        id=_new_id(),
        kind="test",
        node=node,
        phase=phase,
        note="drainer notify test",
        load_balancers=tuple(lb.name or lb.type for lb in config.load_balancers),
        at=time.time(),
    )
    with _client(transport) as client:
        return [(w, send_once(client, w, notice, timeout=notify.timeout)) for w in notify.webhooks]
