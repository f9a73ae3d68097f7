"""Real etcd members on loopback for tests and benchmarks, started and stopped by PID.

``EtcdCluster(size)`` starts ``size`` members of Debian's ``etcd`` (3.4) on free ports in
a temporary directory, with fast elections (heartbeat 50 ms, election timeout 500 ms:
the smallest lease TTL is then 1 s) and no fsync, and returns once every member says
``{"health":"true"}``. ``kill(i)`` stops one member with SIGKILL (``signal`` to choose),
``start(i)`` brings it back on the same data directory (``--initial-cluster-state
existing``); ``stop()`` sends SIGTERM to every member, SIGKILL after 10 s, and removes
the directory. ``endpoints`` are the client URLs, member order.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from drainer.testing.clock import wait_until
from drainer.testing.ports import free_port

ETCD = Path(shutil.which("etcd") or "/usr/bin/etcd")


def etcd_available() -> bool:
    return ETCD.exists()


def member_health(endpoint: str, timeout: float = 1.0) -> bool:
    """True when the member at ``endpoint`` reports a healthy cluster (it has a leader)."""
    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=timeout) as answer:
            return bool(json.loads(answer.read()).get("health") == "true")
    except (OSError, ValueError, urllib.error.URLError):
        return False


class EtcdCluster:
    def __init__(self, size: int = 3, *, directory: Path | None = None) -> None:
        self.size = size
        self._own_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="drainer-etcd-"))
        self.client_ports = [free_port() for _ in range(size)]
        self.peer_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.endpoints = [f"http://127.0.0.1:{p}" for p in self.client_ports]
        self._cluster = ",".join(
            f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports)
        )

    def _command(self, i: int, state: str) -> list[str]:
        client, peer = self.endpoints[i], f"http://127.0.0.1:{self.peer_ports[i]}"
        return [
            str(ETCD),
            "--name", f"m{i}",
            "--data-dir", str(self.dir / f"m{i}"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", self._cluster,
            "--initial-cluster-token", "drainer-test",
            "--initial-cluster-state", state,
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--unsafe-no-fsync",
            "--logger", "zap",
            "--log-outputs", str(self.dir / f"m{i}.log"),
        ]  # fmt: skip

    def _spawn(self, i: int, state: str) -> None:
        self.procs[i] = subprocess.Popen(
            self._command(i, state),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start_all(self, timeout: float = 20.0) -> EtcdCluster:
        for i in range(self.size):
            self._spawn(i, "new")
        self.wait_healthy(timeout=timeout)
        return self

    def wait_healthy(self, *, timeout: float = 20.0) -> None:
        live = [e for e, p in zip(self.endpoints, self.procs, strict=True) if p is not None]
        wait_until(
            lambda: all(member_health(e) for e in live),
            timeout=timeout,
            what=f"etcd members {live} healthy",
        )

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[i]
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self.procs[i] = None

    def start(self, i: int) -> None:
        """Start member ``i`` again on its data directory (it was killed)."""
        if self.procs[i] is None:
            self._spawn(i, "existing")

    def stop(self) -> None:
        for i in range(self.size):
            self.kill(i, signal.SIGTERM)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start_all()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()
