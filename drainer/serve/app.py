"""``drainer serve``: a load-balancer host's adapters, offered over HTTP to the sidecars.

A sidecar on a backend VM cannot edit the nginx host's files. ``drainer serve`` runs on
the load-balancer host, builds the adapters its own configuration names (nginx, nginx
Plus, HAProxy; see ``NODE_KEYS``) and lets each node act on its own server of them, and
on nothing else. The sidecar's ``remote`` adapter (drainer/adapters/remote.py) is the client::

    GET  /v1/load-balancers                  {"node": n, "load_balancers": [name, ...]}
    GET  /v1/load-balancers/<name>           {"status", "sessions", "detail"}
    POST /v1/load-balancers/<name>/drain     {} -> {"ok": true}
    POST /v1/load-balancers/<name>/take-out  {"kill": false} -> {"ok": true}
    POST /v1/load-balancers/<name>/put-back  {} -> {"serving": true}
    GET  /v1/load-balancers/<name>/preflight {"checks": [{"name", "ok", "detail"}, ...]}

    errors: {"error": message, "kind": "refused" | "transient" | "permanent"}
    400 bad body   401 unknown node or wrong token   403 not this node's   404 no such path
    405 method  411 no Content-Length  413 body too large
    429 rate, or too many connections from this address (Retry-After)
    422 the adapter refused for good (PermanentAdapterError)
    503 the load balancer failed this time (TransientAdapterError), or every connection
        slot is taken: retry

Invariants:

- A request names a load balancer, never a server. The server is the one the
  configuration gives the node (``nodes.<node>.servers.<lb>``), merged into the load
  balancer's entry when ``drainer serve`` starts. A node entry may set only the keys that
  name its server (``NODE_KEYS``, per adapter type; every other key comes from
  ``load_balancers``, and a type without such keys cannot be served), and two nodes of
  one load balancer never name the same server (compared by those keys, an HAProxy
  ``address`` by IP and port; nodes that name it in different ways are refused, as
  nobody can tell them apart). Whatever a node sends, it acts on its own server only.
- Every request is authenticated: ``X-Drainer-Node: <node>`` and
  ``Authorization: Bearer <token>``, header names and the scheme in any case (an
  HTTP/2 proxy lowercases them), each header at most once. Tokens are read once at start
  from a file or an environment variable, compared in constant time
  (``hmac.compare_digest`` of SHA-256 digests, and an unknown node costs the same
  comparison), and never logged or echoed.
- It listens on loopback unless told otherwise; a non-loopback address needs TLS
  (``tls.cert``/``tls.key``) or an explicit ``allow_plaintext: true``.
- Limits: a body over ``limits.max_body`` bytes is refused unread; each client address
  gets ``limits.rate`` requests per second (burst ``limits.burst``), counted before
  authentication so guessing is slow too. At most ``limits.max_connections`` connections
  at once, and at most ``limits.max_connections_per_client`` from one client address, so
  one address cannot take every slot; more are refused unread. A connection must deliver
  its whole request (TLS handshake, headers, body) within ``limits.timeout`` from its
  accept, or it is shut down unanswered: trickling bytes cannot hold a slot, and a
  request is acted on only if it was read in time. The call to the adapter that follows
  is not bounded by it (it may wait for ``nginx -t`` and a reload).
- Calls on one node's load balancer are serialized; the adapters serialize the rest
  (the nginx adapter holds a file lock around each transaction).

Crash behaviour: the server keeps no state of its own. On SIGTERM it stops accepting and
waits for the calls in progress (each may be a transaction at the load balancer), and for
connections still sending a request until their deadline at most; a call cut short by a
crash is retried by the sidecar, and every adapter call is idempotent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from drainer._http import Http11Handler, Server, ServerThread, is_loopback
from drainer._net import split_host_port
from drainer.adapters.base import (
    AdapterConfig,
    AdapterContext,
    AdapterPlugin,
    LoadBalancer,
    preflight,
)
from drainer.adapters.haproxy.client import parse_node_address
from drainer.config import Duration, adapter_plugins
from drainer.errors import AdapterError, ConfigError, PermanentAdapterError, TransientAdapterError

__all__ = [
    "NODE_HEADER",
    "NODE_KEYS",
    "RemoteServer",
    "ServeConfig",
    "load_serve_config",
    "serve",
]

log = logging.getLogger("drainer")

NODE_HEADER = "X-Drainer-Node"
MIN_TOKEN_LENGTH = 16

# The adapter types drainer serve can serve, and the keys that name a node's server in
# each: the only keys a node entry may set, and what tells two nodes' servers apart.
NODE_KEYS: Mapping[str, tuple[str, ...]] = {
    "nginx": ("server",),
    "nginx-plus": ("server",),
    "haproxy": ("backend", "server", "address"),
    "mock": ("path",),  # the test adapter: one JSON file per node
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    cert: Path
    key: Path


class LimitsConfig(_Strict):
    max_body: int = Field(default=1024, ge=64)  # bytes
    rate: float = Field(default=5.0, gt=0)  # requests per second per client address
    burst: int = Field(default=20, ge=1)
    max_connections: int = Field(default=32, ge=1)
    max_connections_per_client: int = Field(default=4, ge=1)  # from one client address
    timeout: Duration = 10.0  # to read a whole request, TLS handshake included


class NodeEntry(_Strict):
    token_file: Path | None = None
    token_env: str | None = None
    # load balancer name -> the keys that make its entry this node's (e.g. {server: ...})
    servers: dict[str, dict[str, Any]] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_token(self) -> NodeEntry:
        if (self.token_file is None) == (self.token_env is None):
            raise ValueError("set exactly one of token_file or token_env")
        return self


class ServeConfig(_Strict):
    listen: str = "127.0.0.1:9470"
    tls: TlsConfig | None = None
    allow_plaintext: bool = False  # a non-loopback listen address without TLS
    state_dir: Path = Path("/var/lib/drainer")
    load_balancers: dict[str, dict[str, Any]] = Field(min_length=1)  # name -> adapter entry
    nodes: dict[str, NodeEntry] = Field(min_length=1)
    limits: LimitsConfig = LimitsConfig()

    @field_validator("listen")
    @classmethod
    def _listen(cls, listen: str) -> str:
        _split_listen(listen)  # ValueError names what is wrong
        return listen

    @model_validator(mode="after")
    def _safe_listen(self) -> ServeConfig:
        host, _ = _split_listen(self.listen)
        if self.tls is None and not self.allow_plaintext and not is_loopback(host):
            raise ValueError(
                f"listen: {host} is not a loopback address: configure tls (or "
                f"allow_plaintext: true if another layer encrypts the traffic)"
            )
        return self


def _split_listen(listen: str) -> tuple[str, int]:
    head, _, port = listen.strip().rpartition(":")
    if port == "0":  # any free port (tests, the lab): the host is checked all the same
        return split_host_port(f"{head}:1", default_host="0.0.0.0")[0], 0
    return split_host_port(listen, default_host="0.0.0.0")


def _problems(exc: ValidationError, prefix: str) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = {"missing": "field required", "extra_forbidden": "unknown key"}.get(
            err["type"], err["msg"].removeprefix("Value error, ")
        )
        key = ".".join(part for part in (prefix, loc) if part)
        out.append(f"{key}: {msg}" if key else msg)
    return out


@dataclass(frozen=True)
class _ServerName:
    """How a validated entry names its node's server: which keys, and their values."""

    keys: tuple[str, ...]  # the keys set, e.g. ("backend", "server") or ("address",)
    values: tuple[Any, ...]  # an HAProxy address as (IP, port or None)

    def same_as(self, other: _ServerName) -> bool:
        if self.keys == ("address",):  # HAProxy: an address without a port is every port
            [(ip, port)], [(other_ip, other_port)] = self.values, other.values
            return bool(ip == other_ip and (port is None or other_port in (None, port)))
        return self.values == other.values


