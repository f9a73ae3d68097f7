"""Test-only servers for the HAProxy tests (the HAProxy itself: drainer.testing.haproxy).

``HttpBackend`` is an HTTP server in this process (drainer._http); ``/slow`` holds the request
until ``release()``, so a test controls exactly how many sessions are open.
``silent_listener()`` is a TCP port whose kernel accepts connections that nobody ever
answers: a hung CLI. ``canned_cli()`` answers every command with one fixed reply.
``Lab`` starts HAProxies, backends and held requests for one test (the ``lab`` fixture).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from drainer._http import Http11Handler, Served, Server
from drainer.testing import HAProxy, WebServer, start_haproxy


class _Handler(Http11Handler, methods=("GET",)):
    server: Server[HttpBackend]

    def _serve(self, method: str) -> None:
        backend = self.server.app
        if self.path == "/slow":
            backend.slow_started.release()
            backend.released.wait(timeout=10)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HttpBackend(Served[Server["HttpBackend"]]):
    """A tiny HTTP server on 127.0.0.1 answering ``ok``, serving from its construction;
    ``/slow`` waits for ``release()``."""

    _thread_name = "backend"

    def __init__(self, port: int = 0) -> None:
        self.released = threading.Event()
        self.slow_started = threading.Semaphore(0)
        self._port = port
        self.start()
        assert self._running is not None
        self.port = self._running.port

    def _server(self) -> Server[HttpBackend]:
        return Server(("127.0.0.1", self._port), _Handler, self)

    def release(self) -> None:
        self.released.set()

    def _stopping(self) -> None:
        self.release()


@contextmanager
def silent_listener() -> Iterator[str]:
    """A ``tcp://`` address whose connections are accepted by the kernel, never answered."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@contextmanager
def canned_cli(reply: bytes) -> Iterator[str]:
    """A ``tcp://`` address that reads each command to EOF, answers ``reply`` and closes."""

    def serve(listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            with conn:
                while conn.recv(65536):
                    pass
                conn.sendall(reply)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        thread = threading.Thread(target=serve, args=(sock,), name="canned-cli", daemon=True)
        thread.start()
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        sock.shutdown(socket.SHUT_RDWR)
    thread.join(timeout=5)


class Lab:
    """Starts HAProxies, backends and held requests; ``close()`` ends each, newest first."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def haproxy(self, body: str, **options: Any) -> HAProxy:
        haproxy = start_haproxy(body, **options)
        self._undo.append(haproxy.stop)
        return haproxy

    def again(self, haproxy: HAProxy) -> HAProxy:
        back = haproxy.start_again()
        self._undo.append(back.stop)
        return back

    def backend(self, port: int = 0) -> HttpBackend:
        backend = HttpBackend(port)
        self._undo.append(backend.stop)
        return backend

    def web(self, port: int, name: str) -> WebServer:
        web = WebServer(port, name=name).start()
        self._undo.append(web.stop)
        return web

    def hold(self, front: int, backend: HttpBackend) -> socket.socket:
        """A request to ``/slow`` through HAProxy's frontend, open until ``release()``."""
        conn = socket.create_connection(("127.0.0.1", front), timeout=5)
        self._undo.append(conn.close)
        conn.sendall(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        assert backend.slow_started.acquire(timeout=5), "the held request did not arrive"
        return conn

    def close(self) -> None:
        for undo in reversed(self._undo):
            with suppress(Exception):
                undo()
