#!/usr/bin/env python3
"""A fleet on one machine: does the budget keep capacity while an update domain reboots?

N sidecars (default 200), each the real daemon loop (``drainer.daemon.loop``: the Azure
source, the engine, the HAProxy adapter, the state directory, the budget) in a thread of
this process, behind one real HAProxy whose backend has those N servers (all pointing at
one local web server, checked by HAProxy every second), one fake metadata service, and
for ``etcd`` a real 3-member etcd cluster. The fake schedules one update domain: a Reboot
for each of ``--domain`` VMs (default 40) at once, NotBefore ``--notice`` seconds ahead;
an approved event starts at once and is over ``--impact`` seconds later.

For each mode (no budget, ``local``, ``etcd``; max_out ``--max-out``) it prints: the most
servers out at once (HAProxy's own view, sampled every 100 ms), how many drains went
over budget at their latest start (the only ones allowed above it), the time until the
whole domain is back in service, server-seconds out of the pool, approvals, and etcd
requests per second.

    python bench/fleet.py [--sidecars 200] [--domain 40] [--max-out 5] [--modes none,local,etcd]
"""

from __future__ import annotations

import argparse
import logging
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from drainer.budget.etcd import EtcdSlots
from drainer.config import parse_config
from drainer.daemon import loop
from drainer.metrics import Metrics
from drainer.node import Node, assemble
from drainer.testing import FakeIMDS, WebServer, free_port, haproxy_cli, start_haproxy
from drainer.testing.etcd import EtcdCluster

OUT_BITS = 0x01 | 0x02 | 0x20 | 0x08 | 0x10  # maint (forced, inherited, resolution), drain


def haproxy_body(sidecars: int, web_port: int) -> str:
    servers = "".join(
        f"  server vm{i} 127.0.0.1:{web_port} check inter 1s rise 2 fall 2\n"
        for i in range(sidecars)
    )
    return f"backend app\n  balance roundrobin\n{servers}"


def out_now(admin: str) -> int:
    """Servers of the backend that take no new connections, as HAProxy says."""
    count = 0
    for line in haproxy_cli(admin, "show servers state app").splitlines()[2:]:
        cols = line.split()
        if len(cols) > 6 and (int(cols[6]) & OUT_BITS or cols[5] != "2"):
            count += 1
    return count


def sidecar_config(i: int, root: Path, fake: FakeIMDS, admin: str, web: int) -> dict[str, Any]:
    state = root / f"vm{i}"
    state.mkdir()
    (state / "boot_id").write_text("boot-1\n")
    return {
        "node": {"name": f"vm{i}", "boot_id_path": str(state / "boot_id")},
        "state_dir": str(state),
        "source": {"endpoint": fake.url, "poll_interval": "1s", "gone_after": "1s"},
        "drain": {"timeout": "10s", "margin": "2s"},
        "health": {"tcp": {"port": web}, "interval": "200ms", "successes": 2},
        "load_balancers": [
            {"type": "haproxy", "name": "edge", "instances": [admin], "backend": "app",
             "server": f"vm{i}"}
        ],
        "metrics": {"listen": None},
    }  # fmt: skip


