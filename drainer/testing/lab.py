"""A small local lab for the demo, the benchmarks and users' own tests: a web server that
plays a VM's application (in this process or one of its own), a bounded load client, and
a port that answers nothing (a machine rebooting). drainer.testing.haproxy puts a real
HAProxy in front of them.

Everything binds 127.0.0.1 only; every process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx

from drainer._http import Handler, Served, Server


class _Handler(Handler, methods=("GET",)):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self, method: str) -> None:
        web = self.server.app
        if web.delay and self.path != "/healthz":
            time.sleep(web.delay)  # a request takes a while: some are always in flight
        body = f"hello from {web.name}\n".encode()
        status = 200 if self.path != "/healthz" or web._healthy else 503
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(Server["WebServer"]):
    """Keeps every open connection, so that ``cut()`` can reset them all."""

    def __init__(self, address: tuple[str, int], web: WebServer) -> None:
        super().__init__(address, _Handler, web)
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self.lock:
            self.open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self.lock:
            self.open.discard(request)
        super().shutdown_request(request)

    def cut(self) -> None:
        """Reset every open connection, as a machine going down does."""
        with self.lock:
            for conn in list(self.open):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that resets its connection is not news


class WebServer(Served[_Server]):
    """An HTTP/1.1 keep-alive server on 127.0.0.1:``port``; ``/healthz`` answers 200 or 503
    (``healthy``, True at every start). ``stop()`` cuts every open connection, as a
    reboot would."""

    _thread_name = "web"
    _poll_interval = 0.1

    def __init__(self, port: int, *, name: str = "web", delay: float = 0.0) -> None:
        self.port = port
        self.name = name
        self.delay = delay
        self._healthy = True

    @property
    def healthy(self) -> bool:
        return self._running is not None and self._healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        assert self._running is not None
        self._healthy = value

    def _server(self) -> _Server:
        self._healthy = True
        return _Server(("127.0.0.1", self.port), self)

    def _stopped(self, server: _Server) -> None:
        server.cut()


class BlackHole:
    """A port that takes no connection: while a machine reboots its address answers
    nothing, so connections time out instead of being refused. A listener with a full
    accept queue that never accepts does that on loopback: the kernel drops new SYNs."""

    def __init__(self, port: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", port), backlog=0)
        self._filler = socket.socket()
        self._filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            self._filler.connect(("127.0.0.1", port))  # fills the queue of one

    def close(self) -> None:
        self._filler.close()
        self._listener.close()


@dataclass
class LoadClient:
    """``workers`` keep-alive clients sending GETs until stopped or ``limit_seconds``.

    A request fails when it raises (connection refused, reset, timeout) or answers 5xx.
    ``close=True`` sends ``Connection: close``: a new connection for every request.
    """

    url: str
    workers: int = 4
    limit_seconds: float = 120.0
    pause: float = 0.0
    close: bool = False
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _work(self) -> None:
        deadline = time.monotonic() + self.limit_seconds
        headers = {"Connection": "close"} if self.close else None
        with httpx.Client(trust_env=False, timeout=5.0, headers=headers) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    good = client.get(self.url).status_code < 500
                    kind = "" if good else "5xx"
                except httpx.HTTPError as exc:
                    good, kind = False, type(exc).__name__
                with self._lock:
                    if good:
                        self.ok += 1
                    else:
                        self.failed += 1
                        self.errors[kind] = self.errors.get(kind, 0) + 1
                if self.pause:
                    self._stop.wait(self.pause)

    def start(self) -> LoadClient:
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.ok, self.failed


class WebProcess:
    """A WebServer in a process of its own
    (``python -m drainer.testing web PORT NAME DELAY``), so load tests are not held back
    by one interpreter's lock; stopped by PID."""

    def __init__(self, port: int, *, name: str, delay: float = 0.0) -> None:
        self.port, self.name, self.delay = port, name, delay
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WebProcess:
        args = ["web", str(self.port), self.name, str(self.delay)]
        self.process = subprocess.Popen([sys.executable, "-m", "drainer.testing", *args])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"web server {self.name} did not start") from None
                time.sleep(0.05)

    def set_healthy(self, healthy: bool) -> None:
        """``/healthz`` answers 200 (True) or 503 (False); other paths are unchanged."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGUSR2 if healthy else signal.SIGUSR1)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL by default: the kernel resets its connections, as a machine going down."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=10)


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[0] != "web":
        print("usage: python -m drainer.testing web PORT NAME DELAY", file=sys.stderr)
        return 2
    # Taken with sigwait, no handler: blocked before the server's threads start, so
    # that they inherit the mask and only this loop receives them.
    signals = {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    server = WebServer(int(argv[1]), name=argv[2], delay=float(argv[3])).start()
    while (received := signal.sigwait(signals)) != signal.SIGTERM:
        server.healthy = received == signal.SIGUSR2
    server.stop()
    return 0
