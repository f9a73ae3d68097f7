#!/usr/bin/env python3
"""How fast the sidecar reacts to a maintenance notice, per source: from the moment the
notice is visible in the metadata service to the load-balancer adapter's drain call.

For each source, starts its fake metadata service and `drainer run` (mock load
balancer, no drain time, metrics off) as a subprocess, then --events times: makes a
notice visible at a moment spread over the poll cycle, waits for the drain call (read
from the mock's own call log, which stamps each call), withdraws the notice and waits
for the node to be back in service. Prints the median, p90 and max per source.

- azure: a Started Reboot in Scheduled Events, seen at the next poll (--poll-interval);
- aws: a scheduled instance-reboot a minute ahead (due at once), seen at the next poll
  (only when this drainer has the AWS source and its fake);
- gcp: `maintenance-event` turning MIGRATE_ON_HOST_MAINTENANCE, seen by the hanging
  GET (the poll interval does not matter: expected in milliseconds).

Loopback only; bounded by the counts given.

    python bench/reaction.py [--events 15] [--poll-interval 1] [--sources azure,aws,gcp]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from drainer.testing import FakeGCP, FakeIMDS, WebServer, free_port, wait_until

NODE = "web-1"


class _Notice:
    """One cloud's fake, and how to make a notice visible and withdraw it."""

    source: dict[str, Any]

    def __init__(self, fake: Any) -> None:
        self.fake = fake

    def show(self) -> None:
        raise NotImplementedError

    def withdraw(self) -> None:
        raise NotImplementedError


class _Azure(_Notice):
    def __init__(self, fake: FakeIMDS) -> None:
        super().__init__(fake)
        self.source = {"type": "azure", "endpoint": fake.url}
        self.event_id = ""

    def show(self) -> None:
        self.event_id = self.fake.schedule("Reboot", [NODE], status="Started")

    def withdraw(self) -> None:
        self.fake.end_event(self.event_id)


class _Gcp(_Notice):
    def __init__(self, fake: FakeGCP) -> None:
        super().__init__(fake)
        self.source = {"type": "gcp", "endpoint": fake.url}

    def show(self) -> None:
        self.fake.set_maintenance("MIGRATE_ON_HOST_MAINTENANCE")

    def withdraw(self) -> None:
        self.fake.set_maintenance("NONE")


class _Aws(_Notice):
    def __init__(self, fake: Any) -> None:
        super().__init__(fake)
        self.source = {"type": "aws", "endpoint": fake.url}
        self.event_id = ""

    def show(self) -> None:
        # a minute ahead: less than drain.timeout + margin, so due at once
        self.event_id = self.fake.schedule("instance-reboot", not_before_in=60)

    def withdraw(self) -> None:
        self.fake.complete(self.event_id)


def _fake(cloud: str) -> tuple[AbstractContextManager[Any], Callable[[Any], _Notice]] | None:
    if cloud == "azure":
        return FakeIMDS(rate_limit=None, compute={"name": NODE}), _Azure
    if cloud == "gcp":
        return FakeGCP(instance={"instance/name": NODE}), _Gcp
    try:  # the AWS source and its fake, where this drainer has them
        importlib.import_module("drainer.sources.aws")
        fake_aws = importlib.import_module("drainer.testing.fake_aws")
    except ModuleNotFoundError:
        return None
    return fake_aws.FakeAWS(local_hostname=NODE), _Aws


def measure(cloud: str, *, events: int = 15, poll_interval: float = 1.0) -> list[float] | None:
    """Seconds from a notice made visible to the drain call, ``events`` times (sorted);
    None when this drainer has no such source."""
    made = _fake(cloud)
    if made is None:
        return None
    context, notice_of = made
    with tempfile.TemporaryDirectory(prefix="drainer-bench-") as tmp_dir, context as fake:
        notice = notice_of(fake)
        tmp = Path(tmp_dir)
        (tmp / "boot_id").write_text("boot-1\n")
        web = WebServer(free_port(), name=NODE).start()
        mock = tmp / "mock.json"
        config = {
            "node": {"name": NODE, "boot_id_path": str(tmp / "boot_id")},
            "state_dir": str(tmp / "state"),
            "source": {**notice.source, "poll_interval": poll_interval, "gone_after": "200ms"},
            "health": {"tcp": {"port": web.port}, "interval": "100ms", "successes": 1},
            "load_balancers": [{"type": "mock", "path": str(mock), "drain_seconds": 0}],
            "metrics": {"listen": None},
        }
        path = tmp / "drainer.yaml"
        path.write_text(json.dumps(config))
        proc = subprocess.Popen(
            [sys.executable, "-m", "drainer", "run", "-c", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def drains() -> list[float]:
            try:
                calls = json.loads(mock.read_text())["calls"]
            except (FileNotFoundError, ValueError):
                return []
            return [c["at"] for c in calls if c["op"] == "drain"]

        def in_service() -> bool:
            try:
                state = json.loads((tmp / "state" / "state.json").read_text())
            except (FileNotFoundError, ValueError):
                return False
            return bool(state["phase"] == "in_service")

        try:
            wait_until(lambda: (tmp / "state" / "heartbeat.json").exists(), timeout=30.0)
            latencies: list[float] = []
            for i in range(events):
                before = len(drains())
                time.sleep(0.1 + (i * 0.37 * poll_interval) % poll_interval)  # over the cycle
                visible = time.time()
                notice.show()
                wait_until(
                    lambda before=before: len(drains()) > before,
                    timeout=15.0 + 16 * poll_interval,
                    interval=0.005,
                    what=f"{cloud}: the drain",
                )
                latencies.append(drains()[-1] - visible)
                notice.withdraw()
                wait_until(in_service, timeout=30.0, interval=0.01, what=f"{cloud}: in service")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            web.stop()
    return sorted(latencies)


def summary(cloud: str, latencies: list[float], poll_interval: float) -> str:
    pace = "hanging GET" if cloud == "gcp" else f"poll every {poll_interval:g} s"
    p90 = latencies[min(len(latencies) - 1, round(0.9 * (len(latencies) - 1)))]
    return (
        f"{cloud:<6} {pace:<18} notice -> drain call, {len(latencies)} notices: "
        f"median {statistics.median(latencies) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=15, help="notices per source")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--sources", default="azure,aws,gcp", help="comma-separated")
    args = parser.parse_args()
    for cloud in args.sources.split(","):
        latencies = measure(cloud, events=args.events, poll_interval=args.poll_interval)
        if latencies is None:
            print(f"{cloud:<6} not measured: this drainer has no {cloud} source or fake")
            continue
        print(summary(cloud, latencies, args.poll_interval), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
