"""A real Prometheus on loopback for tests, started and stopped by its PID.

``Prometheus(directory, targets=[...])`` writes ``directory/prometheus.yml`` (one job,
``drainer`` by default, scraping each ``host:port`` target every ``interval``; the rule
files given, evaluated at the same interval), runs Debian's ``prometheus`` on a free
port of 127.0.0.1 with its data in ``directory/data`` and its output in
``directory/prometheus.log``, and returns once ``/-/ready`` answers. ``query(expr)``
evaluates one PromQL expression over the HTTP API and returns its result; an
expression Prometheus refuses raises ``PromQLError`` with Prometheus's message.
``stop()`` sends SIGTERM to that PID (SIGKILL after 10 s).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from drainer.testing.clock import wait_until
from drainer.testing.ports import free_port

PROMETHEUS = Path(shutil.which("prometheus") or "/usr/bin/prometheus")


def prometheus_available() -> bool:
    return PROMETHEUS.exists()


class PromQLError(Exception):
    """Prometheus refused an expression (a parse or an evaluation error)."""


class Prometheus:
    """One Prometheus of our own, scraping ``targets`` (``host:port``) as ``job``."""

    def __init__(
        self,
        directory: Path,
        *,
        targets: Sequence[str],
        job: str = "drainer",
        interval: str = "1s",
        rule_files: Sequence[Path] = (),
    ) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = directory / "prometheus.yml"
        settings = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": list(targets)}],
                }
            ],
        }
        self.config.write_text(json.dumps(settings, indent=1))  # JSON is YAML
        self._client = httpx.Client(base_url=self.url, trust_env=False, timeout=10.0)
        self._log = (directory / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        try:
            wait_until(self._ready, timeout=30, interval=0.1, what=f"prometheus on {self.url}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return self._client.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s ``data``; PromQLError when Prometheus says error."""
        reply = self._client.get(f"/api/v1/{path}", params=params)
        body = reply.json()
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now (a scalar: one sample, no labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def log(self) -> str:
        return (self.dir / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._client.close()
        self._log.close()