def _server_name(adapter: AdapterConfig, keys: tuple[str, ...]) -> _ServerName:
    found = {key: getattr(adapter, key) for key in keys}
    set_ = tuple(key for key in keys if found[key] is not None) or keys  # mock: path None
    values = tuple(found[key] for key in set_)
    if set_ == ("address",):
        values = (parse_node_address(str(found["address"])),)
    return _ServerName(set_, values)


def _clash(mine: _ServerName, named: list[tuple[str, _ServerName]], lb: str) -> str:
    """Why ``mine`` may not join the servers other nodes of ``lb`` have; "" if it may."""
    for other, theirs in named:
        if theirs.keys != mine.keys:
            return (
                f"names its server by {' + '.join(mine.keys)} and nodes.{other}.servers.{lb} "
                f"by {' + '.join(theirs.keys)}: name every node's server the same way, so "
                f"that no two can be the same"
            )
        if mine.same_as(theirs):
            return f"the same server as nodes.{other}.servers.{lb}"
    return ""


@dataclass(frozen=True)
class ServeSetup:
    """A validated ``drainer serve`` configuration: each node's own adapter entries."""

    config: ServeConfig
    entries: dict[str, dict[str, AdapterConfig]]  # node -> load balancer name -> entry
    plugins: dict[str, AdapterPlugin]


