"""What a load-balancer adapter is: a few idempotent calls on one load balancer.

drainer calls an adapter again and again with the same intent (re-asserting a drain
after a reload, resuming after ``kill -9``), so every call must be safe to repeat.
An adapter keeps no state that matters in memory: whatever it must remember lives at
the load balancer itself or in a file under the state directory, so the daemon and
the CLI (two processes) see the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict

from drainer.adapters.checks import Check, answer, attempt, preflight
from drainer.model import LBStatus, LBView, PoolView

__all__ = [
    "AdapterConfig",
    "AdapterContext",
    "AdapterPlugin",
    "AnyAdapterPlugin",
    "Check",
    "LBStatus",
    "LBView",
    "LoadBalancer",
    "attempt",
    "preflight",
]


@dataclass(frozen=True)
class AdapterContext:
    """What every adapter may need to know about where it runs."""

    node: str  # this VM's name
    state_dir: Path  # where an adapter may keep a file of its own


class AdapterConfig(BaseModel):
    """Base of every adapter's configuration: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    name: str | None = None  # how status, logs and the state file call this instance


@runtime_checkable
class LoadBalancer(Protocol):
    """One load balancer in front of this node.

    Every method raises ``TransientAdapterError`` when the load balancer cannot be
    reached (the call may be repeated) and ``PermanentAdapterError`` when it refused
    in a way a retry cannot fix. An error's message need not name the load balancer:
    the engine puts its name (and the verb) in front.

    An adapter that subclasses ``LoadBalancer`` writes ``state``, ``drain``,
    ``take_out`` and ``put_back``, and inherits the rest: ``preflight`` reads the state,
    ``serve`` and ``close`` do nothing, ``check_manual_drain`` refuses nothing,
    ``start_checks`` starts nothing.
    """

    name: str

    def state(self) -> LBView:
        """Read the node's state and open sessions at the load balancer."""
        ...

    def drain(self) -> None:
        """Stop new connections to the node; existing ones may finish."""
        ...

    def take_out(self, *, kill: bool) -> None:
        """Take the node fully out (maint/down); with ``kill``, close what is left."""
        ...

    def put_back(self) -> bool:
        """Move the node towards service; True once it is serving again.

        May take several calls: an adapter that must wait for the load balancer's own
        health check returns False until then.
        """
        ...

    def start_checks(self) -> bool:
        """While the node recovers out of the pool: let the load balancer's own health
        check of the node run now, alongside drainer's, so that ``put_back`` need not
        wait for it afterwards; the node must still get no request. Called again and
        again while the recovery lasts (idempotent). True when the check runs and the
        node shows as ``DRAINING`` meanwhile (drainer then does not take it out again);
        False when nothing was started (by default: the check, if any, starts with
        ``put_back``)."""
        return False

    def preflight(self) -> list[Check]:
        """Check, without changing anything, that every later call can work: the load
        balancer answers, the node is there, drainer has the rights it needs. Returns one
        ``Check`` per thing checked and raises nothing (a failure is a ``Check`` with
        ``ok=False``). Call it through ``preflight(lb)``, which also serves adapters
        written before this method existed. By default: a read of the state.
        """
        return [attempt(f"{self.name}: answers", lambda: answer(self.state()))]

    def serve(self) -> None:
        """Start what the adapter serves while the daemon runs (agent mode); may do nothing."""
        return

    def close(self) -> None:
        """Release sockets and threads; the node's state at the load balancer is kept."""
        return

    def pools(self) -> list[PoolView]:
        """The pools the node's server belongs to, with their size and how many other
        servers serve: what the ``local`` budget counts. Empty when the adapter cannot
        tell (by default)."""
        return []

    def check_manual_drain(self) -> str | None:
        """Why ``drainer drain`` (asked by a person, not a maintenance) should be refused,
        e.g. it would leave a backend with too few servers; None to allow it. A maintenance
        drains regardless (the VM goes down anyway) and only logs the reason."""
        return None


C = TypeVar("C", bound=AdapterConfig)


@dataclass(frozen=True)
class AdapterPlugin(Generic[C]):
    """What the ``drainer.adapters`` entry-point group points at.

    ``create`` turns one entry validated by ``config_model`` into one or more load
    balancers: an entry that names several instances (an HAProxy pair) gives one
    ``LoadBalancer`` per instance, so each is drained, tracked and reported on its own.
    Instance names must be unique and stable across restarts: the state file keeps them.

    ``node_keys``: the keys of ``config_model`` that name one node's server (an nginx
    ``server`` line, an HAProxy ``backend`` + ``server`` or ``address``). They are the
    only keys a node entry of ``drainer serve`` may set; without them the adapter cannot
    be served. ``same_server`` says whether two entries that set the same ``node_keys``
    name the same server (default: equal values), so that no two nodes get one server.
    """

    config_model: type[C]
    create: Callable[[C, AdapterContext], list[LoadBalancer]]
    node_keys: tuple[str, ...] = ()
    same_server: Callable[[C, C], bool] | None = None

    def is_same_server(self, one: AdapterConfig, other: AdapterConfig) -> bool:
        """``same_server`` for two entries validated by ``config_model``."""
        if not (isinstance(one, self.config_model) and isinstance(other, self.config_model)):
            raise TypeError(f"not {self.config_model.__name__} entries: {one!r}, {other!r}")
        if self.same_server is not None:
            return self.same_server(one, other)
        return all(getattr(one, key) == getattr(other, key) for key in self.node_keys)


# What the registry holds: a plugin of any configuration model.
AnyAdapterPlugin = AdapterPlugin[Any]
