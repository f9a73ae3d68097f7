#!/usr/bin/env python3
"""A node rebooted under load behind a real HAProxy: how many client requests fail?

Three local backends (web-1..3) behind a real HAProxy, steady load from keep-alive
clients, and a fake metadata service that schedules a Reboot for web-1. The simulated
reboot stops web-1 (cutting its open connections) and its drainer when the event
starts, and brings both back about 10 s later with a new boot id; the event ends a few
seconds after that. The same scenario runs three times:

1. baseline: HAProxy's own health checks only, no drainer,
2. runtime: drainer with the HAProxy runtime API adapter (`type: haproxy`),
3. agent: drainer answering HAProxy's agent-check (`type: haproxy-agent`), reading
   sessions from a read-only stats socket; `agent-proc` counts them from /proc/net/tcp.

Per run it prints requests served, failed requests (connection errors and 5xx), how
long web-1 was out of the pool as HAProxy saw it, and the time from the event's
appearance to web-1 leaving the pool. Loopback only, bounded in time.

    python bench/zero_failures.py [--seconds 60] [--workers 16] [--runs baseline,runtime,...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from drainer.adapters.haproxy.client import HAProxyClient
from drainer.errors import AdapterError
from drainer.testing import (
    BlackHole,
    FakeIMDS,
    LoadClient,
    WebProcess,
    free_port,
    start_haproxy_in_front,
)

NODE = "web-1"
PEERS = ("web-2", "web-3")
DOWN_SECONDS = 10.0  # how long the simulated reboot keeps web-1 down
DELAY = float(os.environ.get("BENCH_DELAY", "0.01"))  # seconds a request takes at a backend


@dataclass
class Result:
    mode: str
    served: int
    failed: int
    errors: dict[str, int]
    out_seconds: float
    event_to_out: float | None
    back_in_pool: bool


class Watcher(threading.Thread):
    """Samples web-1's status in HAProxy every ``every`` seconds (UP, DRAIN, MAINT,
    DOWN 1/2...): how long out, when first out."""

    def __init__(self, admin: str, *, every: float = 0.05) -> None:
        super().__init__(name="watcher", daemon=True)
        self.client = HAProxyClient(admin, timeout=2.0)
        self.every = every
        self.stop = threading.Event()
        self.samples: list[tuple[float, str]] = []  # (time, status)

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                rows = [r for r in self.client.stat("app") if r.server == NODE]
            except AdapterError:
                continue
            if rows:
                self.samples.append((time.time(), rows[0].status))

    def out_seconds(self) -> float:
        total = 0.0
        for (t0, status), (t1, _) in zip(self.samples, self.samples[1:], strict=False):
            if not status.startswith("UP"):
                total += t1 - t0
        return total

    def first_out_after(self, moment: float) -> float | None:
        for t, status in self.samples:
            if t >= moment and not status.startswith("UP"):
                return t - moment
        return None

    def in_pool_now(self) -> bool:
        return bool(self.samples) and self.samples[-1][1].startswith("UP")


class Sidecar:
    """`drainer run` for web-1, as a process that the reboot stops."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.config.with_suffix(".log"), "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "drainer", "run", "-c", str(self.config)],
            stdout=log,
            stderr=log,
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)


