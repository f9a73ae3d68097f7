"""A fake nginx Plus API (``ngx_http_api_module``), served over real HTTP.

nginx Plus is commercial and cannot run in the tests, so the ``nginx-plus`` adapter is
tested against this fake. It follows the module's documentation
(https://nginx.org/en/docs/http/ngx_http_api_module.html) for the part drainer uses,
field for field; it has not been compared with a running nginx Plus::

    with FakeNginxPlus(upstreams={"app": ["10.0.0.4:8080", "10.0.0.5:8080"]}) as fake:
        ...                                  # point the adapter at fake.url + "/api"
        fake.set_active("app", "10.0.0.4:8080", 3)

Endpoints (``/api/<version>/...``, versions 1 to 9)::

    GET    /api/                                   [1, 2, ..., 9]
    GET    /api/9/                                 root endpoints
    GET    /api/9/http/upstreams/                  {name: HTTP Upstream} (zone upstreams)
    GET    /api/9/http/upstreams/{u}/              HTTP Upstream: peers, keepalive, zombies, zone
    GET    /api/9/http/upstreams/{u}/servers/      [HTTP Upstream Server, ...]
    GET    /api/9/http/upstreams/{u}/servers/{id}  HTTP Upstream Server
    PATCH  /api/9/http/upstreams/{u}/servers/{id}  200, the server after the change

    HTTP Upstream Server (the configuration): id, server, weight, max_conns, max_fails,
        fail_timeout, slow_start, route, backup, down; drain when set (the documented
        examples show no drain field for a server that is not draining).
    HTTP Upstream peer (the status): id, server, name, backup, weight, state, active,
        requests, responses {1xx..5xx, codes, total}, sent, received, fails, unavail,
        health_checks {checks, fails, unhealthy}, downtime; max_conns when set;
        selected, header_time, response_time once the peer has served a request.
        state: "down" when down, "draining" when drain, else the health state
        ("up", "unavail", "checking", "unhealthy") that ``set_health`` gives it.

Errors are the documented Error object
``{"error": {"status", "text", "code"}, "request_id", "href"}``; the codes and statuses
are the documented ones, the texts are ours (the documentation does not give them)::

    404 UnknownVersion            a version outside 1..9
    404 PathNotFound              an unknown path
    405 MethodNotSupported        a method the path does not have
    405 MethodDisabled            PATCH/DELETE while the API is read-only (write=off);
                                  checked before the upstream is looked up
    404 UpstreamNotFound          no such upstream
    400 UpstreamStatic            the upstream has no zone (``static=[...]``)
    400 UpstreamBadServerId       an id that is not a number
    404 UpstreamServerNotFound    no server with this id
    415 JsonError                 a body that is not JSON
    400 UpstreamConfFormatError   not an object, unknown parameter, nested value,
                                  a bad down/drain/route value, id/backup/service changed
    400 UpstreamBad{Weight,MaxConns,MaxFails,FailTimeout,SlowStart}   bad values
    400 UpstreamServerImmutable   a changed ``server`` address

Not implemented: POST and DELETE of servers (they answer 405 MethodNotSupported, which
nginx Plus would not), stream upstreams, and every other endpoint. With
``basic_auth=(user, password)`` every request needs that HTTP Basic authorization and
gets nginx's HTML 401 page without it (as ``auth_basic`` in front of the API does).
All state sits behind one lock; nothing is logged.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from drainer._http import Http11Handler, Served, Server

__all__ = ["API_VERSIONS", "FakeNginxPlus"]

API_VERSIONS = tuple(range(1, 10))
HREF = "https://nginx.org/en/docs/http/ngx_http_api_module.html"
_ROOT = ["nginx", "processes", "connections", "slabs", "http", "stream", "resolvers", "ssl"]
_HTTP = ["requests", "server_zones", "location_zones", "caches", "limit_conns", "limit_reqs"]
_HTTP += ["keyvals", "upstreams"]
_HEALTH_STATES = ("up", "unavail", "checking", "unhealthy")
_TIME = re.compile(r"^\d+(ms|s|m|h)?$")
_UNAUTHORIZED = (
    b"<html>\r\n<head><title>401 Authorization Required</title></head>\r\n<body>\r\n"
    b"<center><h1>401 Authorization Required</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Peer:
    id: int
    server: str
    backup: bool = False
    weight: int = 1
    max_conns: int = 0
    max_fails: int = 1
    fail_timeout: str = "10s"
    slow_start: str = "0s"
    route: str = ""
    down: bool = False
    drain: bool = False
    health: str = "up"
    active: int = 0
    requests: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    selected: str = ""
    downstart: str = ""

    @property
    def state(self) -> str:
        if self.down:
            return "down"
        if self.drain:
            return "draining"
        return self.health

    def conf(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "server": self.server,
            "weight": self.weight,
            "max_conns": self.max_conns,
            "max_fails": self.max_fails,
            "fail_timeout": self.fail_timeout,
            "slow_start": self.slow_start,
            "route": self.route,
            "backup": self.backup,
            "down": self.down,
        }
        if self.drain:
            out["drain"] = True
        return out

    def status(self) -> dict[str, Any]:
        classes = {f"{n}xx": 0 for n in range(1, 6)}
        for code, count in self.codes.items():
            classes[f"{code[0]}xx"] += count
        out: dict[str, Any] = {
            "id": self.id,
            "server": self.server,
            "name": self.server,
            "backup": self.backup,
            "weight": self.weight,
            "state": self.state,
            "active": self.active,
        }
        if self.max_conns:
            out["max_conns"] = self.max_conns
        out["requests"] = self.requests
        if self.requests:
            out["header_time"] = 20
            out["response_time"] = 36
        out["responses"] = {**classes, "codes": dict(self.codes), "total": self.requests}
        out.update(sent=self.requests * 180, received=self.requests * 2300, fails=0, unavail=0)
        out["health_checks"] = {"checks": 0, "fails": 0, "unhealthy": 0}
        out["downtime"] = 0
        if self.downstart:
            out["downstart"] = self.downstart
        if self.selected:
            out["selected"] = self.selected
        return out


@dataclass
class _Reply:
    status: int
    payload: object = None
    html: bytes = b""


class _ApiError(Exception):
    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


class FakeNginxPlus(Served[Server["FakeNginxPlus"]]):
    """A fake nginx Plus API on ``url``; see the module docstring."""

    _thread_name = "fake-nginx-plus"

    def __init__(
        self,
        *,
        upstreams: dict[str, list[str]],
        static: Iterable[str] = (),
        write: bool = True,
        basic_auth: tuple[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._lock = threading.Lock()
        self._upstreams = {
            name: [_Peer(i, address) for i, address in enumerate(servers)]
            for name, servers in upstreams.items()
        }
        self._static = set(static)
        self._write = write
        self._auth = basic_auth
        self._host, self._port = host, port
        self.requests: list[tuple[str, str, object]] = []  # method, path, JSON body or None

    # Lifecycle: drainer._http.Served (start, stop, with, url; the API is under /api)

    def _server(self) -> Server[FakeNginxPlus]:
        return Server((self._host, self._port), _Handler, self)

    # Scripting what nginx would see

    def _peer(self, upstream: str, server: str) -> _Peer:
        matches = [p for p in self._upstreams[upstream] if p.server == server]
        if len(matches) != 1:
            raise ValueError(f"{len(matches)} servers {server} in upstream {upstream}")
        return matches[0]

    def set_active(self, upstream: str, server: str, active: int) -> None:
        """Connections open to the server now (they count in ``active``)."""
        with self._lock:
            peer = self._peer(upstream, server)
            if active > peer.active:
                peer.requests += active - peer.active
                peer.codes["200"] = peer.codes.get("200", 0) + active - peer.active
                peer.selected = _now()
            peer.active = active

    def set_health(self, upstream: str, server: str, state: str) -> None:
        """The health state the peer shows when neither down nor draining."""
        if state not in _HEALTH_STATES:
            raise ValueError(f"state must be one of {', '.join(_HEALTH_STATES)}")
        with self._lock:
            peer = self._peer(upstream, server)
            peer.health = state
            peer.downstart = "" if state == "up" else _now()

    def add_server(self, upstream: str, server: str) -> int:
        """A server added (as by POST); returns its id."""
        with self._lock:
            peers = self._upstreams[upstream]
            peers.append(_Peer(max((p.id for p in peers), default=-1) + 1, server))
            return peers[-1].id

    def conf(self, upstream: str, server: str) -> dict[str, Any]:
        with self._lock:
            return self._peer(upstream, server).conf()

    # The API

    def _handle(self, method: str, path: str, authorization: str | None, body: bytes) -> _Reply:
        with self._lock:
            parsed: object = None
            if body:
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = body.decode(errors="replace")
            self.requests.append((method, path, parsed))
            if self._auth is not None:
                token = base64.b64encode(":".join(self._auth).encode()).decode()
                if authorization != f"Basic {token}":
                    return _Reply(401, html=_UNAUTHORIZED)
            try:
                return self._route(method, urlsplit(path).path, body)
            except _ApiError as exc:
                return _Reply(
                    exc.status,
                    {
                        "error": {"status": exc.status, "text": exc.text, "code": exc.code},
                        "request_id": uuid.uuid4().hex,
                        "href": HREF,
                    },
                )

    def _route(self, method: str, path: str, body: bytes) -> _Reply:
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] != "api":
            raise _ApiError(404, "PathNotFound", "path not found")
        if len(parts) == 1:
            return self._only(method, ("GET",), list(API_VERSIONS))
        if not parts[1].isdigit() or int(parts[1]) not in API_VERSIONS:
            raise _ApiError(404, "UnknownVersion", "unknown version")
        rest = parts[2:]
        if not rest:
            return self._only(method, ("GET",), _ROOT)
        if rest == ["http"]:
            return self._only(method, ("GET",), _HTTP)
        if rest[:2] != ["http", "upstreams"]:
            raise _ApiError(404, "PathNotFound", "path not found")
        rest = rest[2:]
        if not rest:
            zones = {n: self._upstream(n) for n in self._upstreams if n not in self._static}
            return self._only(method, ("GET",), zones)
        name, rest = rest[0], rest[1:]
        if not rest:
            self._check_method(method, ("GET", "DELETE"))
            self._find(name)
            return _Reply(204) if method == "DELETE" else _Reply(200, self._upstream(name))
        if rest[0] != "servers" or len(rest) > 2:
            raise _ApiError(404, "PathNotFound", "path not found")
        if len(rest) == 1:
            self._check_method(method, ("GET",))
            return _Reply(200, [p.conf() for p in self._find(name)])
        self._check_method(method, ("GET", "PATCH"))
        peer = self._server_by_id(name, rest[1])
        if method == "GET":
            return _Reply(200, peer.conf())
        self._patch(peer, body)
        return _Reply(200, peer.conf())

    def _only(self, method: str, allowed: tuple[str, ...], payload: object) -> _Reply:
        self._check_method(method, allowed)
        return _Reply(200, payload)

    def _check_method(self, method: str, allowed: tuple[str, ...]) -> None:
        if method not in allowed:
            raise _ApiError(405, "MethodNotSupported", "method not supported")
        if method != "GET" and not self._write:
            raise _ApiError(405, "MethodDisabled", "method disabled")

    def _find(self, name: str) -> list[_Peer]:
        if name not in self._upstreams:
            raise _ApiError(404, "UpstreamNotFound", f'upstream "{name}" not found')
        if name in self._static:
            raise _ApiError(400, "UpstreamStatic", f'upstream "{name}" is static')
        return self._upstreams[name]

    def _upstream(self, name: str) -> dict[str, Any]:
        peers = self._upstreams[name]
        return {
            "peers": [p.status() for p in peers],
            "keepalive": 0,
            "zombies": 0,
            "zone": name,
        }

    def _server_by_id(self, name: str, raw: str) -> _Peer:
        peers = self._find(name)
        if not raw.isdigit():
            raise _ApiError(400, "UpstreamBadServerId", f'invalid server id "{raw}"')
        for peer in peers:
            if peer.id == int(raw):
                return peer
        raise _ApiError(404, "UpstreamServerNotFound", f'server with id "{raw}" does not exist')

    def _patch(self, peer: _Peer, body: bytes) -> None:
        try:
            change = json.loads(body)
        except ValueError:
            raise _ApiError(415, "JsonError", "json error") from None
        fmt = "UpstreamConfFormatError"
        if not isinstance(change, dict):
            raise _ApiError(400, fmt, "invalid json")
        known = set(peer.conf()) | {"drain", "service"}
        for key, value in change.items():
            if key not in known:
                raise _ApiError(400, fmt, f'unknown parameter "{key}"')
            if isinstance(value, dict | list):
                raise _ApiError(400, fmt, "nested object or list")
        updated = _Peer(**{**peer.__dict__})
        for key, value in change.items():
            _set(updated, key, value)
        peer.__dict__.update(updated.__dict__)


def _set(peer: _Peer, key: str, value: object) -> None:
    """Validate and apply one PATCH parameter, as nginx documents them."""
    fmt = "UpstreamConfFormatError"
    if key in ("id", "backup", "service"):
        if value != getattr(peer, key, None):
            raise _ApiError(400, fmt, f'parameter "{key}" cannot be changed')
    elif key in ("down", "drain"):
        if not isinstance(value, bool):
            raise _ApiError(400, fmt, f'invalid "{key}" value')
        setattr(peer, key, value)
    elif key == "server":
        if value != peer.server:
            raise _ApiError(400, "UpstreamServerImmutable", "server address is immutable")
    elif key == "route":
        if not isinstance(value, str):
            raise _ApiError(400, fmt, 'invalid "route" value')
        peer.route = value
    elif key in ("weight", "max_conns", "max_fails"):
        low = 1 if key == "weight" else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            code = {"weight": "Weight", "max_conns": "MaxConns", "max_fails": "MaxFails"}[key]
            raise _ApiError(400, f"UpstreamBad{code}", f'invalid "{key}" value')
        setattr(peer, key, value)
    else:  # fail_timeout, slow_start
        if not isinstance(value, str) or not _TIME.match(value):
            code = "FailTimeout" if key == "fail_timeout" else "SlowStart"
            raise _ApiError(400, f"UpstreamBad{code}", f'invalid "{key}" value')
        setattr(peer, key, value)


class _Handler(Http11Handler, methods=("GET", "PATCH", "POST", "DELETE", "PUT")):
    server: Server[FakeNginxPlus]
    server_version = "nginx"

    def _serve(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = self.rfile.read(max(0, min(length, 1 << 20)))
        reply = self.server.app._handle(method, self.path, self.headers.get("Authorization"), body)
        if reply.html:
            data, kind = reply.html, "text/html"
        elif reply.status == 204:
            data, kind = b"", ""
        else:
            data, kind = json.dumps(reply.payload).encode(), "application/json"
        self.send_response(reply.status)
        if kind:
            self.send_header("Content-Type", kind)
        if reply.status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="api"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
