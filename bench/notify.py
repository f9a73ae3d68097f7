#!/usr/bin/env python3
"""Does a webhook slow a drain down? Engine turn times with no webhook, with one that
answers at once, and with one that never answers (a black hole: every attempt waits
out ``notify.timeout``).

The engine runs in-process on the test kit (an in-memory source and load balancer, a
fake clock, a real state directory), through ``--maintenances`` whole maintenances of
5 transitions each (draining, in_maintenance, recovering, in_service); an outbox follows
it, as in ``drainer run``. Printed: per scenario, the median and the slowest turn that
queued a notice (the turn includes writing the outbox file, fsync included), the median
turn that queued none, and how many notices were delivered, dropped (a full queue) or
still waiting when the run ended.

    python bench/notify.py [--maintenances 50]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from drainer._http import Handler, Served, Server
from drainer.config import HealthConfig, parse_config
from drainer.core import Phase
from drainer.engine import Engine
from drainer.metrics import Metrics
from drainer.model import EventStatus
from drainer.notify.outbox import Outbox
from drainer.store import Store
from drainer.testing import (
    BlackHole,
    FakeClock,
    MemoryLoadBalancer,
    MemorySource,
    free_port,
    maintenance,
)


class _Hook(Handler, methods=("POST",)):
    def _serve(self, method: str) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(204)
        self.end_headers()


class Answering(Served[Server[None]]):
    def _server(self) -> Server[None]:
        return Server(("127.0.0.1", 0), _Hook, None)


def healthy(_: HealthConfig) -> tuple[bool, str]:
    return True, "200 OK"


def run(url: str | None, maintenances: int, state_dir: Path) -> dict[str, Any]:
    hooks = [{"url": url}] if url else []
    config = parse_config(
        {
            "state_dir": str(state_dir),
            "health": {"tcp": {"port": 9}, "interval": "1s", "successes": 1},
            "load_balancers": [{"type": "mock", "name": "lb1"}],
            "notify": {"webhooks": hooks, "timeout": "2s", "retry_for": "10m"},
        }
    )
    clock, source, metrics = FakeClock(), MemorySource(), Metrics()
    engine = Engine(
        policy=config.policy(node_names=frozenset({"web-1"}), lbs=("lb1",)),
        lbs={"lb1": MemoryLoadBalancer("lb1", sessions=0)},
        store=Store(state_dir),
        source=source,
        boot_id="boot-1",
        health=config.health,
        metrics=metrics,
        clock=clock,
        check=healthy,
    )
    outbox = Outbox(config.notify, state_dir, metrics)
    outbox.follow(engine)
    outbox.start()
    told: list[float] = []
    quiet: list[float] = []
    started = time.perf_counter()
    for i in range(maintenances):
        source.publish(maintenance(f"e{i}", status=EventStatus.STARTED))
        phase = Phase.IN_SERVICE
        for step in range(40):
            if step == 2:
                source.publish()  # the maintenance is over
            clock.advance(3.0)
            before = (phase, time.perf_counter())
            record, _ = engine.turn(source.events())
            took = time.perf_counter() - before[1]
            (told if record.phase is not before[0] else quiet).append(took)
            phase = record.phase
            if phase is Phase.IN_SERVICE and step > 2:
                break
    total = time.perf_counter() - started
    outbox.close()

    def count(result: str) -> int:
        value = metrics.registry.get_sample_value("drainer_notifications_total", {"result": result})
        return int(value or 0)

    return {
        "transitions": len(told),
        "median_ms": statistics.median(told) * 1000,
        "max_ms": max(told) * 1000,
        "quiet_median_ms": statistics.median(quiet) * 1000 if quiet else 0.0,
        "total_s": total,
        "delivered": count("delivered"),
        "failed": count("failed"),
        "dropped": count("dropped"),
        "waiting": len(outbox.pending()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--maintenances", type=int, default=50)
    args = parser.parse_args()
    logging.getLogger("drainer").setLevel(logging.ERROR)  # the full queue's warnings
    rows = []
    with Answering() as answering, tempfile.TemporaryDirectory() as tmp:
        hole = BlackHole(free_port())
        try:
            port = hole._listener.getsockname()[1]
            for name, url in (
                ("no webhook", None),
                ("answering", answering.url),
                ("black hole", f"http://127.0.0.1:{port}/"),
            ):
                state = Path(tmp) / name.replace(" ", "-")
                rows.append((name, run(url, args.maintenances, state)))
        finally:
            hole.close()
    print(f"{args.maintenances} maintenances, engine turns in-process (shared CPU: indicative)")
    print(
        f"{'webhook':<12} {'transitions':>11} {'median ms':>10} {'max ms':>8}"
        f" {'quiet turn ms':>14} {'total s':>8} {'delivered':>9} {'dropped':>8} {'waiting':>8}"
    )
    for name, r in rows:
        print(
            f"{name:<12} {r['transitions']:>11} {r['median_ms']:>10.2f} {r['max_ms']:>8.2f}"
            f" {r['quiet_median_ms']:>14.2f} {r['total_s']:>8.2f} {r['delivered']:>9}"
            f" {r['dropped']:>8} {r['waiting']:>8}"
        )


if __name__ == "__main__":
    main()
