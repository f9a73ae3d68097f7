"""The ``type: haproxy`` adapter: one LoadBalancer per HAProxy instance, via the runtime API.

Invariants:
- Nothing is remembered between calls: every call re-reads ``show servers state``, so
  discovery by address follows HAProxy's configuration and a reload (which forgets
  every state set through the API) is seen by the next call.
- ``drain()`` and ``take_out()`` never move a server backwards (a server in maint is
  not set to drain), so the core may re-assert them at any time.
- ``put_back()`` never lets a request reach the node before HAProxy's own health check
  has passed. Leaving maint (for ``ready`` *or* ``drain``) makes HAProxy 2.6 reset a
  checked server's health to ``rise``: it is UP at once, with no check run. So a
  checked server leaves maint for ``drain`` with ``health down`` on the same CLI line,
  and becomes ``ready`` on a later call, once the check has brought it back UP. A
  server without an enabled check goes straight to ``ready``: nothing could gate it.
- Instances are independent: an HA pair gives two LoadBalancers, and one unreachable
  instance raises ``TransientAdapterError`` naming it without touching the other.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from functools import partial
from typing import Literal, Self, TypeVar

from pydantic import Field, ValidationInfo, field_validator, model_validator

from drainer.adapters.base import (
    AdapterConfig,
    AdapterContext,
    AdapterPlugin,
    LBStatus,
    LBView,
    LoadBalancer,
)
from drainer.errors import ConfigError, PermanentAdapterError
from drainer.haproxy import (
    HAProxyClient,
    ServerState,
    StatRow,
    check_name,
    parse_address,
    parse_node_address,
    servers_at,
)

_T = TypeVar("_T")


class HAProxyConfig(AdapterConfig):
    """One ``load_balancers`` entry of ``type: haproxy``.

    The node is either ``backend`` + ``server`` (names in HAProxy) or ``address`` (its
    IP or IP:port as ``show servers state`` shows it; every backend holding it counts).
    """

    type: Literal["haproxy"]
    instances: list[str] = Field(min_length=1)  # unix:///path or tcp://host:port; a pair = 2
    backend: str | None = None
    server: str | None = None
    address: str | None = None
    connect_timeout: float = Field(default=2.0, gt=0)
    timeout: float = Field(default=5.0, gt=0)  # for the whole reply
    min_in_service: int = Field(default=1, ge=0)  # other servers left UP by a manual drain

    @field_validator("instances")
    @classmethod
    def _check_instances(cls, instances: list[str]) -> list[str]:
        for instance in instances:
            _as_value_error(parse_address, instance)
        if len(set(instances)) != len(instances):
            raise ValueError(f"instances are listed twice: {instances}")
        return instances

    @field_validator("backend", "server")
    @classmethod
    def _check_name(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is not None:
            _as_value_error(partial(check_name, str(info.field_name)), name)
        return name

    @field_validator("address")
    @classmethod
    def _check_address(cls, address: str | None) -> str | None:
        if address is not None:
            _as_value_error(parse_node_address, address)
        return address

    @model_validator(mode="after")
    def _one_way_to_name_the_node(self) -> Self:
        by_name = self.backend is not None or self.server is not None
        if self.address is not None and by_name:
            raise ValueError("set either `address` or `backend` + `server`, not both")
        if self.address is None and (self.backend is None or self.server is None):
            raise ValueError(
                "set `backend` and `server` (names in HAProxy) or `address` (the node's IP"
                " or IP:port)"
            )
        return self


def _as_value_error(parse: Callable[[str], _T], text: str) -> _T:
    """Run a drainer parser in a pydantic validator, which reports ValueError only."""
    try:
        return parse(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc


def in_service_count(
    states: Iterable[ServerState], backend: str, *, excluding: Collection[str] = ()
) -> int:
    """How many servers of ``backend`` get new connections, leaving out ``excluding``."""
    return sum(
        1 for s in states if s.backend == backend and s.server not in excluding and s.in_service
    )


def put_back_step(s: ServerState) -> Literal["recheck", "ready", "wait", "done"]:
    """What ``put_back()`` does next for one server; only "ready" and "done" finish it."""
    if s.forced_maint:  # leaving maint skips the check: gate it with `health down` first
        return "recheck" if s.checked else "ready"
    if s.forced_drain:  # drained: ready once HAProxy's check says UP (or there is none)
        return "ready" if s.up or not s.checked else "wait"
    if s.maint or s.drain:  # inherited from a tracked server: not ours to clear
        return "wait"
    return "done"


class HAProxyLoadBalancer:
    """The node's servers on one HAProxy instance."""

    def __init__(
        self, *, name: str, client: HAProxyClient, config: HAProxyConfig, node: str
    ) -> None:
        self.name = name
        self._client = client
        self._config = config
        self._node = node

    def state(self) -> LBView:
        mine = self._servers()
        rows = {(r.backend, r.server): r for r in self._client.stat(self._config.backend)}
        missing = StatRow(backend="", server="", status="?", scur=0, check_status="")
        pairs = [(s, rows.get((s.backend, s.server), missing)) for s in mine]
        if all(s.maint for s in mine):
            status = LBStatus.OUT
        elif all(s.maint or s.drain or r.status.startswith("DRAIN") for s, r in pairs):
            status = LBStatus.DRAINING
        else:
            status = LBStatus.IN_SERVICE
        detail = ", ".join(
            f"{s.backend}/{s.server} {r.status} scur={r.scur} check={r.check_status or '-'}"
            for s, r in pairs
        )
        return LBView(status=status, sessions=sum(r.scur for _, r in pairs), detail=detail)

    def drain(self) -> None:
        for s in self._servers():
            if not (s.forced_maint or s.forced_drain):
                self._client.set_state(s.backend, s.server, "drain")

    def take_out(self, *, kill: bool) -> None:
        mine = self._servers()
        for s in mine:
            if not s.forced_maint:
                self._client.set_state(s.backend, s.server, "maint")
        if kill:
            for s in mine:
                self._client.shutdown_sessions(s.backend, s.server)

    def put_back(self) -> bool:
        done = True
        for s in self._servers():
            step = put_back_step(s)
            if step == "recheck":
                self._client.set_state(s.backend, s.server, "drain", recheck=True)
            elif step == "ready":
                self._client.set_state(s.backend, s.server, "ready")
            done = done and step in ("ready", "done")
        return done

    def serve(self) -> None:
        pass

    def close(self) -> None:
        pass

    def check_manual_drain(self) -> str | None:
        """None if draining the node leaves ``min_in_service`` servers in each backend.

        Otherwise a refusal naming each backend that would fall short, and its counts.
        """
        states = self._client.servers_state(self._config.backend)
        mine = self._select(states)
        refusals = []
        for backend in sorted({s.backend for s in mine}):
            own = {s.server for s in mine if s.backend == backend}
            left = in_service_count(states, backend, excluding=own)
            if left < self._config.min_in_service:
                refusals.append(
                    f"backend {backend} would keep {left} other server(s) in service,"
                    f" min_in_service is {self._config.min_in_service}"
                )
        if not refusals:
            return None
        return f"refusing to drain {self._node} on {self.name}: " + "; ".join(refusals)

    def _servers(self) -> list[ServerState]:
        return self._select(self._client.servers_state(self._config.backend))

    def _select(self, states: list[ServerState]) -> list[ServerState]:
        config, where = self._config, self._client.address
        if config.address is not None:
            found = servers_at(states, config.address)
            if not found:
                raise PermanentAdapterError(
                    f"no server with address {config.address} in any backend on {where}",
                    instance=where,
                )
            return found
        found = [s for s in states if s.server == config.server]
        if not found:
            raise PermanentAdapterError(
                f"server {config.server} not found in backend {config.backend} on {where}",
                instance=where,
            )
        return found


def create(config: HAProxyConfig, context: AdapterContext) -> list[LoadBalancer]:
    """One LoadBalancer per instance, named ``<name or haproxy>@<address>``."""
    return [
        HAProxyLoadBalancer(
            name=f"{config.name or 'haproxy'}@{instance}",
            client=HAProxyClient(
                instance, connect_timeout=config.connect_timeout, timeout=config.timeout
            ),
            config=config,
            node=context.node,
        )
        for instance in config.instances
    ]


PLUGIN = AdapterPlugin(config_model=HAProxyConfig, create=create)
