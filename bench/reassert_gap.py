#!/usr/bin/env python3
"""A drained node, an HAProxy reload under load: how many requests reach the node
before drainer takes it out again?

An HAProxy reload (``systemctl reload``: SIGUSR2 to the master) starts a new worker from
the configuration file: the drain set through the runtime API is forgotten and the node
takes traffic again until drainer re-asserts it. drainer re-checks the load balancers
every ``drain.recheck_interval`` while the node should be out (before: only at the
metadata poll, every second).

Two backends (web-1, web-2) behind a real HAProxy in master-worker mode, steady
bounded load from keep-alive clients, web-1 drained with ``drainer drain`` and held
out by ``drainer run``. Each run reloads HAProxy ``--reloads`` times and, per reload,
counts the requests web-1 answered in the new worker (HAProxy's own per-server
response counters, which start at zero in a new worker) and the time from the reload
signal to web-1 being in MAINT again. The same scenario runs with the recheck interval
at 1 s (the old behaviour: the poll interval) and at 250 ms (the default). Loopback
only, bounded in time.

    python bench/reassert_gap.py [--reloads 5] [--workers 8] [--intervals 1s,250ms]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from drainer.model import parse_duration
from drainer.testing import (
    FakeIMDS,
    HAProxy,
    LoadClient,
    WebProcess,
    free_port,
    haproxy_cli,
    start_haproxy_in_front,
    wait_until,
)

NODE = "web-1"
PEER = "web-2"
DELAY = 0.005  # seconds a request takes at a backend
PAUSE = 0.01  # seconds each load client waits between requests: bounded load


@dataclass
class Result:
    interval: str
    served: int
    failed: int
    per_reload: list[int]  # requests web-1 answered after each reload
    gaps: list[float]  # seconds from the reload signal to web-1 in MAINT again


def web1(proxy: HAProxy) -> dict[str, str]:
    text = haproxy_cli(proxy.admin_socket, "show stat app 4 -1", timeout=1.0)
    return next(r for r in csv.DictReader(text[2:].splitlines()) if r["svname"] == NODE)


def until_web1(proxy: HAProxy, status: str, what: str, timeout: float = 10.0) -> None:
    """Poll every 5 ms: the gaps measured are this fine."""
    wait_until(
        lambda: web1(proxy)["status"] == status,
        timeout=timeout,
        interval=0.005,
        what=what,
        ignore=(OSError, StopIteration, ValueError),
    )


def answered(row: dict[str, str]) -> int:
    return sum(int(row[f"hrsp_{k}xx"] or 0) for k in range(1, 6)) + int(row["hrsp_other"] or 0)


def scenario(interval: str, *, reloads: int, workers: int) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix="drainer-gap-", dir="/tmp") as tmp_dir,
        FakeIMDS(rate_limit=None) as fake,
    ):
        tmp = Path(tmp_dir)
        webs = {n: WebProcess(free_port(), name=n, delay=DELAY).start() for n in (NODE, PEER)}
        proxy = start_haproxy_in_front(
            tmp, backends={n: w.port for n, w in webs.items()}, master_worker=True
        )
        proxy.poll = 0.005  # reload() returns this soon after the new worker answers
        boot = tmp / "boot_id"
        boot.write_text("boot-1\n")
        config = tmp / "drainer.yaml"
        config.write_text(
            json.dumps(
                {
                    "node": {"name": NODE, "boot_id_path": str(boot)},
                    "state_dir": str(tmp / "state"),
                    "source": {"endpoint": fake.url, "poll_interval": "1s"},
                    "drain": {"timeout": "20s", "recheck_interval": interval},
                    "health": {"http": {"url": f"http://127.0.0.1:{webs[NODE].port}/healthz"}},
                    "load_balancers": [
                        {
                            "type": "haproxy",
                            "instances": [proxy.admin],
                            "masters": [f"unix://{proxy.master_socket}"],
                            "backend": "app",
                            "server": NODE,
                        }
                    ],
                    "metrics": {"listen": None},
                }
            )
        )
        log = (tmp / "drainer.log").open("ab")
        drainer = [sys.executable, "-m", "drainer"]
        daemon = subprocess.Popen([*drainer, "run", "-c", str(config)], stdout=log, stderr=log)
        load: LoadClient | None = None
        try:
            subprocess.run([*drainer, "drain", "-c", str(config)], check=True, capture_output=True)
            until_web1(proxy, "MAINT", "web-1 held out", timeout=30)
            load = LoadClient(
                f"http://127.0.0.1:{proxy.port}/", workers=workers, pause=PAUSE, limit_seconds=300
            ).start()
            per_reload: list[int] = []
            gaps: list[float] = []
            for _ in range(reloads):
                time.sleep(2.0)
                sent = time.monotonic()
                proxy.reload()  # returns once a new worker answers
                until_web1(proxy, "MAINT", "web-1 out again")
                gaps.append(time.monotonic() - sent)
                time.sleep(0.5)  # requests in flight when it went out are counted too
                per_reload.append(answered(web1(proxy)))
            load.stop()
            served, failed = load.counts()
            return Result(interval, served, failed, per_reload, gaps)
        finally:
            if load is not None:
                load.stop()
            daemon.terminate()
            daemon.wait(timeout=10)
            log.close()
            proxy.stop()
            for web in webs.values():
                web.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=5, help="HAProxy reloads per run")
    parser.add_argument("--workers", type=int, default=8, help="concurrent keep-alive clients")
    parser.add_argument("--intervals", default="1s,250ms", help="drain.recheck_interval values")
    args = parser.parse_args()
    for interval in args.intervals.split(","):
        parse_duration(interval)  # a typo fails here, not in the daemon's log
    results = [
        scenario(i, reloads=args.reloads, workers=args.workers) for i in args.intervals.split(",")
    ]
    print(
        f"{'recheck':<8} {'served':>7} {'failed':>6}  {'to web-1 after each reload':<28} "
        f"{'mean':>5} {'max':>4}  {'reload->out mean':>16} {'max':>6}"
    )
    for r in results:
        print(
            f"{r.interval:<8} {r.served:>7} {r.failed:>6}  "
            f"{' '.join(str(n) for n in r.per_reload):<28} "
            f"{statistics.mean(r.per_reload):>5.1f} {max(r.per_reload):>4}  "
            f"{statistics.mean(r.gaps):>14.2f} s {max(r.gaps):>4.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