def load_serve_config(
    path: Path, *, plugins: Mapping[str, AdapterPlugin] | None = None
) -> ServeSetup:
    """Read and validate; raise ConfigError naming the file and every key path at fault."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_serve_config(raw, origin=str(path), plugins=plugins)


def parse_serve_config(
    raw: Any, *, origin: str = "<serve config>", plugins: Mapping[str, AdapterPlugin] | None = None
) -> ServeSetup:
    known = dict(adapter_plugins() if plugins is None else plugins)
    try:
        config = ServeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{origin}: {p}" for p in _problems(exc, ""))) from exc
    problems: list[str] = []
    entries: dict[str, dict[str, AdapterConfig]] = {}
    named: dict[str, list[tuple[str, _ServerName]]] = {}  # lb -> (node, its server) so far
    for node, entry in config.nodes.items():
        entries[node] = {}
        for lb, keys in entry.servers.items():
            where = f"nodes.{node}.servers.{lb}"
            base = config.load_balancers.get(lb)
            if base is None:
                problems.append(f"{where}: no load balancer {lb!r} in load_balancers")
                continue
            kind = base.get("type")
            if kind not in known:
                names = ", ".join(sorted(known))
                problems.append(f"load_balancers.{lb}.type: unknown type {kind!r} ({names})")
                continue
            allowed = NODE_KEYS.get(str(kind))
            if allowed is None:
                problems.append(
                    f"load_balancers.{lb}.type: drainer serve cannot serve type {kind!r}: it "
                    f"knows which keys name a node's server only for {', '.join(NODE_KEYS)}"
                )
                continue
            extra = [key for key in keys if key not in allowed]
            problems += [
                f"{where}.{key}: a node entry may set only {', '.join(allowed)} (what names "
                f"its server); set {key} in load_balancers.{lb}"
                for key in extra
            ]
            if extra:
                continue
            merged = {**base, **keys, "name": base.get("name", lb)}
            try:
                adapter = known[str(kind)].config_model.model_validate(merged)
            except ValidationError as exc:
                problems += _problems(exc, where)
                continue
            mine = _server_name(adapter, allowed)
            clash = _clash(mine, named.setdefault(lb, []), lb)
            if clash:
                problems.append(f"{where}: {clash}")
                continue
            named[lb].append((node, mine))
            entries[node][lb] = adapter
    if problems:
        raise ConfigError("\n".join(f"{origin}: {p}" for p in dict.fromkeys(problems)))
    return ServeSetup(config, entries, known)


# -- the server --------------------------------------------------------------------------


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _read_token(node: str, entry: NodeEntry, environ: Mapping[str, str]) -> bytes:
    if entry.token_file is not None:
        try:
            token = entry.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"nodes.{node}.token_file: cannot read {entry.token_file}: {exc.strerror}"
            ) from exc
        source = str(entry.token_file)
    else:
        assert entry.token_env is not None
        token = environ.get(entry.token_env, "").strip()
        source = f"${entry.token_env}"
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"nodes.{node}: the token in {source} is missing or shorter than "
            f"{MIN_TOKEN_LENGTH} characters (make one with: openssl rand -hex 32)"
        )
    return _digest(token)


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class _Reply:
    status: int
    payload: dict[str, Any]
    retry_after: int = 0


def _refused(status: int, message: str, kind: str = "refused", retry_after: int = 0) -> _Reply:
    return _Reply(status, {"error": message, "kind": kind}, retry_after)


class RemoteServer:
    """The ``drainer serve`` HTTP server; see the module docstring."""

    def __init__(
        self,
        setup: ServeSetup,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = setup.config
        self._config = config
        self._clock = clock
        env = os.environ if environ is None else environ
        self._tokens = {node: _read_token(node, e, env) for node, e in config.nodes.items()}
        self._nobody = _digest(os.urandom(16).hex())  # compared against for unknown nodes
        self._lbs: dict[str, dict[str, LoadBalancer]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        for node, entries in setup.entries.items():
            self._lbs[node] = {}
            context = AdapterContext(node=node, state_dir=config.state_dir)
            for lb, entry in entries.items():
                made = setup.plugins[entry.type].create(entry, context)
                for instance in made:
                    served = lb if len(made) == 1 else f"{lb}/{instance.name}"
                    self._lbs[node][served] = instance
                    self._locks[(node, served)] = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._rate_lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        if config.tls is not None:
            context_ = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context_.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context_.load_cert_chain(str(config.tls.cert), str(config.tls.key))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"tls: cannot load {config.tls.cert}: {exc}") from exc
            self._ssl = context_
        self._running: ServerThread[_HTTPServer] | None = None

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        running = self._running
        if running is None:
            raise RuntimeError("the server is not started")
        host, port = str(running.server.server_address[0]), running.port
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self._ssl else 'http'}://{shown}:{port}"

    def start(self) -> RemoteServer:
        host, port = _split_listen(self._config.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            httpd = _HTTPServer((host, port), self, family)
        except OSError as exc:
            raise ConfigError(f"listen: cannot listen on {self._config.listen}: {exc}") from exc
        self._running = ServerThread(httpd, name="drainer-serve", poll_interval=0.2)
        log.info("serving %d nodes on %s", len(self._lbs), self.url)
        return self

    def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.stop(join_timeout=10)
        for lbs in self._lbs.values():
            for lb in lbs.values():
                lb.close()

    def __enter__(self) -> RemoteServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- one request --------------------------------------------------------------------

    def _allow(self, client: str) -> int:
        """0 if the client may go on, else the seconds it should wait."""
        limits = self._config.limits
        now = self._clock()
        with self._rate_lock:
            if len(self._buckets) > 4096:  # forget clients idle long enough to be full
                full = limits.burst / limits.rate
                self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < full}
            bucket = self._buckets.setdefault(client, _Bucket(float(limits.burst), now))
            bucket.tokens = min(limits.burst, bucket.tokens + (now - bucket.updated) * limits.rate)
            bucket.updated = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0
            return max(1, int((1 - bucket.tokens) / limits.rate + 0.999))

    def _authenticate(self, node: str, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        given = _digest(token.strip() if scheme.lower() == "bearer" else "")  # any case
        expected = self._tokens.get(node, self._nobody)
        return hmac.compare_digest(given, expected) and node in self._tokens and bool(token)

    def handle(
        self, method: str, path: str, *, node: str, authorization: str, body: bytes, client: str
    ) -> _Reply:
        """Answer one request that was read in full: ``node`` and ``authorization`` are
        the values of the ``X-Drainer-Node`` and ``Authorization`` headers ("" if absent)."""
        wait = self._allow(client)
        if wait:
            return _refused(429, "too many requests", "transient", retry_after=wait)
        if not self._authenticate(node, authorization):
            log.warning("refused a request from %s: unknown node or wrong token", client)
            return _refused(401, "unknown node or wrong token")
        parts = [unquote(p) for p in urlsplit(path).path.split("/") if p]
        if parts[:2] != ["v1", "load-balancers"] or len(parts) > 4:
            return _refused(404, f"no such path: {urlsplit(path).path}")
        mine = self._lbs[node]
        if len(parts) == 2:
            if method != "GET":
                return _refused(405, "use GET")
            return _Reply(200, {"node": node, "load_balancers": sorted(mine)})
        name = parts[2]
        if name not in mine:
            log.warning("refused node %s: not allowed on load balancer %r", node, name)
            return _refused(403, f"node {node} may not act on load balancer {name!r}")
        op = parts[3] if len(parts) == 4 else "state"
        if len(parts) == 4 and op not in ("drain", "take-out", "put-back", "preflight"):
            return _refused(404, f"no such operation: {op}")
        read = op in ("state", "preflight")
        if method != ("GET" if read else "POST"):
            return _refused(405, f"use {'GET' if read else 'POST'}")
        try:
            args = json.loads(body) if body.strip() else {}
        except ValueError:
            return _refused(400, "the body is not JSON")
        allowed = {"kill"} if op == "take-out" else set()
        if not isinstance(args, dict) or set(args) - allowed:
            keys = ", ".join(sorted(allowed)) or "none"
            return _refused(400, f"{op} takes a JSON object with these keys: {keys}")
        kill = args.get("kill", False)
        if not isinstance(kill, bool):
            return _refused(400, "kill must be true or false")
        return self._call(node, name, op, kill)

    def _call(self, node: str, name: str, op: str, kill: bool) -> _Reply:
        lb = self._lbs[node][name]
        try:
            with self._locks[(node, name)]:
                if op == "preflight":
                    checks = [
                        {"name": c.name, "ok": c.ok, "detail": c.detail} for c in preflight(lb)
                    ]
                    payload: dict[str, Any] = {"checks": checks}
                elif op == "state":
                    view = lb.state()
                    payload = {
                        "status": view.status.value,
                        "sessions": view.sessions,
                        "detail": view.detail,
                    }
                elif op == "drain":
                    lb.drain()
                    payload = {"ok": True}
                elif op == "take-out":
                    lb.take_out(kill=kill)
                    payload = {"ok": True}
                else:
                    payload = {"serving": lb.put_back()}
        except TransientAdapterError as exc:
            log.warning("node %s: %s %s: %s", node, op, name, exc)
            return _refused(503, str(exc), "transient")
        except (PermanentAdapterError, AdapterError) as exc:
            log.error("node %s: %s %s: %s", node, op, name, exc)
            return _refused(422, str(exc), "permanent")
        if op not in ("state", "preflight"):
            log.info("node %s: %s %s: done", node, op, name)
        return _Reply(200, payload)


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


class _HTTPServer(Server[RemoteServer]):
    # stop() waits for the calls in progress: each may be a transaction at the load
    # balancer, better finished than cut (a cut one is completed by the next call)
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], app: RemoteServer, family: int) -> None:
        self.address_family = family
        limits = app._config.limits
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
            if self.app._ssl is not None:
                request = self.app._ssl.wrap_socket(request, server_side=True)
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
    # nothing logged here: RemoteServer logs what matters, and never a header
    server: _HTTPServer
    server_version = "drainer"
    sys_version = ""

    def __init__(
        self, request: Any, client_address: Any, server: _HTTPServer, *, deadline: _Deadline
    ) -> None:
        self.deadline = deadline
        super().__init__(request, client_address, server)

    def _serve(self, method: str) -> None:
        limits = self.server.app._config.limits
        for name in (NODE_HEADER, "Authorization"):  # self.headers ignores the case
            if len(self.headers.get_all(name, [])) > 1:
                self._send(_refused(400, f"send one {name} header"))
                return
        if self.headers.get("Transfer-Encoding"):
            self._send(_refused(411, "send a Content-Length, not a chunked body"))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._send(_refused(400, "bad Content-Length"))
            return
        if length > limits.max_body:
            self._send(_refused(413, f"the body is over {limits.max_body} bytes"))
            return
        body = self.rfile.read(length)
        if not self.deadline.met():  # too slow: the connection is shut down, nothing is done
            self.close_connection = True
            return
        if len(body) < length:
            self._send(_refused(400, "the body is shorter than its Content-Length"))
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
            reply = _refused(500, "internal error (see the server's log)", "transient")
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
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
    plugins: Mapping[str, AdapterPlugin] | None = None,
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
