"""The node's own health check: is the web server ready to take traffic again?"""

from __future__ import annotations

import socket

import httpx

from drainer.config import HealthConfig


def check_health(config: HealthConfig) -> tuple[bool, str]:
    """One check; returns (passed, what was seen). Never raises for a failing node."""
    if config.http is not None:
        http = config.http
        try:
            with httpx.Client(trust_env=False, timeout=http.timeout) as client:
                reply = client.get(http.url)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return False, f"GET {http.url}: {type(exc).__name__}: {exc}"
        ok = reply.status_code in http.expect_status
        return ok, f"GET {http.url}: {reply.status_code}"
    assert config.tcp is not None  # the schema requires one of the two
    tcp = config.tcp
    try:
        with socket.create_connection((tcp.host, tcp.port), timeout=tcp.timeout):
            return True, f"tcp {tcp.host}:{tcp.port}: connected"
    except OSError as exc:
        return False, f"tcp {tcp.host}:{tcp.port}: {exc.strerror or exc}"
