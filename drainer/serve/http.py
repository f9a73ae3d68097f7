"""``drainer serve``'s HTTP side: one event loop for every connection, kept open (HTTP/1.1).

Why this design: every sidecar polls its state about once a second, so a fleet of 2,000
is 2,000 connections held open and 2,000 small requests a second. A thread per
connection and one connection per request (http.server) pay a thread, a TCP connection
and under TLS a handshake for each poll. Here one asyncio loop in one thread holds every
connection and reads and answers HTTP/1.1 requests on it, keep-alive by default; only the
adapter calls, which block (a file lock, ``nginx -t``, a socket to HAProxy), run in
threads: reads of the state in a few of their own (``_READERS``), so that a poll never
waits behind drains queued at a slow load balancer, the rest in others (``_WRITERS``).
Standard library only: the protocol is a few short requests with a ``Content-Length``,
and an ASGI server would add dependencies while still needing what is here (limits
counted before the application, refusals after the TLS handshake).

Limits (``limits.*``):

- At most ``max_connections`` connections at once, and at most
  ``max_connections_per_client`` from one client address that have not yet sent a
  request with a node's valid token (a fleet behind one NAT address is not limited once
  its nodes are known; a stranger is). Over a limit, a connection is answered at once
  with 503 (too many connections) or 429 (too many from this address), ``Retry-After:
  1`` and ``Connection: close``, then closed: under TLS after the handshake, so the
  client reads the refusal and its Retry-After instead of a TLS error.
- A TLS handshake must end within ``timeout``; a connection's first request must arrive
  whole within ``timeout`` of its start, and each later one within ``timeout`` of its
  first byte, or the connection is shut down unanswered: trickling bytes cannot hold a
  slot, and a request is acted on only once read whole. Between requests a connection
  may stay idle ``idle`` seconds. The adapter call that follows a request is not bounded
  here (it may wait for ``nginx -t`` and a reload).
- A request head over ``_HEAD_MAX`` bytes gets 431, a body over ``max_body`` 413, a
  chunked body 411, each with the connection closed.

On stop (SIGTERM) the server stops accepting, closes its idle connections, lets a request
being read arrive (until its deadline at most), and waits for the calls in progress, each
answered with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import resource
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

from drainer._http import Running
from drainer.adapters.base import AnyAdapterPlugin
from drainer.errors import ConfigError
from drainer.serve.app import Reply, ServeApp, read_tokens, refused
from drainer.serve.config import LimitsConfig, ServeSetup, load_serve_config, split_listen
from drainer.serve.protocol import NODE_HEADER

__all__ = ["RemoteServer", "serve"]

log = logging.getLogger("drainer")

_HEAD_MAX = 8192  # bytes of a request line and its headers
_READERS = 2  # threads reading states (GET): a slow read leaves another; few, as each is short
_WRITERS = 16  # threads for the rest (one call at a time per node and load balancer)
_LINGER = 1.0  # seconds a refused connection is kept to let its client read the refusal
_BACKLOG = 4096  # a fleet reconnecting at once (the kernel caps it at somaxconn)
_REASONS = {status.value: status.phrase for status in HTTPStatus}
_NODE = NODE_HEADER.lower()


class RemoteServer(Running):
    """The ``drainer serve`` HTTP server: ``ServeApp`` behind sockets, from ``start()``
    (or ``with``) until ``stop()``."""

    _join_timeout = 10.0  # for the calls in progress at stop()

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
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failed: Exception | None = None  # why the loop could not start serving

    @property
    def url(self) -> str:
        """``http(s)://HOST:PORT`` of the running server."""
        if self._address is None:
            raise RuntimeError("RemoteServer is not started")
        host, port = self._address
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> Self:
        """Listen, and serve in a thread of its own; returns self."""
        if self._thread is not None:
            raise RuntimeError("RemoteServer is already started")
        listening = self._listen()
        self._address = listening.getsockname()[:2]
        _raise_open_files(self._config.limits.max_connections)
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run,
            args=(listening, ready),
            name=f"drainer-serve-{self._address[1]}",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        if self._failed is not None:
            self._thread = None
            raise ConfigError(f"drainer serve could not start: {self._failed}")
        log.info("serving %d nodes on %s", len(self._config.nodes), self.url)
        return self

    def stop(self) -> None:
        """Stop accepting, finish the calls in progress, close every adapter."""
        thread, self._thread = self._thread, None
        if thread is not None and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            thread.join(timeout=self._join_timeout + 5)
        self.app.close()  # also when never started: the app holds the adapters

    def _listen(self) -> socket.socket:
        host, port = split_listen(self._config.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.socket(family, socket.SOCK_STREAM)
        try:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listening.bind((host, port))
            listening.listen(_BACKLOG)
            listening.setblocking(False)
        except OSError as exc:
            listening.close()
            raise ConfigError(f"listen: cannot listen on {self._config.listen}: {exc}") from exc
        return listening

    def _run(self, listening: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(listening, ready))
        except Exception as exc:
            if ready.is_set():
                raise
            self._failed = exc
            listening.close()
        finally:
            loop.close()
            ready.set()  # were it to fail before serving: start() must not wait for ever

    async def _serve(self, listening: socket.socket, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        limits = self._config.limits
        with (
            ThreadPoolExecutor(_READERS, thread_name_prefix="drainer-serve-read") as readers,
            ThreadPoolExecutor(_WRITERS, thread_name_prefix="drainer-serve-call") as writers,
        ):
            hub = _Hub(self.app, limits, readers=readers, writers=writers)
            server = await loop.create_server(
                lambda: _Connection(hub),
                sock=listening,
                ssl=self._ssl,
                ssl_handshake_timeout=limits.timeout if self._ssl else None,
                backlog=_BACKLOG,
            )
            ready.set()
            await self._stop.wait()
            server.close()  # no new connections
            await hub.close(timeout=self._join_timeout)
        # the pools have waited for the calls they were running


def _raise_open_files(connections: int) -> None:
    """Raise the soft limit of open files towards the hard one, so that ``connections``
    can be held (often 1,024 by default); a warning when it cannot."""
    wanted = connections + 256  # adapters' files and sockets, the log
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "drainer serve may open %d files, fewer than limits.max_connections (%d) needs:"
            " raise LimitNOFILE in its unit (or ulimit -n)",
            soft,
            connections,
        )


class _Hub:
    """What every connection of one server shares: the app, the limits, the thread pool,
    the connections open and who holds them."""

    def __init__(
        self,
        app: ServeApp,
        limits: LimitsConfig,
        *,
        readers: ThreadPoolExecutor,
        writers: ThreadPoolExecutor,
    ) -> None:
        self.app = app
        self.limits = limits
        self.readers = readers
        self.writers = writers
        self.open: set[_Connection] = set()
        self.refused: set[_Connection] = set()  # answered, kept for _LINGER
        self.strangers: dict[str, int] = {}  # address -> its connections not yet authenticated
        self.stopping = False
        self._all_closed: asyncio.Event | None = None

    def admit(self, conn: _Connection) -> Reply | None:
        """None if ``conn`` may stay (and it is counted), else the refusal to send it."""
        if self.stopping or len(self.open) >= self.limits.max_connections:
            return refused(503, "too many connections: retry", "transient", retry_after=1)
        held = self.strangers.get(conn.client, 0)
        if held >= self.limits.max_connections_per_client:
            return refused(429, "too many connections from this address", "transient", 1)
        self.strangers[conn.client] = held + 1
        self.open.add(conn)
        return None

    def known(self, conn: _Connection) -> None:
        """``conn`` sent a valid token: it no longer counts against its address."""
        self._forget_stranger(conn.client)

    def leave(self, conn: _Connection, *, stranger: bool) -> None:
        self.refused.discard(conn)
        if conn not in self.open:
            return
        self.open.discard(conn)
        if stranger:
            self._forget_stranger(conn.client)
        if self.stopping and not self.open and self._all_closed is not None:
            self._all_closed.set()

    def _forget_stranger(self, client: str) -> None:
        left = self.strangers.pop(client, 1) - 1
        if left > 0:
            self.strangers[client] = left

    async def close(self, *, timeout: float) -> None:
        """Close the idle connections now, the others once answered; wait for them."""
        self.stopping = True
        self._all_closed = asyncio.Event()
        for conn in [*self.open, *self.refused]:
            conn.close_if_idle()
        if self.open:
            try:
                await asyncio.wait_for(self._all_closed.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("drainer serve: %d connections still open at stop", len(self.open))
        for conn in [*self.open, *self.refused]:
            conn.abort()


class _Request:
    """One request read whole: method, target, version, headers (lower-case names)."""

    __slots__ = ("body", "headers", "method", "target", "version")

    def __init__(self, method: str, target: str, version: str, headers: dict[str, list[str]]):
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = b""

    def header(self, name: str) -> str:
        values = self.headers.get(name)
        return values[0] if values else ""

    @property
    def keep_alive(self) -> bool:
        tokens = {
            t.strip().lower() for t in ",".join(self.headers.get("connection", [])).split(",")
        }
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def _parse_head(head: str) -> _Request | None:
    """The request line and headers, or None if they are not HTTP/1.x."""
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    method = parts[0]
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not method.isascii():
        return None
    if not method.isalpha():
        return None
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():  # obsolete folding, "Name :"
            return None
        headers.setdefault(name.lower(), []).append(value.strip())
    return _Request(parts[0], parts[1], parts[2], headers)


def _response(reply: Reply, *, close: bool) -> bytes:
    body = json.dumps(reply.payload).encode()
    lines = [
        f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, '')}",
        "Server: drainer",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if reply.retry_after:
        lines.append(f"Retry-After: {reply.retry_after}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection(asyncio.Protocol):
    """One client connection: requests read one after another, each answered in turn."""

    def __init__(self, hub: _Hub) -> None:
        self.hub = hub
        self.client = ""
        self.node = ""  # the node a valid token named on this connection
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._state = "idle"  # "reading" a request, "calling" the app, "refused", "closed"
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # by the loop's clock; see _expire_in

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        refusal = self.hub.admit(self)
        if refusal is not None:
            self._refuse(refusal)
            return
        self._expire_in(self.hub.limits.timeout)  # the first request, from the start

    def data_received(self, data: bytes) -> None:
        if self._state in ("refused", "closed"):
            return  # read and dropped: closing with unread bytes would reset the answer
        if self._state == "idle" and not self._buffer:
            self._state = "reading"  # its first byte: the deadline of this request
            self._expire_in(self.hub.limits.timeout)
        self._buffer += data
        if self._state == "reading":
            self._next()
        elif len(self._buffer) > _HEAD_MAX + self.hub.limits.max_body and self._transport:
            self._transport.pause_reading()  # more sent ahead than one request: wait

    def eof_received(self) -> bool | None:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.leave(self, stranger=not self.node)
        self._state = "closed"
        self._cancel_timer()

    # -- what the hub asks ----------------------------------------------------------------

    def close_if_idle(self) -> None:
        if self._state in ("idle", "refused") and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- requests -------------------------------------------------------------------------

    def _next(self) -> None:
        """Act on the request in the buffer once it is whole."""
        limits = self.hub.limits
        while self._buffer[:2] == b"\r\n":  # stray line ends between requests
            del self._buffer[:2]
        end = self._buffer.find(b"\r\n\r\n", 0, _HEAD_MAX + 4)
        if end < 0:
            if len(self._buffer) > _HEAD_MAX:
                self._answer(refused(431, f"the request head is over {_HEAD_MAX} bytes"), None)
            elif not self._buffer:
                self._state = "idle"
                self._expire_in(limits.idle)
            return
        request = _parse_head(self._buffer[:end].decode("latin-1"))
        if request is None:
            self._answer(refused(400, "not an HTTP/1.1 request"), None)
            return
        refusal = self._framing(request)
        if refusal is not None:
            self._answer(refusal, None)
            return
        length = int(request.header("content-length") or 0)
        if len(self._buffer) < end + 4 + length:
            return  # the rest of the body is still on its way
        request.body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        self._no_deadline()
        for name in (NODE_HEADER, "Authorization"):
            if len(request.headers.get(name.lower(), [])) > 1:
                self._answer(refused(400, f"send one {name} header"), request)
                return
        self._call(request)

    def _framing(self, request: _Request) -> Reply | None:
        """Why the body of ``request`` cannot be read (the connection is then closed)."""
        if request.headers.get("transfer-encoding"):
            return refused(411, "send a Content-Length, not a chunked body")
        lengths = request.headers.get("content-length", [])
        if len(set(lengths)) > 1 or any(not (v.isascii() and v.isdigit()) for v in lengths):
            return refused(400, "bad Content-Length")
        if lengths and int(lengths[0]) > self.hub.limits.max_body:
            return refused(413, f"the body is over {self.hub.limits.max_body} bytes")
        return None

    def _call(self, request: _Request) -> None:
        self._state = "calling"  # one request at a time: what comes meanwhile waits
        loop = asyncio.get_running_loop()
        path = urlsplit(request.target).path
        read = request.method == "GET" and not path.endswith("/preflight")  # may run nginx -t
        pool = self.hub.readers if read else self.hub.writers
        future = loop.run_in_executor(pool, self._handle, request)
        future.add_done_callback(lambda done: self._answer(done.result(), request))

    def _handle(self, request: _Request) -> Reply:  # in a thread of the pool
        try:
            return self.hub.app.handle(
                request.method,
                request.target,
                node=request.header(_NODE),
                authorization=request.header("authorization"),
                body=request.body,
                client=self.client,
            )
        except Exception:
            path = urlsplit(request.target).path
            log.exception("drainer serve: %s %s failed", request.method, path)
            return refused(500, "internal error (see the server's log)", "transient")

    def _answer(self, reply: Reply, request: _Request | None) -> None:
        """Send ``reply``; keep the connection for the next request if it may be kept
        (``request`` None: the request could not be read whole, so it may not)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if reply.node and not self.node:
            self.node = reply.node
            self.hub.known(self)
        keep = request is not None and request.keep_alive and not self.hub.stopping
        transport.write(_response(reply, close=not keep))
        if not keep:
            self._state = "closed"
            self._cancel_timer()
            transport.close()
            return
        self._state = "reading" if self._buffer else "idle"
        if not transport.is_reading():
            transport.resume_reading()
        if self._buffer:  # a request sent before this answer (pipelined)
            self._expire_in(self.hub.limits.timeout)
            self._next()
        else:
            self._expire_in(self.hub.limits.idle)

    def _refuse(self, reply: Reply) -> None:
        assert self._transport is not None
        self._state = "refused"
        self.hub.refused.add(self)
        self._transport.write(_response(reply, close=True))
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(_LINGER, self._transport.close)

    def _expire_in(self, seconds: float) -> None:
        """Shut the connection down unless the state changes within ``seconds``: a
        request not read whole in time, or a connection idle for too long.

        The deadline is a number that each request moves; the timer that checks it is
        set again only when it fires, at most every ``limits.timeout`` (the shortest
        deadline, so that no deadline set later can fall before it)."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + seconds
        if self._timer is None or self._timer.when() > self._deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(self._next_check(loop.time()), self._check)

    def _next_check(self, now: float) -> float:
        assert self._deadline is not None
        return min(self._deadline, now + self.hub.limits.timeout)

    def _check(self) -> None:
        self._timer = None
        if self._deadline is None or self._state not in ("idle", "reading"):
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._deadline:
            self._timer = loop.call_at(self._next_check(now), self._check)
        elif self._transport is not None:
            self._state = "closed"
            self._transport.abort()

    def _no_deadline(self) -> None:
        self._deadline = None  # the timer, when it fires, finds none and stops

    def _cancel_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


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
        # What start-up built (every node's models and adapters) lives as long as the
        # process: the collector need not walk it again (16 ms at 2,000 nodes, a stall
        # for every sidecar waiting then).
        gc.freeze()
        # The loop thread gives the GIL up at every socket call and must get it back
        # from a reader thread busy in Python (parsing an HAProxy backend's 500 rows):
        # by default it waits up to 5 ms each time, and the loop stalls. p99 at 2,000
        # sidecars of an HAProxy, measured: 32 ms with 5 ms, 10 ms with 0.5 ms.
        sys.setswitchinterval(0.0005)
        while not stop.wait(0.5):
            pass
    log.info("drainer serve stopped")
    return 0
