"""The ``nginx-plus`` load balancer: the nginx Plus API changes a server at runtime.

    drain     PATCH /api/<v>/http/upstreams/<u>/servers/<id>  {"drain": true}
    take_out  the same with {"down": true}
    put_back  the same with {"down": false, "drain": false}
    state     GET .../servers/ (the server's id, down and drain flags) and
              GET /api/<v>/http/upstreams/<u> (the peer's ``state`` and ``active``)

The server is found by its address on every call, never by a remembered id: ids change
when servers are added or removed, and an adapter keeps nothing in memory that matters.
The state lives in nginx (the upstream's shared memory zone), so the daemon and the CLI
see the same thing; nginx Plus keeps it across a reload only with a ``state`` file in the
upstream, which is why the core re-asserts a drain that a reload forgot.

Draining: no new connections; sessions = the peer's ``active`` connections. The core
calls ``take_out`` once they reach 0 (or at its deadline). nginx Plus has no call that
closes a peer's connections, so ``take_out(kill=True)`` is ``down`` and nothing more.

Errors are translated once, here: nginx's error codes become a message a person can act
on (``MethodDisabled``: the API is read-only; ``UpstreamStatic``: no ``zone``), 5xx and
network failures are transient, the rest permanent.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, field_validator

from drainer._types import Duration
from drainer.adapters.base import AdapterConfig, AdapterContext, AdapterPlugin, LoadBalancer
from drainer.adapters.checks import Check, attempt
from drainer.errors import AdapterError, PermanentAdapterError, TransientAdapterError
from drainer.model import LBStatus, LBView

__all__ = ["PLUGIN", "NginxPlusConfig", "NginxPlusLoadBalancer"]

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


class NginxPlusConfig(AdapterConfig):
    type: Literal["nginx-plus"] = "nginx-plus"
    api: str  # the API location, e.g. http://127.0.0.1:8080/api
    api_version: int = Field(default=9, ge=2)  # "drain" exists since version 2
    upstream: str
    server: str  # this node's address as the API shows it in "server" (host:port)
    username: str | None = None  # HTTP Basic auth in front of the API, if any
    password_file: Path | None = None
    ca_file: Path | None = None  # trust this CA for an https API
    timeout: Duration = 5.0

    @field_validator("upstream")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a plain nginx upstream name")
        return value


class NginxPlusLoadBalancer(LoadBalancer):
    def __init__(
        self,
        config: NginxPlusConfig,
        *,
        name: str,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self._config = config
        self._base = f"{config.api.rstrip('/')}/{config.api_version}"
        self._upstream_path = f"/http/upstreams/{quote(config.upstream, safe='')}"
        verify: ssl.SSLContext | bool = True
        if config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_file))
        self._client = httpx.Client(
            timeout=config.timeout, verify=verify, transport=transport, trust_env=False
        )

    # -- HTTP ---------------------------------------------------------------------------

    def _auth(self) -> httpx.BasicAuth | None:
        if self._config.username is None:
            return None
        password = ""
        if self._config.password_file is not None:
            try:
                password = self._config.password_file.read_text().strip()
            except OSError as exc:
                raise PermanentAdapterError(
                    f"cannot read password_file {self._config.password_file}: {exc.strerror}"
                ) from exc
        return httpx.BasicAuth(self._config.username, password)

    def _call(self, method: str, path: str, body: dict[str, bool] | None = None) -> Any:
        url = f"{self._base}{path}"
        try:
            auth = self._auth()
            response = self._client.request(
                method, url, json=body, auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT
            )
        except httpx.HTTPError as exc:
            raise TransientAdapterError(f"nginx Plus API {url} unreachable: {exc}") from exc
        if response.status_code < 300:
            try:
                return response.json()
            except ValueError as exc:
                raise TransientAdapterError(
                    f"{method} {url} answered something else than JSON"
                ) from exc
        raise self._error(method, url, response)

    def _error(self, method: str, url: str, response: httpx.Response) -> AdapterError:
        status = response.status_code
        code, text = "", response.reason_phrase
        try:
            error = response.json()["error"]
            code, text = str(error.get("code", "")), str(error.get("text", text))
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        u, api = self._config.upstream, self._config.api
        explained = {
            "MethodDisabled": (
                f"the nginx Plus API at {api} is read-only: add 'api write=on;' to the "
                f"location that serves it (and allow only drainer to reach it), then reload nginx"
            ),
            "UpstreamStatic": (
                f"upstream {u} has no shared memory zone, so nginx Plus cannot change it at "
                f"runtime: add 'zone {u} 64k;' inside 'upstream {u} {{ }}', then reload nginx"
            ),
            "UpstreamNotFound": (
                f"nginx has no upstream {u}: set 'upstream' to the name of an upstream block "
                f"that has a zone"
            ),
            "UnknownVersion": (
                f"the API does not know version {self._config.api_version}: GET {api}/ lists "
                f"the versions it has; set api_version to one of them"
            ),
        }
        if code in explained:
            message = explained[code]
        elif status == 401:
            message = f"{api} asks for a login: set username and password_file"
        elif status == 403:
            message = f"{api} refused drainer's address: allow it in the API's location"
        else:
            message = f"{method} {url}: {status} {code or ''} {text}".rstrip()
        if status >= 500 or status == 429 or code == "UpstreamServerNotFound":
            # a server id can vanish between the lookup and the change: look it up again
            return TransientAdapterError(message)
        return PermanentAdapterError(message)

    # -- the server ---------------------------------------------------------------------

    def _find(self) -> dict[str, Any]:
        servers = self._call("GET", f"{self._upstream_path}/servers/")
        mine = [
            s for s in servers if isinstance(s, dict) and s.get("server") == self._config.server
        ]
        if len(mine) != 1:
            known = ", ".join(str(s.get("server")) for s in servers if isinstance(s, dict))
            what = "no server" if not mine else f"{len(mine)} servers"
            raise PermanentAdapterError(
                f"{what} {self._config.server} in upstream "
                f"{self._config.upstream} (it has: {known or 'none'})"
            )
        return mine[0]

    def _patch(self, change: dict[str, bool]) -> None:
        server = self._find()
        self._call("PATCH", f"{self._upstream_path}/servers/{int(server['id'])}", change)

    # -- LoadBalancer -------------------------------------------------------------------

    def state(self) -> LBView:
        server = self._find()
        upstream = self._call("GET", f"{self._upstream_path}/")
        peers = [p for p in upstream.get("peers", []) if p.get("id") == server["id"]]
        peer: dict[str, Any] = peers[0] if peers else {}
        active = int(peer.get("active", 0))
        state = str(peer.get("state", "unknown"))
        flags = [f for f in ("drain", "down") if server.get(f)]
        detail = (
            f"server {self._config.server} (id {server['id']}) in upstream "
            f"{self._config.upstream}: state {state}, {active} active"
            + (f", {' and '.join(flags)} set" if flags else "")
        )
        if server.get("down"):
            return LBView(LBStatus.OUT, active, detail)
        if server.get("drain"):
            return LBView(LBStatus.DRAINING, active, detail)
        return LBView(LBStatus.IN_SERVICE, active, detail)

    def drain(self) -> None:
        self._patch({"drain": True})

    def take_out(self, *, kill: bool) -> None:
        self._patch({"down": True})  # nginx Plus cannot close a peer's connections

    def put_back(self) -> bool:
        self._patch({"down": False, "drain": False})
        return True

    def preflight(self) -> list[Check]:
        """The API answers, the upstream holds the node's server, and the API is writable:
        an empty PATCH of that server changes nothing, and a read-only API refuses it
        (405 MethodDisabled) before it looks at the body."""
        found: list[dict[str, Any]] = []

        def server() -> str:
            found.append(self._find())
            where = f"upstream {self._config.upstream}"
            return f"server {self._config.server} (id {found[0]['id']}) in {where}"

        checks = [attempt(f"{self.name}: server", server)]
        if found:

            def writable() -> str:
                self._call("PATCH", f"{self._upstream_path}/servers/{int(found[0]['id'])}", {})
                return f"{self._config.api} accepts PATCH"

            checks.append(attempt(f"{self.name}: API writable", writable))
        return checks

    def close(self) -> None:
        self._client.close()


def create(config: NginxPlusConfig, context: AdapterContext) -> list[LoadBalancer]:
    name = config.name or f"nginx-plus-{config.upstream}"
    return [NginxPlusLoadBalancer(config, name=name)]


PLUGIN = AdapterPlugin(config_model=NginxPlusConfig, create=create, node_keys=("server",))
