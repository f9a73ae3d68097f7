#!/usr/bin/env python3
"""How long does one Reboot keep the node out of the pool, and where does the time go?

Three local backends (web-1..3) behind a real HAProxy, light keep-alive load, and the
fake metadata service scheduling a Reboot for web-1. `drainer run` drains web-1,
approves the event (web-1 is its only resource, so it starts at once); the simulated
VM then stops web-1 and its drainer, keeps the address silent for the reboot, and
starts both again together (two services of a booting VM) with a new boot id; the
event is over when the VM is back. A watcher samples web-1's status in HAProxy every
20 ms; drainer logs JSON with `--debug`.

Out of the pool is from web-1 leaving HAProxy's rotation (DRAIN) to it being UP and
ready again, cut into:

- drain: DRAIN until MAINT (no session left, taken out),
- approval: MAINT until the event is Started (the VM goes down then),
- reboot: until the VM is back (the new boot id; its services start),
- restart: until the new drainer's first turn (recovering),
- health: drainer's own checks, from its first turn to the last one needed,
- haproxy: how much longer HAProxy's own check took (0 when it had passed first),
- put-back: the rest, until HAProxy shows web-1 UP and ready; any wait for the
  event's disappearance to hold (`source.gone_after`) falls here.

The ideal is the reboot plus the longer of the configured checks: drainer's
(successes - 1) x interval and HAProxy's rise x inter. Medians of `--runs` runs, for
the issue's settings, the same with `gone_after: 0` (what the window costs), and the
product's defaults.

    python bench/maintenance.py [--runs 3] [--settings issue,issue-gone0,defaults]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from zero_failures import NODE, PEERS, Watcher  # bench/ is the script's own folder

from drainer.testing import BlackHole, FakeIMDS, LoadClient, WebProcess, free_port
from drainer.testing import start_haproxy_in_front as in_front

REBOOT = 10.0  # seconds the simulated VM stays down


@dataclass(frozen=True)
class Settings:
    name: str
    poll: float  # source.poll_interval
    health_interval: float
    successes: int
    inter: float  # HAProxy's check inter
    rise: int
    gone_after: float

    @property
    def checks(self) -> float:
        return max((self.successes - 1) * self.health_interval, self.rise * self.inter)


SETTINGS = {
    # the issue's: poll 1 s, health 1 s x 2, HAProxy check 1 s rise 2
    "issue": Settings("issue", 1.0, 1.0, 2, 1.0, 2, 5.0),
    "issue-gone0": Settings("issue-gone0", 1.0, 1.0, 2, 1.0, 2, 0.0),
    # the product's defaults: poll 1 s, health 2 s x 3, HAProxy's own inter 2 s rise 2
    "defaults": Settings("defaults", 1.0, 2.0, 3, 2.0, 2, 5.0),
}

PARTS = ("drain", "approval", "reboot", "restart", "health", "haproxy", "put-back")


def first(watcher: Watcher, after: float, test: Callable[[str], bool]) -> float | None:
    """When web-1's status in HAProxy first passed ``test`` at ``after`` or later."""
    return next((t for t, s in watcher.samples if t >= after and test(s)), None)


