"""Helpers for tests that run ``drainer`` as real processes.

A ``World`` owns one simulated VM in a temporary directory: a FakeIMDS served
in-process over real HTTP, a health server whose status code the test flips, a boot id
file, the mock load balancer's JSON file and a configuration pointing at all of them.
It starts ``python -m drainer run`` as a subprocess, runs the other CLI commands the
same way, and kills every process it started, by PID, in ``close()``.

Waits poll the state on disk (``state.json``, the mock's file, the fake's request
count) with a bounded deadline; a timeout fails with the daemon's log attached.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from drainer._http import Handler, Served, Server
from drainer.testing import FakeAWS, FakeIMDS, wait_until

T = TypeVar("T")

DEADLINE = 15.0  # seconds any single wait may take before the test fails
NODE = "web-1"
LB = "lb1"
DRAINER = [sys.executable, "-m", "drainer"]


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge two mappings; ``override`` wins, lists are replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# -- health server ------------------------------------------------------------------------


class _HealthHandler(Handler, methods=("GET",)):
    server: Server[HealthServer]

    def _serve(self, method: str) -> None:
        owner = self.server.app
        owner.hits += 1
        body = b"ok" if owner.status == 200 else b"not ready"
        self.send_response(owner.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HealthServer(Served[Server["HealthServer"]]):
    """``GET /`` answers ``status`` (flip it from the test); ``hits`` counts requests."""

    _thread_name = "health-server"

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.hits = 0
        self.start()

    def _server(self) -> Server[HealthServer]:
        return Server(("127.0.0.1", 0), _HealthHandler, self)

    @property
    def url(self) -> str:
        return f"{super().url}/"


# -- processes ------------------------------------------------------------------------------


class Daemon:
    """One ``drainer run`` subprocess; its stdout and stderr go to ``log_path``."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [*DRAINER, "run", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def kill9(self) -> None:
        """``kill -9`` by PID and reap it."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def terminate(self, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM by PID; return (exit code, seconds it took to exit)."""
        started = time.monotonic()
        self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.alive():
                self.kill9()
        self._log.close()
        return code, time.monotonic() - started

    def stop(self) -> None:
        if self.alive():
            self.kill9()
        self._log.close()


# -- the simulated VM ------------------------------------------------------------------------


