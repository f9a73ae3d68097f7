"""The node's own health check: is the web server ready to take traffic again?

``HealthCheck`` holds one HTTP client for its life (the daemon's engine): making a client
builds an SSL context and reads certifi's bundle, about 20 times the CPU of the request
itself. It keeps no connection between checks, so each check still connects, as the load
balancer's first new connection would. ``check_health`` is the one-shot form for a
command that checks once.
"""

from __future__ import annotations

import socket
from types import TracebackType
from typing import TYPE_CHECKING

from drainer.config import HealthConfig

if TYPE_CHECKING:
    import httpx

__all__ = ["HealthCheck", "check_health"]


class HealthCheck:
    """Callable as ``check(config) -> (passed, what was seen)``; never raises for a
    failing node. httpx is imported and the client made at the first HTTP check."""

    def __init__(self) -> None:
        self._client: httpx.Client | None = None

    def __call__(self, config: HealthConfig) -> tuple[bool, str]:
        if config.http is not None:
            return self._http(config)
        assert config.tcp is not None  # the schema requires one of the two
        tcp = config.tcp
        try:
            with socket.create_connection((tcp.host, tcp.port), timeout=tcp.timeout):
                return True, f"tcp {tcp.host}:{tcp.port}: connected"
        except OSError as exc:
            return False, f"tcp {tcp.host}:{tcp.port}: {exc.strerror or exc}"

    def _http(self, config: HealthConfig) -> tuple[bool, str]:
        import httpx

        assert config.http is not None
        http = config.http
        if self._client is None:
            self._client = httpx.Client(
                trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
            )
        try:
            reply = self._client.get(http.url, timeout=http.timeout)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return False, f"GET {http.url}: {type(exc).__name__}: {exc}"
        ok = reply.status_code in http.expect_status
        return ok, f"GET {http.url}: {reply.status_code}"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> HealthCheck:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def check_health(config: HealthConfig) -> tuple[bool, str]:
    """One check with a client of its own; returns (passed, what was seen)."""
    with HealthCheck() as check:
        return check(config)
