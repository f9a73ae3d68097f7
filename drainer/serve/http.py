"""``drainer serve``'s HTTP side: sockets, TLS, connection limits and the request deadline.

At most ``limits.max_connections`` connections at once, and at most
``limits.max_connections_per_client`` from one client address; more are refused unread.
A connection must deliver its whole request (TLS handshake, headers, body) within
``limits.timeout`` from its accept, or it is shut down unanswered (``_Deadline``). On
SIGTERM the server stops accepting and waits for the calls in progress.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+
from urllib.parse import urlsplit

from drainer._http import Http11Handler, Served, Server
from drainer.adapters.base import AnyAdapterPlugin
from drainer.errors import ConfigError
from drainer.serve.app import Reply, ServeApp, read_tokens, refused
from drainer.serve.config import ServeSetup, load_serve_config, split_listen
from drainer.serve.protocol import NODE_HEADER

__all__ = ["RemoteServer", "serve"]

log = logging.getLogger("drainer")


class RemoteServer(Served["_HTTPServer"]):
    """The ``drainer serve`` HTTP server: ``ServeApp`` behind sockets, from ``start()``
    (or ``with``) until ``stop()``."""

    def __init__(
        self,
        setup: ServeSetup,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = setup.config
        self._config = config
        self.app = ServeApp(setup, tokens=read_tokens(config, environ), clock=clock)
        self._ssl: ssl.SSLContext | None = None
        if config.tls is not None:
            context_ = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context_.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context_.load_cert_chain(str(config.tls.cert), str(config.tls.key))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"tls: cannot load {config.tls.cert}: {exc}") from exc
            self._ssl = context_

    # -- lifecycle (start/stop/with from Served) -----------------------------------------

    _thread_name = "drainer-serve"
    _poll_interval = 0.2
    _join_timeout = 10.0

    @property
    def url(self) -> str:
        url = super().url
        return url.replace("http://", "https://", 1) if self._ssl else url

    def _server(self) -> _HTTPServer:
        host, port = split_listen(self._config.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            return _HTTPServer((host, port), self.app, family, ssl_context=self._ssl)
        except OSError as exc:
            raise ConfigError(f"listen: cannot listen on {self._config.listen}: {exc}") from exc

    def start(self) -> Self:
        super().start()
        log.info("serving %d nodes on %s", len(self._config.nodes), self.url)
        return self

    def stop(self) -> None:
        super().stop()
        self.app.close()  # also when never started: the app holds the adapters


class _Deadline:
    """Shuts a connection down unless its request was read within ``seconds``.

    A socket timeout bounds each read only: a client sending a byte now and then would
    hold its slot for ever (slowloris). The timer shuts the socket down (both ways, so a
    blocked read returns at once); the handler stops it with ``met()`` once the request
    is read, and acts only if that was in time.
    """

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock.dup()  # the same connection, still open after a TLS wrap detaches
        self._lock = threading.Lock()
        self._state = "running"  # then "met" or "expired"
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.name = "drainer-serve-deadline"
        self._timer.daemon = True
        try:
            self._timer.start()
        except BaseException:
            self._sock.close()
            raise

    def _expire(self) -> None:
        with self._lock:
            if self._state != "running":
                return
            self._state = "expired"
            with suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def met(self) -> bool:
        """Stop the clock: True if the request was read in time, False if too late."""
        with self._lock:
            if self._state == "running":
                self._state = "met"
            return self._state == "met"

    def close(self) -> None:
        self._timer.cancel()
        with self._lock:
            if self._state == "running":
                self._state = "met"
            self._sock.close()


def _refuse_unread(request: socket.socket, status: bytes, extra: bytes = b"") -> None:
    with suppress(OSError):
        request.sendall(
            b"HTTP/1.1 %s\r\n%sContent-Length: 0\r\nConnection: close\r\n\r\n" % (status, extra)
        )


class _HTTPServer(Server[ServeApp]):
    # stop() waits for the calls in progress: each may be a transaction at the load
    # balancer, better finished than cut (a cut one is completed by the next call)
    daemon_threads = False
    block_on_close = True

    def __init__(
        self,
        address: tuple[str, int],
        app: ServeApp,
        family: int,
        *,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.address_family = family
        self.ssl_context = ssl_context
        limits = app.config.limits
        self.slots = threading.BoundedSemaphore(limits.max_connections)
        self.per_client = limits.max_connections_per_client
        self.timeout_seconds = limits.timeout
        self._clients: dict[str, int] = {}  # client address -> its connections open
        self._clients_lock = threading.Lock()
        super().__init__(address, _Handler, app)

    def _leave(self, client: str) -> None:
        with self._clients_lock:
            left = self._clients.pop(client) - 1
            if left:
                self._clients[client] = left

    def process_request(self, request: Any, client_address: Any) -> None:
        # runs in the accepting thread: refuse at once, unread, what is over a limit
        client = str(client_address[0])
        with self._clients_lock:
            held = self._clients.get(client, 0)
            if held < self.per_client:
                self._clients[client] = held + 1
        if held >= self.per_client:
            _refuse_unread(request, b"429 Too Many Requests", b"Retry-After: 1\r\n")
            self.shutdown_request(request)
            return
        if not self.slots.acquire(blocking=False):
            self._leave(client)
            _refuse_unread(request, b"503 Service Unavailable")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: it will not give them back
            self.slots.release()
            self._leave(client)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        deadline: _Deadline | None = None
        try:
            deadline = _Deadline(request, self.timeout_seconds)  # from the accept
            request.settimeout(self.timeout_seconds)
            if self.ssl_context is not None:
                request = self.ssl_context.wrap_socket(request, server_side=True)
            _Handler(request, client_address, self, deadline=deadline)
        except OSError:  # a failed handshake, a client gone, a deadline passed: no answer
            pass
        except Exception:
            self.handle_error(request, client_address)
        finally:
            if deadline is not None:
                deadline.close()
            self.shutdown_request(request)
            self.slots.release()
            self._leave(str(client_address[0]))


class _Handler(Http11Handler, methods=("GET", "POST", "PUT", "PATCH", "DELETE")):
    # nothing logged here: ServeApp logs what matters, and never a header
    server: _HTTPServer
    server_version = "drainer"
    sys_version = ""

    def __init__(
        self, request: Any, client_address: Any, server: _HTTPServer, *, deadline: _Deadline
    ) -> None:
        self.deadline = deadline
        super().__init__(request, client_address, server)

    def _serve(self, method: str) -> None:
        limits = self.server.app.config.limits
        for name in (NODE_HEADER, "Authorization"):  # self.headers ignores the case
            if len(self.headers.get_all(name, [])) > 1:
                self._send(refused(400, f"send one {name} header"))
                return
        if self.headers.get("Transfer-Encoding"):
            self._send(refused(411, "send a Content-Length, not a chunked body"))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._send(refused(400, "bad Content-Length"))
            return
        if length > limits.max_body:
            self._send(refused(413, f"the body is over {limits.max_body} bytes"))
            return
        body = self.rfile.read(length)
        if not self.deadline.met():  # too slow: the connection is shut down, nothing is done
            self.close_connection = True
            return
        if len(body) < length:
            self._send(refused(400, "the body is shorter than its Content-Length"))
            return
        try:
            reply = self.server.app.handle(
                method,
                self.path,
                node=self.headers.get(NODE_HEADER, ""),
                authorization=self.headers.get("Authorization", ""),
                body=body,
                client=self.client_address[0],
            )
        except Exception:
            log.exception("drainer serve: %s %s failed", method, urlsplit(self.path).path)
            reply = refused(500, "internal error (see the server's log)", "transient")
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        data = json.dumps(reply.payload).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if reply.retry_after:
            self.send_header("Retry-After", str(reply.retry_after))
        self.send_header("Connection", "close")  # one request per connection: no idle slots
        self.close_connection = True
        self.end_headers()
        self.wfile.write(data)


def serve(
    config_path: Path,
    *,
    stopping: threading.Event | None = None,
    plugins: Mapping[str, AnyAdapterPlugin] | None = None,
) -> int:
    """Run ``drainer serve`` until SIGTERM/SIGINT (or ``stopping``); the exit code."""
    setup = load_serve_config(config_path, plugins=plugins)
    stop = stopping or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    with RemoteServer(setup):
        while not stop.wait(0.5):
            pass
    log.info("drainer serve stopped")
    return 0
