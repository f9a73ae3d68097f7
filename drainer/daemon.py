"""``drainer run``: poll the source, turn the engine, once per poll interval, until SIGTERM.

The loop runs in one named worker thread; the main thread only waits for the stop flag
(set by SIGTERM/SIGINT, relayed by a thread of its own: ``_Signals``) and then gives the
worker a second to finish its turn. A turn cut short is harmless (the record on disk
holds the intent, the actions are idempotent), and stopping never undoes a drain: the
VM may be going down.

What the loop does besides turning:

- **Pace.** The next poll comes one ``poll_interval`` later, slower only while the
  service refuses or times out (``drainer.polling``).
- **Wake on a change.** A source that can tell of a change as it happens
  (``sources.base.Watching``: Google Cloud's hanging GET, in the source's own threads)
  cuts the pause short, so the change is polled within milliseconds; ``events()`` itself
  never hangs, so the heartbeat, the re-checks, a stop and a reload keep their pace.
- **Re-check.** While the node should be out, the load balancers are read every
  ``drain.recheck_interval`` between polls, and the drain re-asserted where a reload or
  a restart forgot it; while it recovers, health checks and a put-back that waits for
  a load balancer's own check go on at that pace too. The source is not polled for that.
- **Show itself.** One ``drainer run`` per state directory (``sidecar.acquire``); a
  heartbeat after every completed turn (``sidecar.beat``); ``/healthz`` and ``/readyz``
  next to ``/metrics``; systemd's notify protocol when ``NOTIFY_SOCKET`` is set
  (``drainer.systemd``). A state
  directory that cannot be written at start ends ``drainer run`` (exit 1); later, it
  fails ``/healthz`` while it lasts and is logged once.
- **SIGHUP** reloads the configuration between turns: a configuration that does not
  validate (or cannot be built) is logged and the one in use is kept. One that comes
  while drainer starts (``drainer.early`` holds it from the CLI's first lines) is a
  reload once the loop runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from drainer import early, sidecar
from drainer.adapters.base import preflight
from drainer.config import Config, load_config
from drainer.core import Record
from drainer.errors import ConfigError, DrainerError, StateError
from drainer.metrics import Metrics, NullMetrics
from drainer.model import Listing
from drainer.node import Node, assemble
from drainer.notify.outbox import Outbox
from drainer.polling import Pacer, poll
from drainer.sources.base import Watching
from drainer.store import Store
from drainer.systemd import Notifier, status_line, watchdog_seconds

# assemble: also the demo's way to build a node (drainer.demo imports it from here)
__all__ = ["Runner", "assemble", "loop", "run"]

log = logging.getLogger("drainer")

LB_METRICS_EVERY = 15.0  # seconds: read the load balancers for the metrics when idle


# -- the loop ------------------------------------------------------------------------------------


class Runner:
    """The worker's loop around one ``Node``, which SIGHUP may replace between turns."""

    def __init__(
        self,
        node: Node,
        *,
        stopping: threading.Event,
        config_path: Path | None = None,
        notifier: Notifier | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.node = node
        self.outbox = outbox  # webhooks, told of every transition and alert
        if outbox is not None:
            outbox.follow(node.engine)
        self.stopping = stopping
        self.config_path = config_path
        self.notifier = notifier or Notifier(None)
        self.wake = threading.Event()  # cuts a pause short: a stop or a reload
        self.reload = threading.Event()
        self.changed = threading.Event()  # the source saw a change: poll now
        self.pacer = Pacer(node.config.source.poll_interval)
        # WATCHDOG=1 comes after a turn: under systemd's watchdog, a pause (a long
        # poll_interval, its backoff while the service refuses) never outlasts half of it
        watchdog = self.notifier.watchdog
        self.longest_pause = watchdog / 2 if watchdog else float("inf")
        self._trouble = ""  # the state problem last logged ("" none)
        self._status = ""
        self._lb_metrics_at = 0.0
        self._slot_kept_at = 0.0
        node.engine.follow_disk = True
        self._watch(node)

    def _watch(self, node: Node) -> None:
        if isinstance(node.source, Watching):
            node.source.watch(self._on_change)

    def _on_change(self) -> None:
        self.changed.set()
        self.wake.set()

    @property
    def metrics(self) -> Metrics:
        return self.node.engine.metrics

    def loop(self) -> None:
        while not self.stopping.is_set():
            if self.reload.is_set():
                self.reload.clear()
                try:
                    self._reload()
                except Exception:  # the node in use goes on
                    log.exception("SIGHUP: the reload failed; going on as before")
            started = time.monotonic()
            self.changed.clear()  # a change seen during this poll brings the next one
            polled = poll(self.node.source, self.metrics)
            pause = min(self.pacer.after(polled), self.longest_pause)
            source = self.node.config.source
            # healthy while turns keep coming: the pause, a few intervals, a slow poll
            self.metrics.probes.limit = pause + 3 * source.poll_interval + 4 * source.timeout
            self._turn(polled.events)
            self._between(started + pause)

    def _turn(self, events: Listing | None) -> None:
        engine = self.node.engine
        try:
            record, views = engine.turn(events)
        except StateError as exc:
            engine.metrics.errors.labels("state").inc()
            self._state_trouble(str(exc))
            return
        except DrainerError as exc:
            engine.metrics.errors.labels("internal").inc()
            log.error("%s", exc)
            return
        except Exception:  # a sidecar keeps going: the next turn starts from the record
            engine.metrics.errors.labels("internal").inc()
            log.exception("unexpected error in a turn; continuing")
            return
        now = time.time()
        record = self._keep_slot(record, now)
        if views:
            self._lb_metrics_at = now
        elif now - self._lb_metrics_at >= LB_METRICS_EVERY:
            self._lb_metrics_at = now
            try:  # idle: the turn itself did not read the load balancers
                engine.views()
            except Exception:
                log.exception("reading the load balancers for the metrics failed")
        try:
            sidecar.beat(
                self.node.config.state_dir,
                phase=record.phase.value,
                poll_interval=self.node.config.source.poll_interval,
            )
        except OSError as exc:
            state_dir = self.node.config.state_dir
            self._state_trouble(f"cannot write the heartbeat in {state_dir}: {exc.strerror or exc}")
        else:
            self._state_trouble("")
        self.metrics.probes.turned()
        self.metrics.last_turn.set(now)
        status = status_line(record)
        self.notifier.send("WATCHDOG=1", *([status] if status != self._status else []))
        self._status = status

    def _keep_slot(self, record: Record, now: float) -> Record:
        """Keep the budget slot's lease alive every ``keepalive_interval`` (after a reboot
        too: the lease id is in the record); one that expired is registered again."""
        budget = self.node.config.budget
        if budget is None or budget.etcd is None:
            return record
        if not record.slot and not self.node.engine.unreleased:
            return record
        if now - self._slot_kept_at < budget.etcd.keepalive_interval:
            return record
        self._slot_kept_at = now
        given = self.node.engine.keep_slot(record)
        if given is None:
            return record
        try:
            return self.node.engine.turn(None, given)[0]
        except DrainerError as exc:
            log.error("%s", exc)
            return record

    def _state_trouble(self, message: str) -> None:
        """Log once that the state cannot be used, and once that it can again (not at every
        turn in between); /healthz shows the latest reason meanwhile."""
        self.metrics.probes.state_error(message)
        if bool(message) == bool(self._trouble):
            self._trouble = message
            return
        if message:
            log.error("%s; /healthz fails until it can be written again", message)
        else:
            log.info("the state directory %s can be written again", self.node.config.state_dir)
        self._trouble = message

    def _between(self, until: float) -> None:
        """Wait for the next poll; while the node should be out, re-check its load
        balancers every ``drain.recheck_interval`` meanwhile. A stop or a reload sets
        ``wake`` with its flag, so the loop sleeps until something is due (a flag set
        without ``wake`` is seen at the next poll)."""
        every = self.node.config.drain.recheck_interval
        # The record seen changes only at this thread's turns: in service, nothing is due
        # before the next poll, and the thread sleeps until then.
        due = time.monotonic() + every if self.node.engine.should_recheck() else until
        while not self.stopping.is_set() and not self.reload.is_set():
            now = time.monotonic()
            if now >= until or self.changed.is_set():
                return
            if now >= due:
                due = now + every
                if self.node.engine.should_recheck():
                    self._recheck()
                    continue
            self.wake.wait(min(until, due) - now)
            self.wake.clear()

    def _recheck(self) -> None:
        engine = self.node.engine
        try:
            engine.recheck()
        except StateError as exc:
            engine.metrics.errors.labels("state").inc()
            self._state_trouble(str(exc))
        except DrainerError as exc:
            log.error("%s", exc)
        except Exception:
            engine.metrics.errors.labels("internal").inc()
            log.exception("unexpected error in a re-check; continuing")

    def _reload(self) -> None:
        old = self.node
        if self.config_path is None:
            log.warning("SIGHUP: no configuration file to reload")
            return
        log.info("SIGHUP: reloading %s", self.config_path)
        old_names = old.engine.policy.node_names
        try:
            config = load_config(self.config_path)
            if config.state_dir != old.config.state_dir:
                raise ConfigError(
                    "state_dir: cannot change while drainer runs (its lock is held there); "
                    "restart drainer to move it"
                )
            same_node = config.node.name == old.config.node.name
            new = assemble(
                config, self.stopping, metrics=self.metrics, names=old_names if same_node else None
            )
        except DrainerError as exc:
            log.error("SIGHUP: configuration not reloaded, keeping the one in use: %s", exc)
            return
        except Exception:
            log.exception("SIGHUP: configuration not reloaded, keeping the one in use")
            return
        old.close(slots=False)  # the budget's client waits for the configuration that serves
        try:
            _serve(new)
        except DrainerError as exc:
            new.close()
            log.error("SIGHUP: configuration not reloaded, keeping the one in use: %s", exc)
            try:  # the old configuration served until a moment ago
                new = assemble(old.config, self.stopping, metrics=self.metrics, names=old_names)
                _serve(new)
            except Exception:  # the old node goes on: its budget client stays open
                log.exception("SIGHUP: cannot restore the configuration in use")
                return
        else:
            if config.metrics.listen != old.config.metrics.listen:
                log.warning("SIGHUP: metrics.listen takes effect at the next restart")
            log.info(
                "configuration reloaded: load balancers %s, poll every %gs",
                ", ".join(new.lbs),
                config.source.poll_interval,
            )
        # only now that it is known which configuration serves (a rollback keeps the
        # budget where it was: a node out must not give its slot back, even for a moment)
        moved = old.engine.hand_over_slots(new.engine)
        if old.engine.slots is not None:
            old.engine.slots.close()
        new.engine.follow_disk = True
        new.engine.adopt(old.engine, budget_moved=moved)
        if self.outbox is not None:
            self.outbox.configure(new.config.notify)
            self.outbox.follow(new.engine)
        self.metrics.keep_lbs(new.lbs)
        self.pacer = Pacer(new.config.source.poll_interval, self.pacer.streak)
        self.node = new
        self._watch(new)


def _serve(node: Node) -> None:
    for lb in node.lbs.values():
        lb.serve()
    for lb in node.lbs.values():  # say now what would fail later; start anyway
        for check in preflight(lb):
            if not check.ok:
                log.error(
                    "preflight failed: %s: %s (running anyway, so that the node can"
                    " still be drained; see `drainer check`)",
                    check.name,
                    check.detail,
                    extra={"lb": lb.name},
                )


def loop(node: Node, stopping: threading.Event) -> None:
    """Turn ``node`` until ``stopping`` is set (the demo's way to run the daemon)."""
    Runner(node, stopping=stopping).loop()


def _check_writable(state_dir: Path) -> None:
    probe = state_dir / ".write-test"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"drainer")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise StateError(
            f"cannot write in the state directory {state_dir}: {exc.strerror or exc}; "
            "drainer records what it does before it acts, so it does not start without it"
        ) from exc


