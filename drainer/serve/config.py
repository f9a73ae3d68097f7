"""``drainer serve``'s configuration: the file, and each node's own adapter entries.

A node entry may set only the keys its adapter's plugin declares as naming a node's server
(``AdapterPlugin.node_keys``); every other key comes from ``load_balancers``. Two nodes of
one load balancer never name the same server. Errors name the file and every key path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drainer._http import is_loopback
from drainer._net import split_host_port
from drainer._types import Duration, exactly_one
from drainer.adapters.base import AdapterConfig, AnyAdapterPlugin
from drainer.config import format_errors
from drainer.errors import ConfigError
from drainer.plugins import adapter_plugins

__all__ = [
    "LimitsConfig",
    "NodeEntry",
    "ServeConfig",
    "ServeSetup",
    "TlsConfig",
    "load_serve_config",
    "parse_serve_config",
    "split_listen",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsConfig(_Strict):
    cert: Path
    key: Path


class LimitsConfig(_Strict):
    max_body: int = Field(default=1024, ge=64)  # bytes
    # requests per second per node (its token), and wrong tokens per client address
    rate: float = Field(default=5.0, gt=0)
    burst: int = Field(default=20, ge=1)
    # open at once; each sidecar keeps one open between its polls (keep-alive)
    max_connections: int = Field(default=4096, ge=1)
    # from one client address before a request of theirs has shown a node's token: a
    # fleet behind one NAT address is not limited by it once its nodes are known
    max_connections_per_client: int = Field(default=1024, ge=1)
    timeout: Duration = 10.0  # for the TLS handshake, then for each request, whole
    idle: Duration = 60.0  # a connection without a request for this long is closed


class NodeEntry(_Strict):
    token_file: Path | None = None
    token_env: str | None = None
    # load balancer name -> the keys that make its entry this node's (e.g. {server: ...})
    servers: dict[str, dict[str, Any]] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_token(self) -> NodeEntry:
        exactly_one(self, "token_file", "token_env")
        return self


class ServeConfig(_Strict):
    listen: str = "127.0.0.1:9470"
    tls: TlsConfig | None = None
    allow_plaintext: bool = False  # a non-loopback listen address without TLS
    state_dir: Path = Path("/var/lib/drainer")
    load_balancers: dict[str, dict[str, Any]] = Field(min_length=1)  # name -> adapter entry
    nodes: dict[str, NodeEntry] = Field(min_length=1)
    limits: LimitsConfig = LimitsConfig()
    # One read of a load balancer answers every node's state for this long, so N
    # sidecars polling cost one read per interval; a write (drain, take-out, put-back)
    # ends it at once. 0: every request reads. Used by adapters that can share a read
    # (HAProxy: one `show stat` of the backend for all its nodes).
    shared_read: Duration = 0.5

    @field_validator("listen")
    @classmethod
    def _listen(cls, listen: str) -> str:
        split_listen(listen)  # ValueError names what is wrong
        return listen

    @model_validator(mode="after")
    def _safe_listen(self) -> ServeConfig:
        host, _ = split_listen(self.listen)
        if self.tls is None and not self.allow_plaintext and not is_loopback(host):
            raise ValueError(
                f"listen: {host} is not a loopback address: configure tls (or "
                f"allow_plaintext: true if another layer encrypts the traffic)"
            )
        return self


def split_listen(listen: str) -> tuple[str, int]:
    head, _, port = listen.strip().rpartition(":")
    if port == "0":  # any free port (tests, the lab): the host is checked all the same
        return split_host_port(f"{head}:1", default_host="0.0.0.0")[0], 0
    return split_host_port(listen, default_host="0.0.0.0")


def _keys_set(adapter: AdapterConfig, keys: tuple[str, ...]) -> tuple[str, ...]:
    """Which of ``keys`` an entry sets, e.g. ("backend", "server") or ("address",)."""
    return tuple(key for key in keys if getattr(adapter, key) is not None) or keys


def _clash(
    plugin: AnyAdapterPlugin,
    mine: AdapterConfig,
    named: list[tuple[str, AdapterConfig]],
    lb: str,
) -> str:
    """Why ``mine`` may not join the servers other nodes of ``lb`` have; "" if it may."""
    my_keys = _keys_set(mine, plugin.node_keys)
    for other, theirs in named:
        their_keys = _keys_set(theirs, plugin.node_keys)
        if their_keys != my_keys:
            return (
                f"names its server by {' + '.join(my_keys)} and nodes.{other}.servers.{lb} "
                f"by {' + '.join(their_keys)}: name every node's server the same way, so "
                f"that no two can be the same"
            )
        if plugin.is_same_server(mine, theirs):
            return f"the same server as nodes.{other}.servers.{lb}"
    return ""


@dataclass(frozen=True)
class ServeSetup:
    """A validated ``drainer serve`` configuration: each node's own adapter entries."""

    config: ServeConfig
    entries: dict[str, dict[str, AdapterConfig]]  # node -> load balancer name -> entry
    plugins: dict[str, AnyAdapterPlugin]


def load_serve_config(
    path: Path, *, plugins: Mapping[str, AnyAdapterPlugin] | None = None
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
    raw: Any,
    *,
    origin: str = "<serve config>",
    plugins: Mapping[str, AnyAdapterPlugin] | None = None,
) -> ServeSetup:
    known = dict(adapter_plugins() if plugins is None else plugins)
    try:
        config = ServeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{origin}: {p}" for p in format_errors(exc))) from exc
    problems: list[str] = []
    entries: dict[str, dict[str, AdapterConfig]] = {}
    named: dict[str, list[tuple[str, AdapterConfig]]] = {}  # lb -> (node, its server) so far
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
            plugin = known[str(kind)]
            allowed = plugin.node_keys
            if not allowed:
                servable = ", ".join(sorted(k for k, p in known.items() if p.node_keys))
                problems.append(
                    f"load_balancers.{lb}.type: drainer serve cannot serve type {kind!r}: its "
                    f"plugin declares no node_keys (the keys that name a node's server); "
                    f"these types can be served: {servable}"
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
                adapter = plugin.config_model.model_validate(merged)
            except ValidationError as exc:
                problems += format_errors(exc, ("nodes", node, "servers", lb))
                continue
            clash = _clash(plugin, adapter, named.setdefault(lb, []), lb)
            if clash:
                problems.append(f"{where}: {clash}")
                continue
            named[lb].append((node, adapter))
            entries[node][lb] = adapter
    if problems:
        raise ConfigError("\n".join(f"{origin}: {p}" for p in dict.fromkeys(problems)))
    return ServeSetup(config, entries, known)
