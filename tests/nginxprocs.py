"""Test-only servers and clients for the nginx tests (nginx itself: drainer.testing.nginx).

A ``Backend`` is an HTTP server in this process (drainer._http) that answers its name;
``/slow?s=N`` answers after N seconds (an in-flight request). ``Traffic`` is clients
sending requests in a loop.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from urllib.parse import parse_qs, urlsplit

import httpx

from drainer._http import Http11Handler, Served, Server


class _Handler(Http11Handler, methods=("GET",)):
    server: Server[Backend]

    def _serve(self, method: str) -> None:
        backend = self.server.app
        url = urlsplit(self.path)
        seconds = float(parse_qs(url.query).get("s", ["0"])[0])
        with backend.lock:  # counted on arrival: an in-flight request is a hit
            backend.paths[url.path] += 1
        if url.path == "/slow":
            time.sleep(seconds)
        body = backend.name.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Backend(Served[Server["Backend"]]):
    """An HTTP server on 127.0.0.1:<port> that answers its ``name``, serving from its
    construction; ``paths`` counts the requests per path."""

    _thread_name = "backend"

    def __init__(self, name: str) -> None:
        self.name = name
        self.paths: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.start()
        assert self._running is not None
        self.port = self._running.port
        self.address = f"127.0.0.1:{self.port}"

    def _server(self) -> Server[Backend]:
        return Server(("127.0.0.1", 0), _Handler, self)

    @property
    def hits(self) -> int:
        with self.lock:
            return sum(self.paths.values())


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
