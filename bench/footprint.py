#!/usr/bin/env python3
"""What the CLI and the sidecar cost, and how fast the sidecar reacts to an event.

Prints:
- the start time of `drainer --help`, `drainer config check` and `drainer status`
  (mock load balancer, no sidecar running), median of --runs runs, next to
  `python -c pass` in the same run;
- the CPU of one HTTP health check: a client made per check (the one-shot
  `check_health`) against the daemon's `HealthCheck`, which keeps one client.

Then starts the fake metadata service and `drainer run` (mock load balancer, 1 s poll,
metrics on) as a subprocess, and next to it the 20-line poller below (the same service at
the same interval, standard library only), and prints:
- resident memory, CPU use and wakeups (voluntary context switches, all threads) of the
  idle sidecar and of the poller over the same --idle seconds,
- per source (Azure and AWS at a 1 s poll, Google Cloud through its hanging GET), the
  time from a notice appearing in its fake metadata service to the adapter's drain call
  (read from the mock's own call log), over --events notices (bench/reaction.py).
Loopback only; bounded by the counts given. drainer's modules are compiled first
(`compileall`), as an installed package is: a checkout run with PYTHONDONTWRITEBYTECODE
would compile every module at each start.

    python bench/footprint.py [--runs 11] [--idle 30] [--events 25]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from reaction import measure, summary

from drainer.testing import FakeIMDS, WebServer, free_port

# The reference: what any sidecar must do while idle, and nothing more.
POLLER = """
import json, sys, time, urllib.request

url = sys.argv[1] + "/metadata/scheduledevents?api-version=2020-07-01"
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
request = urllib.request.Request(url, headers={"Metadata": "true"})
seen = set()
while True:
    started = time.monotonic()
    try:
        with opener.open(request, timeout=5) as reply:
            events = json.load(reply)["Events"]
    except (OSError, ValueError) as exc:
        print("poll failed:", exc, file=sys.stderr)
        events = []
    for event in events:
        if event["EventId"] not in seen:
            seen.add(event["EventId"])
            print("event", event["EventId"], event["EventType"], flush=True)
    time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
"""


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread, in ns from schedstat (utime and stime count 10 ms ticks:
    too coarse for an idle process)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wakeups(pid: int) -> int:
    """Voluntary context switches of every thread: how often the process went to sleep."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def start_ms(
    argv: list[str], runs: int, before: Callable[[], object] = lambda: None
) -> tuple[float, float]:
    """Median wall time of a command, from fork to exit, and median CPU time (user +
    system, which a busy machine disturbs less), in ms; ``before`` runs before each."""
    times, cpus = [], []
    for _ in range(runs):
        before()
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime)
    return statistics.median(times) * 1000, statistics.median(cpus) * 1000


def cli_starts(tmp: Path, runs: int) -> None:
    (tmp / "boot_id").write_text("boot-1\n")
    config = {
        "node": {"name": "web-1", "boot_id_path": str(tmp / "boot_id")},
        "state_dir": str(tmp / "state"),
        "source": {"poll_interval": "1s"},  # the IMDS address by default: status asks nothing
        "health": {"tcp": {"port": 9}},
        "load_balancers": [{"type": "mock", "path": str(tmp / "mock.json")}],
    }
    path = tmp / "cli.yaml"
    path.write_text(json.dumps(config))
    drainer = [sys.executable, "-m", "drainer"]
    base, base_cpu = start_ms([sys.executable, "-c", "pass"], runs)
    print(
        f"CLI start, median of {runs} runs (python -c pass: {base:.0f} ms, {base_cpu:.0f} ms CPU):"
    )
    for label, argv in [
        ("--help", [*drainer, "--help"]),
        ("config check", [*drainer, "config", "check", "-c", str(path)]),
        ("status", [*drainer, "status", "-c", str(path)]),
    ]:
        ms, cpu = start_ms(argv, runs)
        print(
            f"  drainer {label:<13} {ms:4.0f} ms ({ms - base:+.0f} ms over python -c pass),"
            f" {cpu:4.0f} ms CPU ({cpu - base_cpu:+.0f})"
        )


def health_cpu(checks: int = 50) -> None:
    from drainer.config import HealthConfig
    from drainer.health import HealthCheck, check_health

    web = WebServer(free_port(), name="web-1").start()
    try:
        config = HealthConfig.model_validate({"http": {"url": f"http://127.0.0.1:{web.port}/"}})
        check = HealthCheck()
        for label, one in [("a client per check", check_health), ("one client kept", check)]:
            one(config)  # imports done
            t0 = time.process_time()
            for _ in range(checks):
                assert one(config)[0]
            ms = (time.process_time() - t0) / checks * 1000
            print(f"one HTTP health check, {label}: {ms:.1f} ms CPU (mean of {checks})")
        check.close()
    finally:
        web.stop()


