"""The small HTTP servers drainer runs in a thread: the fakes, ``drainer serve``, the lab.

``Server`` hands its handlers the object they serve (``server.app``); a ``Handler``
subclass names the methods it answers and gets each of them in ``_serve(method)``;
``ServerThread`` runs ``serve_forever`` from its construction until ``stop()``; a
``Service`` (something with ``start()`` and ``stop()``) is a context manager.
"""

from __future__ import annotations

import ipaddress
import socketserver
import sys
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Self, TypeVar

AppT = TypeVar("AppT")
ServerT = TypeVar("ServerT", bound=socketserver.TCPServer)


class Server(ThreadingHTTPServer, Generic[AppT]):
    daemon_threads = True
    request_queue_size = 64  # the default 5 drops bursts of parallel clients for a second

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], app: AppT
    ) -> None:
        self.app = app
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client hung up (a probe that timed out): no traceback in our log
        super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """Answers the methods a subclass names, ``class H(Handler, methods=("GET",))``, by
    calling ``_serve(method)``; any other method gets http.server's own 501."""

    def __init_subclass__(cls, *, methods: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in methods:
            setattr(cls, f"do_{method}", _serving(method))

    def _serve(self, method: str) -> None:
        raise NotImplementedError

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a quiet stderr for tests and demos; the servers log what matters themselves


def _serving(method: str) -> Callable[[Handler], None]:
    def do(self: Handler) -> None:
        self._serve(method)

    return do


class Http11Handler(Handler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1  # headers and body leave in one write (no delayed-ACK stall)
    disable_nagle_algorithm = True


class ServerThread(Generic[ServerT]):
    """``server.serve_forever`` in a thread of its own, from construction until ``stop()``."""

    def __init__(
        self, server: ServerT, *, name: str, poll_interval: float, daemon: bool | None = None
    ) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": poll_interval},
            name=name,
            daemon=daemon,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self, *, join_timeout: float) -> None:
        """Stop serving, close the socket, then wait for the thread."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=join_timeout)


class Service:
    """A server run by ``start()`` (which returns it) until ``stop()``; ``with`` does both."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