def scenario(mode: str, *, seconds: float, workers: int, keep_logs: Path | None) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix=f"drainer-zero-{mode}-") as tmp_dir,
        FakeIMDS(rate_limit=None) as fake,
    ):
        tmp = Path(tmp_dir)
        webs = {
            name: WebProcess(free_port(), name=name, delay=DELAY).start() for name in (NODE, *PEERS)
        }
        agent_port = free_port()
        per_server = {}
        if mode.startswith("agent"):
            per_server[NODE] = (
                f"agent-check agent-addr 127.0.0.1 agent-port {agent_port} agent-inter 500ms"
            )
        proxy = start_haproxy_in_front(
            tmp, backends={n: w.port for n, w in webs.items()}, per_server=per_server
        )
        sidecar: Sidecar | None = None
        boot = tmp / "boot_id"
        boot.write_text("boot-1\n")
        if mode != "baseline":
            lb: dict[str, object] = {
                "type": "haproxy",
                "instances": [proxy.admin],
                "backend": "app",
                "server": NODE,
            }
            if mode.startswith("agent"):
                lb = {
                    "type": "haproxy-agent",
                    "listen": f"127.0.0.1:{agent_port}",
                    "service_port": webs[NODE].port,
                    "peers": ["127.0.0.1"],
                }
            if mode == "agent":  # sessions from a read-only (level user) stats socket
                lb |= {"stats": [f"unix://{tmp}/stats.sock"], "backend": "app", "server": NODE}
            config = {
                "node": {"name": NODE, "boot_id_path": str(boot)},
                "state_dir": str(tmp / "state"),
                "source": {"endpoint": fake.url, "poll_interval": "1s"},
                "drain": {"timeout": "20s"},
                "health": {
                    "http": {"url": f"http://127.0.0.1:{webs[NODE].port}/healthz"},
                    "interval": "500ms",
                    "successes": 3,
                },
                "load_balancers": [lb],
                "metrics": {"listen": None},
            }
            (tmp / "drainer.yaml").write_text(json.dumps(config))
            sidecar = Sidecar(tmp / "drainer.yaml")
            sidecar.start()

        watcher = Watcher(proxy.admin)
        watcher.start()
        deadline = time.monotonic() + 10
        while not (watcher.samples and watcher.in_pool_now()):
            if time.monotonic() > deadline:
                raise RuntimeError("web-1 never came up in HAProxy")
            time.sleep(0.1)
        time.sleep(2.0)  # the sidecar has made its first polls

        load = LoadClient(
            f"http://127.0.0.1:{proxy.port}/", workers=workers, limit_seconds=seconds + 30
        ).start()
        started = time.monotonic()
        time.sleep(5.0)
        appeared = time.time()
        event_id = fake.schedule("Reboot", [NODE], not_before_in=20, end_after=DOWN_SECONDS + 5)

        # The VM: reboot when the event starts.
        while (
            fake.snapshot()["Events"] and fake.snapshot()["Events"][0]["EventStatus"] != "Started"
        ):
            time.sleep(0.05)
        if sidecar:
            sidecar.stop()
        webs[NODE].stop()
        hole = BlackHole(webs[NODE].port)  # the address answers nothing while it reboots
        time.sleep(DOWN_SECONDS)
        hole.close()
        boot.write_text("boot-2\n")
        webs[NODE] = WebProcess(webs[NODE].port, name=NODE, delay=DELAY).start()
        if sidecar:
            sidecar.start()

        remaining = seconds - (time.monotonic() - started)
        time.sleep(max(remaining, 0.0))
        load.stop()
        watcher.stop.set()
        watcher.join()
        served, failed = load.counts()
        result = Result(
            mode=mode,
            served=served,
            failed=failed,
            errors=dict(load.errors),
            out_seconds=watcher.out_seconds(),
            event_to_out=watcher.first_out_after(appeared),
            back_in_pool=watcher.in_pool_now(),
        )
        if fake.snapshot()["Events"]:
            fake.end_event(event_id)
        if sidecar:
            sidecar.stop()
            if keep_logs:
                keep_logs.mkdir(parents=True, exist_ok=True)
                log = (tmp / "drainer.log").read_text()
                (keep_logs / f"{mode}.log").write_text(log)
        proxy.stop()
        for web in webs.values():
            web.stop()
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration per run")
    parser.add_argument("--workers", type=int, default=16, help="concurrent keep-alive clients")
    parser.add_argument("--runs", default="baseline,runtime,agent,agent-proc")
    parser.add_argument("--logs", type=Path, help="keep each run's drainer log in this folder")
    args = parser.parse_args()
    results = [
        scenario(mode, seconds=args.seconds, workers=args.workers, keep_logs=args.logs)
        for mode in args.runs.split(",")
    ]
    print(
        f"{'run':<10} {'served':>8} {'failed':>7} {'out of pool':>12} {'event->out':>11}  "
        "back in pool  errors"
    )
    for r in results:
        to_out = f"{r.event_to_out:.2f} s" if r.event_to_out is not None else "-"
        print(
            f"{r.mode:<10} {r.served:>8} {r.failed:>7} {r.out_seconds:>10.1f} s "
            f"{to_out:>11}  {'yes' if r.back_in_pool else 'NO':<12}  "
            f"{r.errors or '-'}"
        )
    bad = [r for r in results if r.mode != "baseline" and (r.failed or not r.back_in_pool)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
