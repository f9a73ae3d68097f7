"""The metrics listener: ``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, in a
thread (see ``drainer.metrics``). Imported by ``Metrics.serve()`` only, so that what
does not serve metrics loads neither the HTTP server nor prometheus_client's exposition.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest

from drainer._http import Handler, Server, ServerThread
from drainer._net import split_host_port
from drainer.errors import ConfigError

if TYPE_CHECKING:
    from drainer.metrics import Metrics


def listen_thread(metrics: Metrics, listen: str) -> ServerThread[Server[Metrics]]:
    """A thread serving ``metrics`` on ``listen`` (``host:port``) until ``stop()``."""
    try:
        host, port = split_host_port(listen, default_host="127.0.0.1")
        server_class = _Server6 if ":" in host else Server
        server = server_class((host, port), _Handler, metrics)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"metrics.listen: cannot listen on {listen}: {exc}") from exc
    # no polling: the listener wakes for a client or at close(), not twice a second
    return ServerThread(server, name="drainer-metrics", poll_interval=None, daemon=True)


class _Server6(Server["Metrics"]):
    address_family = socket.AF_INET6


class _Handler(Handler, methods=("GET", "HEAD")):
    server: Server[Metrics]

    def _serve(self, method: str) -> None:
        metrics = self.server.app
        path = self.path.partition("?")[0]
        content_type = "text/plain; charset=utf-8"
        if path == "/metrics":
            status, body = 200, generate_latest(metrics.registry)
            content_type = CONTENT_TYPE_LATEST
        elif path in ("/healthz", "/readyz"):
            probes = metrics.probes
            reason = probes.health() if path == "/healthz" else probes.ready()
            status, body = (503, f"{reason}\n".encode()) if reason else (200, b"ok\n")
        else:
            status, body = 404, b"not found: try /metrics, /healthz or /readyz\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method == "GET":
            self.wfile.write(body)
