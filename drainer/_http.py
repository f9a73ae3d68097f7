"""The small HTTP servers drainer runs in a thread: the fakes, ``drainer serve``, the lab.

``Server`` hands its handlers the object they serve (``server.app``); a ``Handler``
subclass names the methods it answers and gets each of them in ``_serve(method)``;
``ServerThread`` runs ``serve_forever`` from its construction until ``stop()``;
``Served`` is the start/stop/``with``/``url`` life of an object served that way.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

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
    """``server.serve_forever`` in a thread of its own, from construction until ``stop()``.

    ``poll_interval=None``: no periodic wakeup; the thread sleeps in ``accept`` until a
    client comes, and ``stop()`` wakes it by shutting the listening socket down (Linux)."""

    def __init__(
        self,
        server: ServerT,
        *,
        name: str,
        poll_interval: float | None,
        daemon: bool | None = None,
    ) -> None:
        self.server = server
        self._idle = poll_interval is None
        self._stopping = False
        self._thread = threading.Thread(
            target=self._serve_idle if self._idle else server.serve_forever,
            kwargs={} if self._idle else {"poll_interval": poll_interval},
            name=name,
            daemon=daemon,
        )
        self._thread.start()

    def _serve_idle(self) -> None:
        self.server.timeout = None
        while not self._stopping:
            self.server.handle_request()  # returns after one client, or at stop()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self, *, join_timeout: float) -> None:
        """Stop serving, close the socket, then wait for the thread."""
        if self._idle:
            self._stopping = True
            with contextlib.suppress(OSError):
                self.server.socket.shutdown(socket.SHUT_RDWR)  # accept returns at once
            self._thread.join(timeout=join_timeout)
        else:
            self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=join_timeout)


class Running:
    """``with`` for an object that a subclass starts (``start()``, returning it) and stops."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class Served(Running, Generic[ServerT]):
    """An object served by one HTTP server in a thread of its own, from ``start()`` (or
    ``with``) until ``stop()``.

    A subclass builds its server in ``_server()`` (called by ``start()``) and may act
    just before the server stops (``_stopping``) and just after (``_stopped``).
    """

    _thread_name = "http"  # the thread is called "<_thread_name>-<port>"
    _poll_interval = 0.05  # how soon serve_forever notices stop()
    _join_timeout = 5.0
    _running: ServerThread[ServerT] | None = None

    def _server(self) -> ServerT:
        raise NotImplementedError

    def _stopping(self) -> None:
        pass

    def _stopped(self, server: ServerT) -> None:
        pass

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server."""
        running = self._running
        if running is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        host = str(running.server.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{running.port}"

    def start(self) -> Self:
        """Serve in a daemon thread; returns self."""
        if self._running is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        server = self._server()
        self._running = ServerThread(
            server,
            name=f"{self._thread_name}-{server.server_address[1]}",
            poll_interval=self._poll_interval,
            daemon=True,
        )
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread; nothing if not started."""
        running, self._running = self._running, None
        if running is None:
            return
        self._stopping()
        running.stop(join_timeout=self._join_timeout)
        self._stopped(running.server)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
