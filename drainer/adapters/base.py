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
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from drainer.model import LBStatus, LBView

__all__ = [
    "AdapterConfig",
    "AdapterContext",
    "AdapterPlugin",
    "LBStatus",
    "LBView",
    "LoadBalancer",
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
    in a way a retry cannot fix.
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

    def serve(self) -> None:
        """Start what the adapter serves while the daemon runs (agent mode); may do nothing."""
        ...

    def close(self) -> None:
        """Release sockets and threads; the node's state at the load balancer is kept."""
        ...


@dataclass(frozen=True)
class AdapterPlugin:
    """What the ``drainer.adapters`` entry-point group points at.

    ``create`` turns one validated ``load_balancers[i]`` entry into one or more
    load balancers: an entry that names several instances (an HAProxy pair) gives one
    ``LoadBalancer`` per instance, so each is drained, tracked and reported on its own.
    Instance names must be unique and stable across restarts: the state file keeps them.
    """

    config_model: type[AdapterConfig]
    create: Callable[[Any, AdapterContext], list[LoadBalancer]]
