"""A small local lab for the demo, the benchmarks and users' own tests: a web server that
plays a VM's application, a bounded load client, and a real HAProxy on loopback.

Everything binds 127.0.0.1 only; every process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from drainer._http import Handler, ServerThread


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Handler(Handler, methods=("GET",)):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _serve(self, method: str) -> None:
        if self.server.delay and self.path != "/healthz":
            time.sleep(self.server.delay)  # a request takes a while: some are always in flight
        body = f"hello from {self.server.name}\n".encode()
        status = 200 if self.path != "/healthz" or self.server.healthy else 503
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    name = ""
    healthy = True
    delay = 0.0

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
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


class WebServer:
    """An HTTP/1.1 keep-alive server on 127.0.0.1:``port``; ``/healthz`` answers 200 or 503."""

    def __init__(self, port: int, *, name: str = "web", delay: float = 0.0) -> None:
        self.port = port
        self.name = name
        self.delay = delay
        self._running: ServerThread[_Server] | None = None

    @property
    def healthy(self) -> bool:
        return self._running is not None and self._running.server.healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        assert self._running is not None
        self._running.server.healthy = value

    def start(self) -> WebServer:
        server = _Server(("127.0.0.1", self.port))
        server.name = self.name
        server.delay = self.delay
        self._running = ServerThread(
            server, name=f"web-{self.name}", poll_interval=0.1, daemon=True
        )
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection, as a reboot would."""
        running, self._running = self._running, None
        if running is None:
            return
        running.stop(join_timeout=5)
        running.server.cut()


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


def haproxy_available() -> bool:
    return shutil.which("haproxy") is not None or Path("/usr/sbin/haproxy").exists()


@dataclass
class HAProxy:
    process: subprocess.Popen[bytes]
    port: int  # the frontend clients use
    admin: str  # the runtime API address, level admin
    config: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def haproxy_config(
    tmp: Path,
    *,
    port: int,
    backends: dict[str, int],
    check: str = "check inter 500ms",
    extra_server: str = "",
    per_server: dict[str, str] | None = None,
    redispatch: bool = False,
) -> str:
    """``extra_server`` goes on every server line, ``per_server[name]`` on that one's."""
    more = per_server or {}
    servers = "\n".join(
        f"  server {name} 127.0.0.1:{p} {check} {extra_server} {more.get(name, '')}".rstrip()
        for name, p in backends.items()
    )
    return f"""global
  stats socket {tmp}/admin.sock mode 600 level admin
  stats socket {tmp}/stats.sock mode 666 level user
  stats timeout 30s
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  retries 3
{"  option redispatch" if redispatch else ""}
frontend web
  bind 127.0.0.1:{port}
  default_backend app
backend app
  balance roundrobin
{servers}
"""


def start_haproxy(tmp: Path, *, backends: dict[str, int], **options: Any) -> HAProxy:
    """A real HAProxy in front of ``backends`` (name -> port); admin socket in ``tmp``."""
    port = free_port()
    config = tmp / "haproxy.cfg"
    config.write_text(haproxy_config(tmp, port=port, backends=backends, **options))
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    (tmp / "admin.sock").unlink(missing_ok=True)  # a stale one would look like a ready one
    process = subprocess.Popen(
        [binary, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    proxy = HAProxy(process, port, f"unix://{tmp}/admin.sock", config)
    deadline = time.monotonic() + 10
    while not (tmp / "admin.sock").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            proxy.stop()
            raise RuntimeError(f"haproxy did not start with {config}")
        time.sleep(0.05)
    return proxy


class WebProcess:
    """A WebServer in a process of its own
    (``python -m drainer.testing.lab web PORT NAME DELAY``), so load tests are not held back
    by one interpreter's lock; stopped by PID."""

    def __init__(self, port: int, *, name: str, delay: float = 0.0) -> None:
        self.port, self.name, self.delay = port, name, delay
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WebProcess:
        args = ["web", str(self.port), self.name, str(self.delay)]
        self.process = subprocess.Popen([sys.executable, "-m", "drainer.testing.lab", *args])
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
        print("usage: python -m drainer.testing.lab web PORT NAME DELAY", file=sys.stderr)
        return 2
    server = WebServer(int(argv[1]), name=argv[2], delay=float(argv[3])).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: setattr(server, "healthy", False))
    signal.signal(signal.SIGUSR2, lambda *_: setattr(server, "healthy", True))
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
