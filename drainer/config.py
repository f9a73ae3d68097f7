"""The configuration: one YAML file validated once into a typed tree.

Unknown keys are errors and every error names the file and the key path
(``drainer.yaml: load_balancers[0].backend: field required``). Defaults live here and
nowhere else; ``drainer config show`` prints them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from drainer._net import split_host_port
from drainer._types import Duration, HttpUrl, PositiveDuration, exactly_one
from drainer.adapters.base import AdapterConfig
from drainer.budget import EtcdConfig
from drainer.core import Policy, Reaction, Rule
from drainer.errors import ConfigError
from drainer.model import EventType
from drainer.notify.config import NotifyConfig
from drainer.plugins import adapter_names, adapter_plugins, source_plugin
from drainer.sources.base import SourceConfig

__all__ = [
    "Config",
    "DrainConfig",
    "HealthConfig",
    "HttpCheck",
    "MetricsConfig",
    "NodeConfig",
    "TcpCheck",
    "adapter_plugins",  # from drainer.plugins, imported from here by older callers
    "check_listen",
    "dump_config",
    "format_errors",
    "load_config",
    "parse_config",
]

DEFAULT_SOURCE = "azure"  # the source of a configuration that names none


def check_listen(listen: str) -> str:
    """A ``host:port`` to listen on, refused early rather than when the daemon binds."""
    split_host_port(listen)  # ValueError with a message for a person
    return listen


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Strict):
    name: str | None = None  # default: the VM's name from the metadata service
    boot_id_path: Path = Path("/proc/sys/kernel/random/boot_id")


class EventRule(_Strict):
    action: Reaction
    min_duration: Duration = 0.0


def _rule(value: Any) -> Any:
    return {"action": value} if isinstance(value, str) else value


RuleField = Annotated[EventRule, BeforeValidator(_rule)]


def _default_rules() -> dict[EventType, EventRule]:
    return {
        EventType.REBOOT: EventRule(action=Reaction.DRAIN),
        EventType.REDEPLOY: EventRule(action=Reaction.DRAIN),
        EventType.FREEZE: EventRule(action=Reaction.DRAIN, min_duration=10.0),
        EventType.PREEMPT: EventRule(action=Reaction.REMOVE),
        EventType.TERMINATE: EventRule(action=Reaction.REMOVE),
        EventType.REBALANCE: EventRule(action=Reaction.IGNORE),  # a hint, not a notice
        EventType.UNKNOWN: EventRule(action=Reaction.DRAIN),  # a type drainer does not know
    }


class DrainConfig(_Strict):
    timeout: PositiveDuration = 300.0
    margin: Duration = 30.0  # a drain that will not be approved ends this long before NotBefore
    kill_at_deadline: bool = False  # close what is left at the deadline
    # While the node should be out, how often its load balancers are checked (and the
    # drain re-asserted where a reload or restart forgot it) between metadata polls.
    recheck_interval: Duration = 0.25

    @field_validator("recheck_interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0 (as in 250ms)")
        return value


class HttpCheck(_Strict):
    url: HttpUrl
    expect_status: list[int] = [200]
    timeout: PositiveDuration = 2.0


class TcpCheck(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    timeout: PositiveDuration = 2.0


class HealthConfig(_Strict):
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    interval: PositiveDuration = 2.0
    successes: int = Field(default=3, ge=1)
    deadline: PositiveDuration = 2700.0  # a forced host maintenance can keep a VM down ~30 min

    @model_validator(mode="after")
    def _one_check(self) -> HealthConfig:
        exactly_one(self, "http", "tcp")
        return self


class MetricsConfig(_Strict):
    listen: str | None = "127.0.0.1:9464"  # null turns the endpoint off

    @field_validator("listen")
    @classmethod
    def _listen(cls, listen: str | None) -> str | None:
        return None if listen is None else check_listen(listen)


_NODE_ID = re.compile(r"[A-Za-z0-9._:@-]{1,200}")
MAX_SETTLE = 5.0  # under the 10 s after which a sidecar without a turn is stale
DEFAULT_SETTLE = 1.0


class BudgetConfig(_Strict):
    """The fleet budget: at most ``max_out`` servers of each pool out of service at once.
    A voluntary drain waits for a slot (never past its latest start); ``pools`` default to
    the load balancers' backends (HAProxy ``backend``, else the load balancer's name)."""

    engine: Literal["local", "etcd"] = "local"
    max_out: int | str  # a count (5) or a share of the pool ("20%", at least one server)
    pools: list[str] | None = None
    # This node in the budget (its holder keys and lease ids), unique across the fleet:
    # default the VM's name, which Azure and Google Cloud repeat across resource groups,
    # subscriptions and projects (AWS's instance id is unique already).
    node_id: str | None = None
    # engine local: a node that finds room pauses a random part of this and looks again
    # (default 1s), so that of nodes whose events came together the first to go shows as
    # out to the others; it holds the daemon's turn meanwhile
    settle: Duration | None = None
    etcd: EtcdConfig | None = None

    @field_validator("max_out")
    @classmethod
    def _max_out(cls, value: int | str) -> int | str:
        text = str(value).strip()
        if text.endswith("%"):
            number = text[:-1].strip()
            if not number.replace(".", "", 1).isdigit() or not 0 < float(number) <= 100:
                raise ValueError(f"a share must be between 0% and 100%, not {value!r}")
            return text
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"must be a count of at least 1 or a share like 20%, not {value!r}")
        return int(text)

    @field_validator("pools")
    @classmethod
    def _names(cls, pools: list[str] | None) -> list[str] | None:
        for name in pools or []:
            if not name or "/" in name:
                raise ValueError(f"a pool name must be non-empty and without '/': {name!r}")
        return pools

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, node_id: str | None) -> str | None:
        if node_id is not None and not _NODE_ID.fullmatch(node_id):
            raise ValueError(
                "must be 1 to 200 letters, digits and . _ : @ - (it names an etcd key;"
                f" for Azure's resourceId use the vmId, or <resourceGroup>.<name>), not {node_id!r}"
            )
        return node_id

    @model_validator(mode="after")
    def _engine_settings(self) -> BudgetConfig:
        if self.engine == "etcd" and self.etcd is None:
            raise ValueError("engine etcd needs an `etcd:` section with its `endpoints`")
        if self.engine == "etcd" and isinstance(self.max_out, str):
            raise ValueError(
                "engine etcd takes max_out as a count for now (a share needs engine local)"
            )
        if self.engine == "local" and self.etcd is not None:
            raise ValueError("an `etcd:` section needs engine: etcd")
        if self.engine == "local" and self.node_id is not None:
            raise ValueError("node_id names the node's keys in etcd: engine local has none")
        if self.engine == "etcd" and self.settle is not None:
            raise ValueError("settle is for engine local: etcd admits safely under races")
        if self.settle is not None and self.settle > MAX_SETTLE:
            raise ValueError(
                f"settle must be at most {MAX_SETTLE:g}s (the pause holds the daemon's turn),"
                f" not {self.settle:g}s"
            )
        return self


class Config(_Strict):
    node: NodeConfig = NodeConfig()
    state_dir: Path = Path("/var/lib/drainer")
    # validated by the source plugin's config_model (parse_config), so: no default here
    source: SerializeAsAny[SourceConfig]
    events: dict[EventType, RuleField] = Field(default_factory=_default_rules)
    drain: DrainConfig = DrainConfig()
    health: HealthConfig
    load_balancers: list[SerializeAsAny[AdapterConfig]] = Field(min_length=1)
    metrics: MetricsConfig = MetricsConfig()
    notify: NotifyConfig = NotifyConfig()  # webhooks (drainer.notify)
    budget: BudgetConfig | None = None
    log_format: Literal["text", "json"] = "text"

    def policy(self, *, node_names: frozenset[str], lbs: tuple[str, ...]) -> Policy:
        rules = {**_default_rules(), **self.events}
        return Policy(
            node_names=node_names,
            lbs=lbs,
            rules={k: Rule(v.action, v.min_duration) for k, v in rules.items()},
            approve=self.source.approve,
            drain_timeout=self.drain.timeout,
            drain_margin=self.drain.margin,
            kill_at_deadline=self.drain.kill_at_deadline,
            health_interval=self.health.interval,
            health_successes=self.health.successes,
            health_deadline=self.health.deadline,
            gone_after=self.source.gone_after,
            gone_after_doubt=self.source.gone_after_doubt,
            budget=self.budget is not None,
        )

    def pools(self) -> list[str]:
        """The budget's pools: as configured, or each load balancer's backend."""
        if self.budget is not None and self.budget.pools:
            return list(self.budget.pools)
        names = [getattr(lb, "backend", None) or lb.name or lb.type for lb in self.load_balancers]
        return sorted(set(names))


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def format_errors(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in (*prefix, *err["loc"]) if not str(p).startswith("function-"))
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "field required"
        elif err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        lines.append(f"{_path(loc) or '(top level)'}: {msg}")
    return lines


def parse_config(raw: Any, *, origin: str = "<config>") -> Config:
    """Validate an already-loaded YAML document; raise ConfigError naming every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the configuration must be a mapping of keys")
    problems: list[str] = []
    section = raw.get("source", {})
    if isinstance(section, dict):
        raw = {k: v for k, v in raw.items() if k != "source"}
        section = {"type": DEFAULT_SOURCE, **section}
        try:
            plugin = source_plugin(section["type"])
        except ConfigError as exc:
            # the other keys are still checked, as the default source's, so that one
            # run names every problem
            problems.append(str(exc))
            section["type"] = DEFAULT_SOURCE
            plugin = source_plugin(DEFAULT_SOURCE)
        try:
            raw["source"] = plugin.config_model.model_validate(section)
        except ValidationError as exc:
            problems += format_errors(exc, ("source",))
    lbs: list[AdapterConfig] = []
    entries = raw.get("load_balancers")
    if isinstance(entries, list):
        # only the configured adapters are imported and their models built
        types = [item.get("type") for item in entries if isinstance(item, dict)]
        plugins = adapter_plugins(t for t in types if isinstance(t, str))
        for i, item in enumerate(entries):
            kind = item.get("type") if isinstance(item, dict) else None
            if not isinstance(item, dict):
                problems.append(f"load_balancers[{i}]: must be a mapping")
            elif kind not in plugins:
                known = ", ".join(adapter_names())
                problems.append(f"load_balancers[{i}].type: unknown type {kind!r} (known: {known})")
            else:
                try:
                    lbs.append(plugins[kind].config_model.model_validate(item))
                except ValidationError as exc:
                    problems += format_errors(exc, ("load_balancers", i))
        raw = {**raw, "load_balancers": lbs}
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        # a section that failed above is missing: its own message says why
        failed = tuple(
            k for k in ("load_balancers", "source") if any(p.startswith(k) for p in problems)
        )
        problems += [m for m in format_errors(exc) if not (failed and m.startswith(failed))]
        config = None
    if problems or config is None:
        raise ConfigError("\n".join(f"{origin}: {p}" for p in problems))
    names = [lb.name for lb in config.load_balancers if lb.name]
    if len(names) != len(set(names)):
        raise ConfigError(f"{origin}: load_balancers: names must be unique")
    return config


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start]:#04x}); "
            "save the file as UTF-8"
        ) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_config(raw, origin=str(path))


def dump_config(config: Config) -> str:
    data = config.model_dump(mode="json")
    return str(yaml.safe_dump(data, sort_keys=False))
