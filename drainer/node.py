"""One node's parts, built from the configuration: its event source, its load
balancers and the engine between them. ``drainer run``, every CLI command and the demo
assemble a node the same way; only ``drainer run`` waits for the metadata service to
name the VM (``patient``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from drainer.adapters.base import AdapterConfig, LoadBalancer
from drainer.budget import Pool, Slots
from drainer.config import DEFAULT_SETTLE, Config
from drainer.engine import Engine, build_lbs, read_boot_id
from drainer.errors import DrainerError, SourceError, StateError
from drainer.metrics import Metrics, NullMetrics
from drainer.plugins import source_plugin
from drainer.sources.base import EventSource
from drainer.store import Store, remember_names, remembered_names

__all__ = ["Node", "assemble", "build_source", "node_names"]

log = logging.getLogger("drainer")


def build_source(config: Config, stopping: threading.Event) -> EventSource:
    return source_plugin(config.source.type).create(config.source, stopping)


def node_names(
    config: Config, source: EventSource, stopping: threading.Event, *, patient: bool
) -> frozenset[str]:
    """The configured name, or the VM's names from the source, kept in the state
    directory once learned. The daemon retries until the source answers; a CLI command
    falls back at once to the names kept, so it works while the source is down."""
    if config.node.name:
        return frozenset({config.node.name})
    delay = 1.0
    while not stopping.is_set():
        try:
            names = source.node_names()
        except SourceError as exc:
            if not patient:
                kept = remembered_names(config.state_dir)
                if kept is None:
                    raise SourceError(
                        f"cannot learn this VM's name (set node.name): {exc}"
                    ) from exc
                log.warning(
                    "cannot ask the metadata service for this VM's name (%s); "
                    "using the name learned before: %s",
                    exc,
                    ", ".join(sorted(kept)),
                )
                return kept
            log.warning("cannot learn this VM's name yet (%s); retrying in %.0fs", exc, delay)
            stopping.wait(delay)
            delay = min(delay * 2, 30.0)
            continue
        try:
            remember_names(config.state_dir, names)
        except StateError as exc:  # only a convenience for later: go on without it
            log.warning("cannot keep this VM's name for later: %s", exc)
        return names
    raise DrainerError("stopped before this VM's name was known")


@dataclass
class Node:
    """Everything one node's engine needs, built from the configuration."""

    config: Config
    engine: Engine
    source: EventSource
    lbs: dict[str, LoadBalancer]

    def close(self, *, slots: bool = True) -> None:
        """Close what the node uses; the budget's client too unless ``slots`` is False
        (a reload closes it once it knows which configuration serves)."""
        for lb in self.lbs.values():
            lb.close()
        self.source.close()
        if slots and self.engine.slots is not None:
            self.engine.slots.close()


def build_slots(config: Config, node: str, lbs: dict[str, LoadBalancer]) -> Slots | None:
    """This node's slots of the fleet budget (None: no budget configured); ``node``: the
    VM's first name (AWS's instance id; on Azure and Google Cloud the VM's name, which
    repeats across resource groups and projects), unless ``budget.node_id`` names it."""
    budget = config.budget
    if budget is None:
        return None
    node = budget.node_id or node
    if budget.etcd is None:
        from drainer.budget.local import LocalSlots

        settle = DEFAULT_SETTLE if budget.settle is None else budget.settle
        return LocalSlots(lbs, budget.max_out, budget.pools or (), settle=settle)
    from drainer.budget.etcd import EtcdBudget, EtcdSlots  # httpx: only with a budget

    assert isinstance(budget.max_out, int)  # the configuration refuses a share for etcd
    pools = [Pool(name, budget.max_out) for name in config.pools()]
    return EtcdSlots(EtcdBudget(budget.etcd), node, pools)


def assemble(
    config: Config,
    stopping: threading.Event,
    *,
    patient: bool = False,
    metrics: Metrics | None = None,
    names: frozenset[str] | None = None,
) -> Node:
    source = build_source(config, stopping)
    try:
        names = names or node_names(config, source, stopping, patient=patient)
        entries: dict[str, AdapterConfig] = {}
        lbs = build_lbs(config, sorted(names)[0], entries=entries)
    except BaseException:
        source.close()
        raise
    slots = build_slots(config, sorted(names)[0], lbs)
    engine = Engine(
        slots=slots,
        slot_retry=config.budget.etcd.retry_after if config.budget and config.budget.etcd else 2.0,
        policy=config.policy(node_names=names, lbs=tuple(lbs)),
        lbs=lbs,
        store=Store(config.state_dir),
        source=source,
        boot_id=read_boot_id(config.node.boot_id_path),
        health=config.health,
        metrics=metrics or NullMetrics(),  # a CLI command's: nothing would read them
    )
    engine.metrics.describe_lbs(entries)
    if slots is not None:
        engine.metrics.budget_pools(config.pools())
    return Node(config=config, engine=engine, source=source, lbs=lbs)
