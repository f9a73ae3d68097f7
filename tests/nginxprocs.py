"""Test-only servers and clients for the nginx tests (nginx itself: drainer.testing.nginx).

A ``Backend`` is a ThreadingHTTPServer in this process that answers its name;
``/slow?s=N`` answers after N seconds (an in-flight request). ``Traffic`` is clients
sending requests in a loop.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx


class _Handler(BaseHTTPRequestHandler):
    server: _BackendServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        seconds = float(parse_qs(url.query).get("s", ["0"])[0])
        with self.server.lock:  # counted on arrival: an in-flight request is a hit
            self.server.hits[url.path] += 1
        if url.path == "/slow":
            time.sleep(seconds)
        body = self.server.name.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _BackendServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()


class Backend:
    """An HTTP server on 127.0.0.1:<port> that answers its ``name``."""

    def __init__(self, name: str) -> None:
        self._server = _BackendServer(name)
        self.name = name
        self.port = int(self._server.server_address[1])
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def hits(self) -> int:
        with self._server.lock:
            return sum(self._server.hits.values())

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Traffic:
    """Clients sending GET / in a loop until ``stop()``; counts answers and failures.

    ``keepalive=False`` opens a connection per request; ``True`` reuses one, as a
    browser or an API client would, and does not retry (httpx does not).
    """

    def __init__(self, url: str, *, clients: int = 2, keepalive: bool = False) -> None:
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self._url = url
        self._keepalive = keepalive
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"traffic-{i}", daemon=True)
            for i in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if self._keepalive else 0)
        with httpx.Client(timeout=5.0, limits=limits, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(self._url)
                    outcome = response.text if response.status_code == 200 else ""
                    failure = "" if outcome else f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    outcome, failure = "", f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if failure:
                        self.failures.append(failure)
                    else:
                        self.answers[outcome] += 1
                time.sleep(0.002)

    def total(self) -> int:
        with self._lock:
            return sum(self.answers.values()) + len(self.failures)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