def _log_times(path: Path) -> list[tuple[float, str]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            data = json.loads(line)
        except ValueError:
            continue
        stamp = datetime.strptime(data["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
        out.append((stamp.timestamp() - time.timezone, str(data["message"])))
    return out


def _drainer(config: Path) -> subprocess.Popen[bytes]:
    log = open(config.with_suffix(".log"), "ab")  # noqa: SIM115 - owned by the child
    command = [sys.executable, "-m", "drainer", "--debug", "--log-format", "json", "run"]
    return subprocess.Popen([*command, "-c", str(config)], stdout=log, stderr=log)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def once(s: Settings) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="drainer-maint-") as tmp_dir,
        FakeIMDS(rate_limit=None) as fake,
    ):
        tmp = Path(tmp_dir)
        webs = {n: WebProcess(free_port(), name=n, delay=0.01).start() for n in (NODE, *PEERS)}
        check = f"check inter {s.inter:g}s rise {s.rise}"
        proxy = in_front(tmp, backends={n: w.port for n, w in webs.items()}, check=check)
        boot = tmp / "boot_id"
        boot.write_text("boot-1\n")
        config = {
            "node": {"name": NODE, "boot_id_path": str(boot)},
            "state_dir": str(tmp / "state"),
            "source": {
                "endpoint": fake.url,
                "poll_interval": f"{s.poll:g}s",
                "gone_after": f"{s.gone_after:g}s",
            },
            "drain": {"timeout": "20s"},
            "health": {
                "http": {"url": f"http://127.0.0.1:{webs[NODE].port}/healthz"},
                "interval": f"{s.health_interval:g}s",
                "successes": s.successes,
            },
            "load_balancers": [
                {"type": "haproxy", "instances": [proxy.admin], "backend": "app", "server": NODE}
            ],
            "metrics": {"listen": None},
        }
        path = tmp / "drainer.yaml"
        path.write_text(json.dumps(config))
        sidecar = _drainer(path)
        watcher = Watcher(proxy.admin, every=0.02)
        watcher.start()
        load = LoadClient(f"http://127.0.0.1:{proxy.port}/", workers=4, limit_seconds=120)
        try:
            time.sleep(3.0)  # HAProxy's checks and drainer's first polls
            load.start()
            time.sleep(1.0)
            event_id = fake.schedule("Reboot", [NODE], not_before_in=60, end_after=REBOOT)
            while fake.snapshot()["Events"][0]["EventStatus"] != "Started":
                time.sleep(0.01)
            started = time.time()
            _stop(sidecar)  # the VM goes down
            webs[NODE].stop()
            hole = BlackHole(webs[NODE].port)
            time.sleep(REBOOT - (time.time() - started))
            hole.close()
            boot.write_text("boot-2\n")
            back = time.time()
            sidecar = _drainer(path)  # both services start as the VM boots
            webs[NODE] = WebProcess(webs[NODE].port, name=NODE, delay=0.01).start()
            deadline = time.monotonic() + 60
            while not (watcher.samples and watcher.samples[-1][0] > back and _ready(watcher)):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"web-1 not back in the pool; see {path.with_suffix('.log')}"
                    )
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            load.stop()
            watcher.stop.set()
            watcher.join()
            _stop(sidecar)
            if fake.snapshot()["Events"]:
                fake.end_event(event_id)
            proxy.stop()
            for web in webs.values():
                web.stop()
        logs = _log_times(path.with_suffix(".log"))
        if keep := os.environ.get("BENCH_KEEP"):  # the log and HAProxy's view, to look into
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / f"{s.name}.log").write_text(path.with_suffix(".log").read_text())
            seen = [f"{t:.3f} {st}" for t, st in watcher.samples]
            (Path(keep) / f"{s.name}.haproxy").write_text("\n".join(seen))
        return _parts(s, watcher, logs, started=started, back=back, failed=load.counts()[1])


def _ready(watcher: Watcher) -> bool:
    return watcher.samples[-1][1].startswith("UP")


def _parts(
    s: Settings,
    watcher: Watcher,
    logs: list[tuple[float, str]],
    *,
    started: float,
    back: float,
    failed: int,
) -> dict[str, float]:
    out = first(watcher, 0, lambda st: not st.startswith("UP"))
    maint = first(watcher, 0, lambda st: st.startswith("MAINT"))
    first_turn = next(t for t, m in logs if t >= back and m.startswith("recovering"))
    checks = [t for t, m in logs if t >= back and m.startswith("health check:")]
    healthy = checks[s.successes - 1]
    hx_up = first(watcher, first_turn, lambda st: st.startswith(("DRAIN", "UP")))
    ready = first(watcher, back, lambda st: st.startswith("UP"))
    assert out and maint and hx_up and ready, "web-1's way through HAProxy was not seen"
    both = max(healthy, hx_up)
    return {
        "drain": maint - out,
        "approval": started - maint,
        "reboot": back - started,
        "restart": first_turn - back,
        "health": healthy - first_turn,
        "haproxy": max(0.0, hx_up - healthy),
        "put-back": ready - both,
        "total": ready - out,
        "ideal": (back - started) + s.checks,
        "failed": float(failed),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settings", default="issue,issue-gone0,defaults")
    args = parser.parse_args()
    header = f"{'settings':<12}" + "".join(f"{p:>9}" for p in PARTS)
    print(header + f"{'total':>8}{'ideal':>8}{'failed':>8}   (seconds, medians of {args.runs})")
    worst = 0.0
    for name in args.settings.split(","):
        s = SETTINGS[name]
        runs = [once(s) for _ in range(args.runs)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        line = f"{name:<12}" + "".join(f"{med[p]:>9.2f}" for p in PARTS)
        print(
            line
            + f"{med['total']:>8.2f}{med['ideal']:>8.2f}{int(max(r['failed'] for r in runs)):>8}"
        )
        worst = max(worst, max(r["failed"] for r in runs))
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
