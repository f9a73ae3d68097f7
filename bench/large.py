#!/usr/bin/env python3
"""The HAProxy adapter against a large backend: does a sidecar's cost grow with it?

A real HAProxy on loopback with one backend of N servers (no health checks, so HAProxy
itself stays idle), the node being one server in its middle, addressed by backend and
server name. For each size it prints, next to a raw socket client that sends only the
commands the answer needs (``show stat <backend> 4 <sid>``: one row):

- ``state()``: one fresh adapter (the CLI's ``drainer status``: nothing cached yet),
  then the same adapter again (a daemon's poll), medians of ``--repeat``;
- a ``drain()`` + ``state()`` cycle on a fresh adapter (``drainer drain``'s reads);
- CPU of this process per ``state()`` while the node is out (in MAINT);
- HAProxy's CPU (every thread's ``schedstat``, in ns) while one sidecar polls
  ``state()`` every ``--interval``, minus its idle CPU over as long;
- the wall time of the commands a person types, ``drainer status`` and ``drainer
  drain``, each a new process, next to ``python -c pass`` and to a 5-line Python socket
  client sending the one command each needs (a new process too).

drainer's modules are compiled first (``compileall``), as an installed package is.

Loopback only, bounded: about 40 s for the default sizes.

    python bench/large.py [--sizes 2000,10000] [--repeat 7] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from footprint import cpu_seconds, start_ms  # bench/, next to this script

from drainer.adapters.base import AdapterContext
from drainer.adapters.haproxy.runtime import HAProxyConfig, HAProxyLoadBalancer, create
from drainer.testing import HAProxy, haproxy_cli, start_haproxy

BACKEND = "app"
DRAINER = [sys.executable, "-m", "drainer"]
# what `drainer status` and `drainer drain` reduce to: one command on the stats socket
RAW_CLIENT = """
import socket, sys
with socket.socket(socket.AF_UNIX) as sock:
    sock.connect(sys.argv[1]); sock.sendall(sys.argv[2].encode() + b"\\n")
    sock.shutdown(socket.SHUT_WR); reply = b"".join(iter(lambda: sock.recv(65536), b""))
print(reply.decode())
"""


def backend(size: int) -> str:
    """``size`` servers on 10.x addresses that are never contacted (no checks)."""
    lines = [f"backend {BACKEND}\n  balance roundrobin\n"]
    lines += [
        f"  server s{i} 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:80\n" for i in range(size)
    ]
    return "".join(lines)


def median_ms(
    action: Callable[[], object], repeat: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """The median of ``repeat`` runs of ``action`` in ms, by ``clock`` (wall or CPU)."""
    times = []
    for _ in range(repeat):
        start = clock()
        action()
        times.append(clock() - start)
    return statistics.median(times) * 1000


def haproxy_ms_per_s(
    proxy: HAProxy, poll: Callable[[], object], seconds: float, interval: float
) -> float:
    """HAProxy's CPU per second while ``poll`` runs every ``interval``, minus idle."""
    pid = proxy.proc.pid
    start = cpu_seconds(pid)
    time.sleep(seconds)
    idle = cpu_seconds(pid) - start
    start, begin = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - begin < seconds:
        poll()
        time.sleep(interval)
    busy = cpu_seconds(pid) - start
    return max(busy - idle, 0.0) / seconds * 1000


