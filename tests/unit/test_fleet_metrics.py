"""The metrics the fleet's alert rules and dashboard read (deploy/prometheus, deploy/grafana).

The time out of service per maintenance spans the reboot it causes: the record keeps
since when the node is out and for which event type, so the process that starts after
the reboot observes the whole time when the node is back. The engine is driven
in-process (memory source and load balancer, fake clock); a reboot is a new engine and a
new ``Metrics`` on the same state directory, as a new ``drainer run`` would have.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from drainer.adapters.base import AdapterConfig
from drainer.config import Config, HealthConfig, parse_config
from drainer.core import ManualDrain, ManualUndrain, Phase
from drainer.engine import Engine, build_lbs
from drainer.metrics import Metrics
from drainer.model import EventStatus, EventType
from drainer.store import Store
from drainer.testing import FakeClock, MemoryLoadBalancer, MemorySource, free_port, maintenance

LB = "lb1"


class Story:
    """One VM: a source, a load balancer and a clock that outlive its processes."""

    def __init__(self, tmp_path: Path) -> None:
        self.config: Config = parse_config(
            {
                "state_dir": str(tmp_path / "state"),
                "health": {"http": {"url": "http://127.0.0.1:9/"}, "interval": "2s"},
                "load_balancers": [{"type": "mock", "name": LB}],
                "metrics": {"listen": None},
            }
        )
        self.clock = FakeClock()
        self.source = MemorySource()
        self.lb = MemoryLoadBalancer(LB)
        self.boots = 0
        self.metrics = Metrics()
        self.engine = self.boot()

    def boot(self) -> Engine:
        """A new process (after a reboot): fresh metrics, set from the saved record first,
        as ``drainer run`` does at start."""
        self.boots += 1
        self.metrics = Metrics()
        self.metrics.set_record(Store(self.config.state_dir).load())
        return Engine(
            policy=self.config.policy(node_names=frozenset({"web-1"}), lbs=(LB,)),
            lbs={LB: self.lb},
            store=Store(self.config.state_dir),
            source=self.source,
            boot_id=f"boot-{self.boots}",
            health=self.config.health,
            metrics=self.metrics,
            clock=self.clock,
            check=self.check,
        )

    @staticmethod
    def check(_: HealthConfig) -> tuple[bool, str]:
        return True, "200 OK"

    def until(self, phase: Phase) -> float:
        """Turn every 2 s until ``phase``; when it was reached."""
        for _ in range(30):
            self.clock.advance(2.0)
            record, _ = self.engine.turn(self.source.events())
            if record.phase is phase:
                return self.clock.now
        raise AssertionError(f"not {phase.value}: {Store(self.config.state_dir).load()}")

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


def test_the_time_out_of_service_spans_the_reboot_and_is_observed_once_back(
    tmp_path: Path,
) -> None:
    story = Story(tmp_path)
    assert story.value("drainer_out_of_service_since_timestamp_seconds") == 0
    assert story.value("drainer_out_of_service_seconds_count", type="Reboot") == 0

    story.source.publish(maintenance("e1", EventType.REBOOT, EventStatus.STARTED))
    story.clock.advance(2.0)
    story.engine.turn(story.source.events())
    left = story.clock.now
    assert story.value("drainer_out_of_service_since_timestamp_seconds") == left
    assert story.value("drainer_out_for_event", type="Reboot") == 1
    assert story.value("drainer_out_for_event", type="Freeze") == 0
    story.until(Phase.IN_MAINTENANCE)

    story.engine = story.boot()  # the maintenance reboots the VM
    assert story.value("drainer_out_of_service_since_timestamp_seconds") == left
    assert story.value("drainer_out_for_event", type="Reboot") == 1
    story.source.publish()  # the event is over
    back = story.until(Phase.IN_SERVICE)

    assert story.value("drainer_out_of_service_seconds_count", type="Reboot") == 1
    assert story.value("drainer_out_of_service_seconds_sum", type="Reboot") == back - left
    assert story.value("drainer_out_of_service_since_timestamp_seconds") == 0
    assert story.value("drainer_out_for_event", type="Reboot") == 0
    assert story.value("drainer_events_total", type="Freeze") == 0  # there from the start


def test_an_operators_drain_is_flagged_and_timed_without_an_event(tmp_path: Path) -> None:
    story = Story(tmp_path)
    assert story.value("drainer_manual_drain") == 0
    story.engine.turn(None, ManualDrain())
    story.until(Phase.HELD)
    assert story.value("drainer_manual_drain") == 1
    assert story.value("drainer_drains_total", result="drained") == 1
    assert story.value("drainer_drains_total", result="deadline") == 0

    story.clock.advance(600)
    story.engine.turn(None, ManualUndrain())
    story.until(Phase.IN_SERVICE)
    assert story.value("drainer_manual_drain") == 0
    assert story.value("drainer_out_of_service_seconds_count", type="none") == 1
    assert story.value("drainer_out_of_service_seconds_count", type="Reboot") == 0
    assert story.value("drainer_out_of_service_seconds_sum", type="none") >= 600  # type: ignore[operator]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {
                "type": "haproxy",
                "instances": ["tcp://10.0.0.2:9999", "tcp://10.0.0.3:9999"],
                "backend": "app",
                "server": "web-1",
            },
            [
                ("haproxy@tcp://10.0.0.2:9999", "haproxy", "app"),
                ("haproxy@tcp://10.0.0.3:9999", "haproxy", "app"),
            ],
        ),
        ({"type": "mock", "name": "edge"}, [("edge", "mock", "edge")]),
        (
            {
                "type": "remote",
                "url": "https://lb:9470",
                "load_balancer": "shop",
                "token_file": "/dev/null",
            },
            [("remote-shop", "remote", "shop")],
        ),
    ],
)
def test_each_load_balancer_is_described_with_its_backend(
    tmp_path: Path, entry: dict[str, object], expected: list[tuple[str, str, str]]
) -> None:
    config = parse_config(
        {
            "state_dir": str(tmp_path),
            "health": {"http": {"url": "http://127.0.0.1:9/"}},
            "load_balancers": [entry],
            "metrics": {"listen": None},
        }
    )
    entries: dict[str, AdapterConfig] = {}
    build_lbs(config, "web-1", entries=entries)
    metrics = Metrics()
    metrics.describe_lbs({"gone": config.load_balancers[0]})
    metrics.describe_lbs(entries)
    described = sorted(
        (s.labels["lb"], s.labels["type"], s.labels["backend"])
        for family in metrics.registry.collect()
        if family.name == "drainer_lb_info"
        for s in family.samples
    )
    assert described == expected  # and "gone", described before, is no more


def test_a_scrape_carries_no_created_series() -> None:
    """Every label value exists from the start; their creation times would double the
    counters of every scrape, and no rule reads them."""
    metrics = Metrics()
    port = metrics.serve(f"127.0.0.1:{free_port()}")
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    finally:
        metrics.close()
    assert 'drainer_events_total{type="Freeze"} 0.0' in text
    assert "_created" not in text


def test_each_budget_pool_is_counted_from_zero_before_any_drain(tmp_path: Path) -> None:
    """``increase()`` sees a counter rise only from a sample before it: a pool's
    over-budget series that appeared at its first drain over budget would raise no
    DrainerOverBudget for it."""
    import threading

    from drainer.node import assemble

    config = parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "health": {"http": {"url": "http://127.0.0.1:9/"}},
            "load_balancers": [{"type": "mock", "name": LB, "path": str(tmp_path / "lb.json")}],
            "budget": {"engine": "local", "max_out": 1, "pools": ["web", "api"]},
            "metrics": {"listen": None},
        }
    )
    metrics = Metrics()
    node = assemble(config, threading.Event(), metrics=metrics, names=frozenset({"web-1"}))
    try:
        for pool in ("web", "api"):
            labels = {"pool": pool}
            assert metrics.registry.get_sample_value(OVER_BUDGET, labels) == 0, pool
    finally:
        node.close()


OVER_BUDGET = "drainer_budget_over_budget_total"