class _Signals:
    """SIGTERM, SIGINT and SIGHUP turned into the daemon's events, with no lock taken in
    a handler. A Python handler runs in the main thread between any two bytecodes, maybe
    while that thread holds an Event's lock (inside ``set()`` or ``wait()``) or inside the
    same handler (a burst of signals nests it): a handler that set an Event could wait
    for its own thread forever. So the handlers do nothing; ``signal.set_wakeup_fd``
    writes each signal's number to a pipe, and this object's thread reads it and acts.

    A SIGHUP before the runner exists (drainer still starting) is counted, and becomes
    one reload once ``started(runner)`` is called."""

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        self.settle = threading.Event()  # the main thread's wait: a stop, or the loop's end
        self._lock = threading.Lock()
        self._runner: Runner | None = None
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        # In this order, no signal falls between two steps: the pipe before the handlers
        # (a signal whose handler is in place before it would be noted nowhere), and what
        # drainer.early held taken after its handler is gone (a SIGHUP that comes while
        # both are in place is counted twice: still one reload).
        try:  # ValueError outside the main thread
            self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        except BaseException:
            self._close_pipe()
            raise
        try:  # KeyboardInterrupt: a SIGINT before its handler is in place
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signum, _noted)
        except BaseException:
            signal.set_wakeup_fd(self._previous)
            self._close_pipe()
            raise
        self._hups = early.taken()  # held by the CLI before these handlers were in place
        self._thread = threading.Thread(target=self._relay, name="drainer-signals", daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        while data := os.read(self._read, 64):  # b"": the pipe closed
            for signum in data:
                self._act(signum)

    def _act(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            log.info("%s: stopping; the node stays as it is", signal.Signals(signum).name)
            self.stopping.set()
            self.settle.set()
        with self._lock:
            runner = self._runner
            if signum == signal.SIGHUP and runner is None:
                self._hups += 1  # still starting: reload once the loop runs
                return
        if runner is not None:
            if signum == signal.SIGHUP:
                runner.reload.set()
            runner.wake.set()

    def started(self, runner: Runner) -> None:
        """From now on a SIGHUP reloads ``runner``; one that came while starting does now."""
        with self._lock:
            self._runner, hups, self._hups = runner, self._hups, 0
        if hups:
            log.info("SIGHUP while starting: reloading the configuration once running")
            runner.reload.set()
        if self.stopping.is_set():
            runner.wake.set()

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        os.close(self._write)  # the relay reads b"" and ends
        self._thread.join(timeout=1.0)
        if not self._thread.is_alive():
            os.close(self._read)

    def _close_pipe(self) -> None:
        os.close(self._read)
        os.close(self._write)


def _noted(signum: int, frame: FrameType | None) -> None:
    """The handler of every signal ``_Signals`` relays: nothing to do here (see there)."""


def _wait(runner: Runner, signals: _Signals) -> None:
    """Run ``runner`` in the worker thread; the main thread sleeps until a stop signal or
    the worker's end, with no periodic wakeup. Then the worker gets a second to finish
    its turn."""

    def work() -> None:
        try:
            runner.loop()
        finally:
            signals.settle.set()

    worker = threading.Thread(target=work, name="drainer-loop", daemon=True)
    worker.start()
    signals.settle.wait()
    worker.join(timeout=1.0)


def run(config: Config, *, config_path: Path | None = None) -> int:
    stopping = threading.Event()
    signals = _Signals(stopping)
    try:
        return _run(config, config_path, stopping, signals)
    finally:
        signals.close()


def _run(
    config: Config, config_path: Path | None, stopping: threading.Event, signals: _Signals
) -> int:
    runner: Runner | None = None
    lock = sidecar.acquire(config.state_dir)
    notifier = Notifier(
        os.environ.get("NOTIFY_SOCKET"), watchdog=watchdog_seconds(os.environ, os.getpid())
    )
    # without a listener nothing would read them: prometheus_client is not even loaded
    metrics = Metrics() if config.metrics.listen else NullMetrics()
    outbox: Outbox | None = None
    try:
        _check_writable(config.state_dir)
        record = Store(config.state_dir).load()
        metrics.set_phase(record.phase, record.since)
        metrics.set_record(record)
        if config.metrics.listen:
            metrics.serve(config.metrics.listen)
        outbox = Outbox(config.notify, config.state_dir, metrics).start()
        try:
            node = assemble(config, stopping, patient=True, metrics=metrics)
        except DrainerError:
            if stopping.is_set():  # stopped while waiting for the VM's name: a clean stop
                return 0
            raise
        try:
            _serve(node)
            runner = Runner(
                node, stopping=stopping, config_path=config_path, notifier=notifier, outbox=outbox
            )
            signals.started(runner)
            with contextlib.suppress(StateError):  # the first turn says why
                outbox.catch_up(Store(config.state_dir).load())  # what no process told
            log.info(
                "drainer running for %s: phase %s, load balancers %s",
                "/".join(sorted(node.engine.policy.node_names)),
                record.phase.value,
                ", ".join(node.lbs),
            )
            notifier.send("READY=1", status_line(record), f"MAINPID={os.getpid()}")
            _wait(runner, signals)
            notifier.send("STOPPING=1")
        finally:
            (runner.node if runner else node).close()
    finally:
        if outbox is not None:
            outbox.close()
        metrics.close()
        notifier.close()
        lock.close()
    return 0 if stopping.is_set() else 1