def run_mode(mode: str, args: argparse.Namespace, cluster: EtcdCluster | None) -> dict[str, Any]:
    web = WebServer(free_port(), name="app").start()
    haproxy = start_haproxy(haproxy_body(args.sidecars, web.port))
    fake = FakeIMDS(rate_limit=None).start()
    stopping = threading.Event()
    nodes: list[Node] = []
    threads: list[threading.Thread] = []
    with tempfile.TemporaryDirectory(prefix="drainer-fleet-") as tmp:
        try:
            admin_socket = str(haproxy.admin_socket)
            time.sleep(3)  # HAProxy's first checks: every server UP
            for i in range(args.sidecars):
                raw = sidecar_config(i, Path(tmp), fake, haproxy.admin, web.port)
                if mode == "local":
                    raw["budget"] = {"engine": "local", "max_out": args.max_out}
                elif mode == "etcd":
                    assert cluster is not None
                    raw["budget"] = {
                        "engine": "etcd",
                        "max_out": args.max_out,
                        "pools": ["app"],
                        "etcd": {"endpoints": cluster.endpoints, "prefix": f"/fleet-{mode}/",
                                 "retry_after": "1s"},
                    }  # fmt: skip
                node = assemble(
                    parse_config(raw), stopping, metrics=Metrics(), names=frozenset({f"vm{i}"})
                )
                nodes.append(node)
                thread = threading.Thread(target=loop, args=(node, stopping), daemon=True)
                threads.append(thread)
                thread.start()
            time.sleep(3)  # every sidecar has polled
            samples: list[tuple[float, int]] = []
            started = time.monotonic()
            ids = [
                fake.schedule(
                    "Reboot", [f"vm{i}"], not_before_in=args.notice, end_after=args.impact
                )
                for i in range(args.domain)
            ]
            done_at = None
            limit = started + args.notice + 60
            while time.monotonic() < limit:
                out = out_now(admin_socket)
                samples.append((time.monotonic(), out))
                phases = [n.engine.store.load().phase.value for n in nodes[: args.domain]]
                listed = {e["EventId"] for e in fake.snapshot()["Events"]}
                gone = not listed & set(ids)
                if gone and out == 0 and all(p == "in_service" for p in phases):
                    done_at = time.monotonic()
                    break
                time.sleep(0.1)
            seconds = (done_at or time.monotonic()) - started
            server_seconds = sum(
                out * (samples[k + 1][0] - t) for k, (t, out) in enumerate(samples[:-1])
            )
            over = sum(
                sample.value
                for n in nodes
                for family in n.engine.metrics.registry.collect()
                if family.name == "drainer_budget_over_budget"
                for sample in family.samples
                if sample.name == "drainer_budget_over_budget_total"
            )
            requests = sum(
                n.engine.slots.budget.requests
                for n in nodes
                if isinstance(n.engine.slots, EtcdSlots)
            )
            return {
                "mode": mode,
                "most_out": max((o for _, o in samples), default=0),
                "over_budget": int(over),
                "done_s": seconds if done_at else None,
                "server_seconds": server_seconds,
                "approvals": len(fake.snapshot()["approvals"]),
                "etcd_rps": requests / seconds if mode == "etcd" else None,
            }
        finally:
            stopping.set()
            for thread in threads:
                thread.join(timeout=5)
            for node in nodes:
                node.close()
            fake.stop()
            haproxy.stop()
            web.stop()


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that every `finally` stops what it started


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupted)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sidecars", type=int, default=200)
    parser.add_argument("--domain", type=int, default=40)
    parser.add_argument("--max-out", type=int, default=5)
    parser.add_argument("--notice", type=float, default=150.0, help="seconds to NotBefore")
    parser.add_argument("--impact", type=float, default=2.0, help="seconds a reboot lasts")
    parser.add_argument("--modes", default="none,local,etcd")
    args = parser.parse_args()
    logging.getLogger("drainer").setLevel(logging.CRITICAL)  # 200 sidecars' logs: not here
    modes = args.modes.split(",")
    print(
        f"{args.sidecars} sidecars behind one HAProxy; an update domain of {args.domain}"
        f" Reboots at once, NotBefore in {args.notice:g}s, {args.impact:g}s impact;"
        f" max_out {args.max_out}"
    )
    print(f"{'mode':<6} {'most out':>8} {'over budget':>11} {'all back':>9}"
          f" {'server-s out':>12} {'approvals':>9} {'etcd req/s':>10}")  # fmt: skip
    cluster = EtcdCluster(3).start_all() if "etcd" in modes else None
    try:
        for mode in modes:
            r = run_mode(mode, args, cluster)
            back = f"{r['done_s']:.1f} s" if r["done_s"] is not None else "not done"
            rps = f"{r['etcd_rps']:.0f}" if r["etcd_rps"] is not None else "-"
            row = f"{mode:<6} {r['most_out']:>8} {r['over_budget']:>11} {back:>9}"
            row += f" {r['server_seconds']:>12.0f} {r['approvals']:>9} {rps:>10}"
            print(row, flush=True)
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