# What `drainer run` loads, in the order it loads it: the RSS each step adds.
MEMORY_STEPS = """
import sys

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

last = rss()
print(f"  python alone          {last:5.1f} MiB")
for label, statement in [
    ("typer (the CLI)", "import drainer.cli"),
    ("pydantic", "import pydantic; pydantic.TypeAdapter(int)"),
    ("yaml, tenacity", "import yaml, tenacity"),
    ("drainer's models, core", "import drainer.config, drainer.daemon"),
    ("prometheus_client", "import drainer.listener"),
    ("httpx", "import httpx"),
    ("an httpx.Client", "httpx.Client(trust_env=False)"),
]:
    exec(statement)
    now = rss()
    print(f"  + {label:<22} +{now - last:4.1f} MiB (RSS {now:5.1f} MiB)")
    last = now
"""


def memory_by_library() -> None:
    print("what drainer run's RSS is made of (imports in its order, one process):")
    subprocess.run([sys.executable, "-c", MEMORY_STEPS], check=True)


def idle(pids: dict[str, int], seconds: float) -> None:
    """RSS, CPU and wakeups of each process over the same ``seconds``."""
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    woke0 = {name: wakeups(pid) for name, pid in pids.items()}
    peak = dict.fromkeys(pids, 0.0)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        for name, pid in pids.items():
            peak[name] = max(peak[name], rss_mib(pid))
        time.sleep(1.0)
    elapsed = time.monotonic() - t0
    print(f"idle, 1 s poll, over {seconds:.0f} s, side by side:")
    for name, pid in pids.items():
        cpu = (cpu_seconds(pid) - cpu0[name]) / elapsed * 100
        woke = (wakeups(pid) - woke0[name]) / elapsed
        print(
            f"  {name:<15} RSS {rss_mib(pid):5.1f} MiB (peak {peak[name]:.1f} MiB),"
            f" CPU {cpu:.2f} %, {woke:.1f} wakeups/s"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11, help="runs per CLI command")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement")
    parser.add_argument("--events", type=int, default=25, help="events to time (0: none)")
    args = parser.parse_args()
    drainer_dir = Path(__file__).resolve().parents[1] / "drainer"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(drainer_dir)], check=True)
    with tempfile.TemporaryDirectory(prefix="drainer-bench-") as tmp_dir:
        cli_starts(Path(tmp_dir), args.runs)
    health_cpu()
    memory_by_library()

    with (
        tempfile.TemporaryDirectory(prefix="drainer-bench-") as tmp_dir,
        FakeIMDS(rate_limit=None) as fake,
    ):
        tmp = Path(tmp_dir)
        (tmp / "boot_id").write_text("boot-1\n")
        web = WebServer(free_port(), name="web-1").start()
        mock = tmp / "mock.json"
        config = {
            "node": {"name": "web-1", "boot_id_path": str(tmp / "boot_id")},
            "state_dir": str(tmp / "state"),
            "source": {"endpoint": fake.url, "poll_interval": "1s"},
            "health": {"tcp": {"port": web.port}, "interval": "200ms", "successes": 1},
            "load_balancers": [{"type": "mock", "path": str(mock), "drain_seconds": 0}],
            "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        }
        (tmp / "drainer.yaml").write_text(json.dumps(config))
        proc = subprocess.Popen(
            [sys.executable, "-m", "drainer", "run", "-c", str(tmp / "drainer.yaml")],
            stderr=subprocess.DEVNULL,
        )
        poller = subprocess.Popen(
            [sys.executable, "-c", POLLER, fake.url], stdout=subprocess.DEVNULL
        )
        try:
            time.sleep(5.0)  # imports done, first polls made
            idle({"drainer run": proc.pid, "20-line poller": poller.pid}, args.idle)

        finally:
            for each in (proc, poller):
                each.terminate()
                each.wait(timeout=10)
            web.stop()
    # the reaction time per source: notice visible -> the adapter's drain call
    for cloud in ("azure", "aws", "gcp"):
        latencies = measure(cloud, events=args.events) if args.events else None
        if latencies:
            print(summary(cloud, latencies, 1.0), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