def run(size: int, repeat: int, seconds: float, interval: float) -> None:
    proxy = start_haproxy(backend(size))
    state_dir = Path(tempfile.mkdtemp(prefix="large-"))
    node = f"s{size // 2}"
    config = HAProxyConfig(type="haproxy", instances=[proxy.admin], backend=BACKEND, server=node)
    context = AdapterContext(node="bench", state_dir=state_dir)

    def fresh() -> HAProxyLoadBalancer:
        (lb,) = create(config, context)
        assert isinstance(lb, HAProxyLoadBalancer)
        return lb

    def reset() -> None:
        haproxy_cli(proxy.admin_socket, f"set server {BACKEND}/{node} state ready")
        for path in state_dir.iterdir():
            path.unlink()

    sid = next(
        line.split()[2]
        for line in haproxy_cli(proxy.admin_socket, f"show servers state {BACKEND}").splitlines()
        if line.split()[3:4] == [node]
    )

    def raw_state() -> str:
        return haproxy_cli(proxy.admin_socket, f"show stat {BACKEND} 4 {sid}")

    def raw_drain() -> str:
        haproxy_cli(proxy.admin_socket, f"set server {BACKEND}/{node} state drain")
        return raw_state()

    def cycle() -> None:
        lb = fresh()
        lb.drain()
        lb.state()

    try:
        polling = fresh()
        polling.state()
        rows = [
            ("state(), fresh adapter (status)", median_ms(lambda: fresh().state(), repeat)),
            ("state(), warm adapter (a poll)", median_ms(polling.state, repeat)),
            ("raw: show stat <be> 4 <sid>", median_ms(raw_state, repeat)),
        ]
        times = []
        for _ in range(repeat):
            reset()
            start = time.perf_counter()
            cycle()
            times.append(time.perf_counter() - start)
        rows.append(("drain() + state(), fresh adapter", statistics.median(times) * 1000))
        reset()
        rows.append(("raw: set ... drain + show stat", median_ms(raw_drain, repeat)))
        reset()
        polling.take_out(kill=False)
        rows.append(
            ("CPU per state() while out (ms)", median_ms(polling.state, repeat, time.process_time))
        )
        rows.append(
            ("raw: CPU per show stat row (ms)", median_ms(raw_state, repeat, time.process_time))
        )
        haproxy = haproxy_ms_per_s(proxy, polling.state, seconds, interval)
        rows.append((f"HAProxy CPU, one sidecar at {interval:g}s (ms/s)", haproxy))
        raw = haproxy_ms_per_s(proxy, raw_state, seconds, interval)
        rows.append((f"HAProxy CPU, raw client at {interval:g}s (ms/s)", raw))
        reset()
        rows += commands(proxy, node, sid, repeat)
        print(f"\n{size} servers (node {BACKEND}/{node}), medians of {repeat}:")
        for what, value in rows:
            print(f"  {what:<44} {value:8.1f}" + ("" if "CPU" in what else " ms"))
    finally:
        proxy.stop()
        for path in state_dir.iterdir():
            path.unlink()
        state_dir.rmdir()


def commands(proxy: HAProxy, node: str, sid: str, repeat: int) -> list[tuple[str, float]]:
    """Wall times of `drainer status` and `drainer drain` against the raw client's."""
    with tempfile.TemporaryDirectory(prefix="large-cli-") as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "boot_id").write_text("boot-1\n")
        config = tmp / "drainer.yaml"
        lb = {"type": "haproxy", "instances": [proxy.admin], "backend": BACKEND, "server": node}
        node_config = {"name": node, "boot_id_path": str(tmp / "boot_id")}
        document = {"node": node_config, "state_dir": str(tmp / "state")}
        document |= {"health": {"tcp": {"port": 9}}, "load_balancers": [lb]}
        config.write_text(json.dumps(document))

        def ready() -> None:  # the server in service, drainer's record gone
            haproxy_cli(proxy.admin_socket, f"set server {BACKEND}/{node} state ready")
            shutil.rmtree(tmp / "state", ignore_errors=True)

        def raw(command: str) -> list[str]:
            return [sys.executable, "-c", RAW_CLIENT, str(proxy.admin_socket), command]

        drain = f"set server {BACKEND}/{node} state drain"
        timed = [
            ("python -c pass", [sys.executable, "-c", "pass"], lambda: None),
            ("drainer status", [*DRAINER, "status", "-c", str(config)], lambda: None),
            ("raw client: show stat <be> 4 <sid>", raw(f"show stat {BACKEND} 4 {sid}"), ready),
            ("drainer drain", [*DRAINER, "drain", "-c", str(config)], ready),
            ("raw client: set server ... state drain", raw(drain), ready),
        ]
        rows = []
        for label, argv, before in timed:
            wall, cpu = start_ms(argv, repeat, before)
            rows += [(label, wall), ("  its CPU (ms)", cpu)]
        ready()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=5.0, help="per HAProxy CPU reading")
    parser.add_argument("--interval", type=float, default=1.0, help="the sidecar's poll")
    args = parser.parse_args()
    drainer_dir = Path(__file__).resolve().parents[1] / "drainer"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(drainer_dir)], check=True)
    for size in (int(s) for s in args.sizes.split(",")):
        run(size, args.repeat, args.seconds, args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
