"""Test-only servers for the HAProxy tests (the HAProxy itself: drainer.testing.haproxy).

``HttpBackend`` is a ThreadingHTTPServer in this process; ``/slow`` holds the request
until ``release()``, so a test controls exactly how many sessions are open.
``silent_listener()`` is a TCP port whose kernel accepts connections that nobody ever
answers: a hung CLI. ``canned_cli()`` answers every command with one fixed reply.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    server: HttpBackend
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/slow":
            self.server.slow_started.release()
            self.server.released.wait(timeout=10)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpBackend(ThreadingHTTPServer):
    """A tiny HTTP server on 127.0.0.1 answering ``ok``; ``/slow`` waits for ``release()``."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.port = int(self.server_address[1])
        self.released = threading.Event()
        self.slow_started = threading.Semaphore(0)
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=f"backend-{self.port}"
        )
        self._thread.start()

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.release()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


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
