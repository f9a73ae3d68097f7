"""A drain budget: at most N (or P %) of a pool out of service at once, fleet-wide.

A *pool* is a set of servers that share capacity (by default, a backend of the node's
load balancers). A node that leaves voluntarily first takes a *slot* in every pool it
belongs to, all or nothing, and gives them back once it is in service again; the slot
covers drain, maintenance, reboot, health check and put-back.

The rules every engine keeps:
- an engine that cannot answer raises ``BudgetError``: an error, a timeout or a lost
  quorum is never a free slot;
- admission is all-or-nothing across pools and safe under races: many contenders for
  few slots never over-admit;
- a forced admission (the platform takes the VM anyway) is recorded as over budget,
  never refused.

``drainer.budget.etcd`` keeps the slots on etcd, with leases that outlive a reboot.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drainer._types import Duration, HttpUrl, PositiveDuration
from drainer.errors import DrainerError

__all__ = [
    "Admission",
    "BudgetError",
    "EtcdConfig",
    "Holder",
    "Pool",
    "PoolCount",
    "Slots",
    "budget_moved",
    "max_out",
]


class BudgetError(DrainerError):
    """The budget's engine could not answer (unreachable, timed out, no quorum, refused).
    Never read as a free slot: voluntary steps wait."""


_PERCENT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")


def max_out(spec: int | str, size: int) -> int:
    """How many of a pool of ``size`` servers may be out: ``spec`` is a count (``5``)
    or a percentage of the pool (``"20%"``, at least one server)."""
    if isinstance(spec, int):
        return spec
    match = _PERCENT.fullmatch(spec)
    if match is None:
        return int(spec)  # the configuration validated it: a count written as text
    return max(1, math.floor(float(match[1]) * size / 100))


@dataclass(frozen=True)
class Pool:
    """A pool this node belongs to, with how many of its servers may be out at once."""

    name: str
    max_out: int


@dataclass(frozen=True)
class Holder:
    """One node holding a slot of one pool, as the engine stores it."""

    pool: str
    node: str
    kind: str = "voluntary"  # voluntary | involuntary | manual
    since: float = 0.0
    event_id: str = ""
    event_type: str = ""
    over_budget: bool = False
    lease: str = ""


@dataclass(frozen=True)
class PoolCount:
    """How many servers of a pool were out, of the ``max_out`` allowed, as one read of
    an engine without holders (``local``: the load balancers) showed them."""

    pool: str
    out: int
    max_out: int


@dataclass(frozen=True)
class Admission:
    """The answer to a request for slots: ``admitted`` with the ``lease`` that holds
    them, or not, with the pools that had no free slot and each pool's holders (etcd)
    or counts (local)."""

    admitted: bool
    lease: str = ""
    full: tuple[str, ...] = ()
    holders: tuple[Holder, ...] = ()
    counts: tuple[PoolCount, ...] = ()


class Slots(Protocol):
    """One node's slots, as the engine uses them (``EtcdSlots``)."""

    pools: tuple[Pool, ...]
    # where the slots live (engine, prefix, node id) and the cluster's members: a reload
    # that changes ``where``, or lists members none of which it listed before, gives back
    # what the old one holds. Members listed otherwise (reordered, one more or fewer) are
    # the same cluster, and pools are keys of the same node: its slot is kept, or a node
    # out would free it for a moment (the next keep-alive takes what new pools miss).
    where: tuple[str, ...]
    members: frozenset[str]

    def take(
        self, event_id: str, event_type: str, *, force: bool, within: float | None = None
    ) -> Admission:
        """Slots for the event, or none; ``within``: seconds until the drain goes anyway
        (a pause before answering never runs past it)."""
        ...

    def holds(self) -> bool: ...
    def abandon(self, event_id: str, event_type: str) -> int:
        """Give back what ``take(event_id, event_type)`` may have written though its answer
        never came (keys still on that take's lease only): how many."""
        ...

    def keepalive(self, lease: str) -> bool: ...
    def release(self, lease: str) -> None: ...
    def close(self) -> None: ...


def budget_moved(old: Slots | None, new: Slots | None) -> bool:
    """Whether a reload from ``old`` to ``new`` moves the slots elsewhere (see
    ``Slots.where``): what ``old`` holds must then be given back."""
    if old is None or new is None:
        return old is not new
    if old.where != new.where:
        return True
    return bool(old.members and new.members) and old.members.isdisjoint(new.members)


class EtcdConfig(BaseModel):
    """The ``budget.etcd`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: list[HttpUrl] = Field(min_length=1)
    prefix: str = "/drainer/v1/"
    # The slot's lease: long enough for drain, maintenance, boot and health check.
    lease_ttl: PositiveDuration = 1800.0
    keepalive_interval: PositiveDuration = 10.0
    timeout: PositiveDuration = 2.0
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # a voluntary step re-asks this often while it waits (a node out, to register its
    # slot, while etcd does not answer)
    retry_after: Duration = 2.0

    @field_validator("prefix")
    @classmethod
    def _slash(cls, prefix: str) -> str:
        if not prefix.startswith("/"):
            raise ValueError("must start with / (e.g. /drainer/v1/)")
        return prefix if prefix.endswith("/") else prefix + "/"

    @model_validator(mode="after")
    def _consistent(self) -> EtcdConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (the client certificate)")
        if self.keepalive_interval * 2 > self.lease_ttl:
            raise ValueError(
                f"keepalive_interval ({self.keepalive_interval:g}s) must be at most half of"
                f" lease_ttl ({self.lease_ttl:g}s), or the lease lapses between renewals"
            )
        return self
