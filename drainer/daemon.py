"""``drainer run``: poll the source, turn the engine, once per poll interval, until SIGTERM.

The loop runs in one named worker thread; the main thread only waits for the stop flag
(set by SIGTERM/SIGINT) and then gives the worker a second to finish its turn. A turn
cut short is harmless (the record on disk holds the intent, the actions are idempotent),
and stopping never undoes a drain: the VM may be going down.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import FrameType

from drainer.adapters.base import LoadBalancer
from drainer.config import Config
from drainer.engine import Engine, build_lbs, read_boot_id
from drainer.errors import ConfigError, DrainerError, PayloadError, SourceError
from drainer.metrics import Metrics
from drainer.model import Listing
from drainer.sources.base import EventSource, SourcePlugin
from drainer.store import Store

log = logging.getLogger("drainer")


def build_source(config: Config, stopping: threading.Event) -> EventSource:
    plugins = {ep.name: ep for ep in entry_points(group="drainer.sources")}
    if config.source.type not in plugins:
        known = ", ".join(sorted(plugins))
        raise ConfigError(f"source.type: unknown source {config.source.type!r} (known: {known})")
    plugin = plugins[config.source.type].load()
    if not isinstance(plugin, SourcePlugin):
        raise ConfigError(f"entry point drainer.sources:{config.source.type} is not a SourcePlugin")
    return plugin.create(config.source, stopping)


def node_names(
    config: Config, source: EventSource, stopping: threading.Event, *, patient: bool
) -> frozenset[str]:
    """The configured name, or the VM's names from the source (the daemon retries until
    it answers; a CLI command fails at once)."""
    if config.node.name:
        return frozenset({config.node.name})
    delay = 1.0
    while not stopping.is_set():
        try:
            return source.node_names()
        except SourceError as exc:
            if not patient:
                raise SourceError(f"cannot learn this VM's name (set node.name): {exc}") from exc
            log.warning("cannot learn this VM's name yet (%s); retrying in %.0fs", exc, delay)
            stopping.wait(delay)
            delay = min(delay * 2, 30.0)
    raise DrainerError("stopped before this VM's name was known")


@dataclass
class Node:
    """Everything one node's engine needs, built from the configuration."""

    config: Config
    engine: Engine
    source: EventSource
    lbs: dict[str, LoadBalancer]

    def close(self) -> None:
        for lb in self.lbs.values():
            lb.close()
        self.source.close()


def assemble(
    config: Config,
    stopping: threading.Event,
    *,
    patient: bool = False,
    metrics: Metrics | None = None,
) -> Node:
    source = build_source(config, stopping)
    try:
        names = node_names(config, source, stopping, patient=patient)
        lbs = build_lbs(config, sorted(names)[0])
    except BaseException:
        source.close()
        raise
    engine = Engine(
        policy=config.policy(node_names=names, lbs=tuple(lbs)),
        lbs=lbs,
        store=Store(config.state_dir),
        source=source,
        boot_id=read_boot_id(config.node.boot_id_path),
        health=config.health,
        metrics=metrics or Metrics(),
    )
    return Node(config=config, engine=engine, source=source, lbs=lbs)


def poll(source: EventSource, metrics: Metrics) -> Listing | None:
    """The source's listing, or None (never an empty one) when it could not be read."""
    try:
        return source.events()
    except PayloadError as exc:
        metrics.errors.labels("payload").inc()
        log.error("metadata payload rejected: %s", exc)
    except SourceError as exc:
        metrics.errors.labels("source").inc()
        log.warning("%s", exc)
    except Exception:  # a source plugin's bug must not stop the sidecar: "unknown" is safe
        metrics.errors.labels("internal").inc()
        log.exception("the event source failed unexpectedly")
    return None


def loop(node: Node, stopping: threading.Event) -> None:
    engine, interval = node.engine, node.config.source.poll_interval
    failures = 0
    while not stopping.is_set():
        started = time.monotonic()
        events = poll(node.source, engine.metrics)
        failures = failures + 1 if events is None else 0
        try:
            engine.turn(events)
        except DrainerError as exc:
            engine.metrics.errors.labels("state").inc()
            log.error("%s", exc)
        except Exception:  # a sidecar keeps going: the next turn starts from the record
            engine.metrics.errors.labels("internal").inc()
            log.exception("unexpected error in a turn; continuing")
        # Back off while the source keeps failing (429s mean we are too fast).
        pause = interval * min(2 ** max(failures - 1, 0), 16)
        stopping.wait(max(0.0, pause - (time.monotonic() - started)))


def run(config: Config) -> int:
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping; the node stays as it is", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    metrics = Metrics()
    node = assemble(config, stopping, patient=True, metrics=metrics)
    try:
        if config.metrics.listen:
            metrics.serve(config.metrics.listen)
        for lb in node.lbs.values():
            lb.serve()
        record = node.engine.store.load()
        metrics.set_phase(record.phase)
        log.info(
            "drainer running for %s: phase %s, load balancers %s",
            "/".join(sorted(node.engine.policy.node_names)),
            record.phase.value,
            ", ".join(node.lbs),
        )
        worker = threading.Thread(
            target=loop, args=(node, stopping), name="drainer-loop", daemon=True
        )
        worker.start()
        while worker.is_alive() and not stopping.is_set():
            stopping.wait(0.5)
        worker.join(timeout=1.0)
    finally:
        node.close()
    return 0 if stopping.is_set() else 1