class World:
    """A VM named ``web-1`` behind one mock load balancer, watched by ``drainer``."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.fake = FakeIMDS(rate_limit=None).start()
        self.health = HealthServer()
        self.boot_id_path = tmp_path / "boot_id"
        self.boot_id_path.write_text("boot-1\n")
        self.state_dir = tmp_path / "state"
        self.mock_path = tmp_path / f"mock-{LB}.json"
        self.config_path = tmp_path / "drainer.yaml"
        self.log_path = tmp_path / "drainer.log"
        self.daemons: list[Daemon] = []
        self.daemon: Daemon | None = None
        self._boots = 1
        self.settings = self.base_config()
        self.configure()

    # configuration

    def base_config(self) -> dict[str, Any]:
        return {
            "node": {"boot_id_path": str(self.boot_id_path)},
            "state_dir": str(self.state_dir),
            "source": {"endpoint": self.fake.url, "poll_interval": "200ms", "timeout": "1s"},
            "drain": {"timeout": "5s", "margin": "1s"},
            "health": {
                "http": {"url": self.health.url, "timeout": "1s"},
                "interval": "200ms",
                "successes": 2,
                "deadline": "15s",
            },
            "load_balancers": [
                {
                    "type": "mock",
                    "name": LB,
                    "path": str(self.mock_path),
                    "sessions": 2,
                    "drain_seconds": "300ms",
                }
            ],
            "metrics": {"listen": None},
        }

    def configure(self, **override: Any) -> Path:
        """Deep-merge ``override`` into the settings so far and write the file."""
        self.settings = merge(self.settings, override)
        self.config_path.write_text(yaml.safe_dump(self.settings))
        return self.config_path

    def configure_lb(self, **changes: Any) -> Path:
        """Change the mock load balancer's settings and write the file."""
        return self.configure(load_balancers=[{**self.settings["load_balancers"][0], **changes}])

    # processes

    def start(self) -> Daemon:
        assert self.daemon is None or not self.daemon.alive(), "a daemon is already running"
        self.daemon = Daemon(self.config_path, self.log_path)
        self.daemons.append(self.daemon)
        return self.daemon

    def kill9(self) -> None:
        assert self.daemon is not None
        self.daemon.kill9()

    def restart(self) -> Daemon:
        self.kill9()
        return self.start()

    def reboot(self) -> None:
        """What a reboot changes for drainer: the kernel's boot id."""
        self._boots += 1
        self.boot_id_path.write_text(f"boot-{self._boots}\n")

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``drainer ARGS -c CONFIG`` to completion."""
        return subprocess.run(
            [*DRAINER, *args, "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def status(self) -> tuple[int, dict[str, Any]]:
        """``drainer status --json``: (exit code, parsed output)."""
        done = self.cli("status", "--json")
        assert done.stdout, f"no status output (exit {done.returncode}): {done.stderr}"
        return done.returncode, json.loads(done.stdout)

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        self.fake.stop()
        self.health.stop()

    # what is on disk

    def record(self) -> dict[str, Any]:
        """The daemon's record as saved (empty before the first save)."""
        try:
            data: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        except FileNotFoundError:
            return {}
        return data

    def phase(self) -> str:
        return str(self.record().get("phase", "in_service"))

    def mock(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.mock_path.read_text())
        except FileNotFoundError:
            return {}
        return data

    def calls(self) -> list[str]:
        return [call["op"] for call in self.mock().get("calls", [])]

    def wait_call(self, op: str) -> list[str]:
        """Wait until the mock has logged ``op``: the record is written before its actions run."""
        return self.wait(lambda: self.calls() if op in self.calls() else [], f"the mock's {op}")

    def call_times(self, op: str) -> list[float]:
        return [float(call["at"]) for call in self.mock().get("calls", []) if call["op"] == op]

    def lb_status(self) -> str:
        return str(self.mock().get("status", "in_service"))

    def fail_lb(self, op: str, message: str | None) -> None:
        """Make the mock's ``op`` fail (message) or succeed again (None)."""
        data = self.mock()
        fail = data.setdefault("fail", {})
        if message is None:
            fail.pop(op, None)
        else:
            fail[op] = message
        tmp = self.mock_path.with_suffix(".test.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.mock_path)

    def approvals(self) -> list[str]:
        return list(self.fake.snapshot()["approvals"])

    def requests(self) -> int:
        return int(self.fake.snapshot()["requests"])

    def describe(self) -> str:
        log = self.log_path.read_text()[-3000:] if self.log_path.exists() else "(no log)"
        return (
            f"record: {json.dumps(self.record(), sort_keys=True)}\n"
            f"mock: {json.dumps(self.mock(), sort_keys=True)}\n"
            f"fake: {json.dumps(self.fake.snapshot(), sort_keys=True)}\n"
            f"daemon log (tail):\n{log}"
        )

    # waits

    def wait(self, predicate: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
        return wait_until(
            predicate, what=what, timeout=timeout, interval=0.05, describe=self.describe
        )

    def wait_phase(self, *phases: str, timeout: float = DEADLINE) -> str:
        def reached() -> str:
            if self.daemon is not None and not self.daemon.alive():
                raise AssertionError(f"the daemon exited\n{self.describe()}")
            phase = self.phase()
            return phase if phase in phases else ""

        return self.wait(reached, f"phase {' or '.join(phases)}", timeout)

    def wait_polls(self, count: int = 3) -> None:
        """Let the daemon poll the metadata service ``count`` more times (at least)."""
        target = self.requests() + count
        self.wait(lambda: self.requests() >= target, f"{count} more polls")

    def wait_record(self, predicate: Callable[[dict[str, Any]], bool], what: str) -> None:
        self.wait(lambda: predicate(self.record()), what)


class AwsWorld(World):
    """The same VM on AWS: ``fake`` is a FakeAWS (IMDSv2 only) and ``source.type: aws``.
    Its names are the fake's instance id and local hostname."""

    def __init__(self, tmp_path: Path, **fake_options: Any) -> None:
        super().__init__(tmp_path)
        self.fake.stop()
        self.fake = FakeAWS(**fake_options).start()  # type: ignore[assignment]
        self.settings = self.base_config()
        self.configure(source={"type": "aws"})
