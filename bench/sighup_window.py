#!/usr/bin/env python3
"""How long after its start a SIGHUP still kills `drainer run`.

Starts `drainer run` (the installed command; mock load balancer, a metadata service
that does not answer) --runs times and polls /proc/PID/status until SIGHUP shows among
the caught signals (`SigCgt`): until then its default action ends the process. Prints
the median and the slowest, next to the start of `python -c pass` in the same run.
Since drainer.early, the command holds SIGHUP before importing anything else; before,
only `daemon.run` caught it, after the configuration and the daemon's imports.
Linux only (/proc).

    python bench/sighup_window.py [--runs 21]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DRAINER = Path(sys.executable).parent / "drainer"


def caught_hup(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) & 1)  # bit 0: signal 1, SIGHUP
    except OSError:
        pass
    return False


def window(config: Path) -> float:
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(DRAINER), "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        while proc.poll() is None:
            if caught_hup(proc.pid):
                return time.monotonic() - started
        raise SystemExit(f"drainer run exited ({proc.returncode}) before catching SIGHUP")
    finally:
        proc.kill()
        proc.wait()


def python_start() -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "boot_id").write_text("boot-1\n")
        config = root / "drainer.yaml"
        settings = {
            "node": {"boot_id_path": str(root / "boot_id")},
            "state_dir": str(root / "state"),
            "source": {"endpoint": "http://127.0.0.1:9/", "timeout": "200ms"},
            "health": {"tcp": {"port": 9}},
            "load_balancers": [{"type": "mock", "path": str(root / "mock.json")}],
            "metrics": {"listen": None},
        }
        config.write_text(json.dumps(settings))
        windows = sorted(window(config) for _ in range(runs))
        bare = statistics.median(python_start() for _ in range(runs))
    print(f"drainer run: SIGHUP caught {statistics.median(windows) * 1000:.0f} ms after the start")
    print(f"  (median of {runs}; slowest {windows[-1] * 1000:.0f} ms)")
    print(f"python -c pass: {bare * 1000:.0f} ms (median)")


if __name__ == "__main__":
    main()
