"""What an event source is: something that reports maintenance events and nothing more.

A source translates a cloud's payload into a ``Listing`` of ``MaintenanceEvent`` values;
it never decides what to do with them (that is the core's job) and never filters them
by node: an entry it cannot read well enough to know whom it is for is handed on as
``Damaged``, never dropped.

A source imports the model and nothing of the application (the core, the engine, the
configuration, the adapters): ``.importlinter`` holds it to that.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from drainer._types import Duration, PositiveDuration
from drainer.model import Approve, Listing

__all__ = ["AnySourcePlugin", "EventSource", "SourceConfig", "SourcePlugin", "Watching"]


class SourceConfig(BaseModel):
    """Base of every source's configuration (the ``source:`` section): unknown keys are
    errors. A source adds what it needs to reach its cloud (Azure: ``endpoint``) in a
    subclass, its plugin's ``config_model``.

    Apart from ``timeout`` (one request to the cloud; the loop also counts on it to tell
    a slow poll from a stuck one), the keys here are not the source's and a source never
    reads them: they are the core's policy (``approve``, the ``gone_after`` windows) and
    the loop's pace (``poll_interval``) for events from this source. They sit in the
    source's section because their right values depend on how the cloud lists events
    (how often it can be asked, how long it may list nothing while it recovers), and
    every source has them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    poll_interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 2.0
    approve: Approve = Approve.SOLE
    # An event the node is out for is over once it stayed unlisted this long...
    gone_after: Duration = 5.0
    # ...or this long right after failed polls or a DocumentIncarnation that went back
    # (a re-enabled metadata service can list nothing for minutes).
    gone_after_doubt: Duration = 120.0

    # Whether the cloud lets the VM start an event early (Azure's StartRequests). A
    # source whose cloud cannot (AWS, Google Cloud: rescheduling there is an API call
    # with credentials, not a metadata request) says False: its ``approve`` is then
    # ``never`` and nothing else, so the core drains in time for NotBefore instead of
    # waiting for an approval that cannot come.
    can_approve: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _never_approved(cls, data: Any) -> Any:
        if not cls.can_approve and isinstance(data, dict) and "approve" not in data:
            return {**data, "approve": Approve.NEVER}
        return data

    @field_validator("approve")
    @classmethod
    def _approvable(cls, value: Approve) -> Approve:
        if not cls.can_approve and value is not Approve.NEVER:
            raise ValueError(
                f"this cloud cannot approve an event from the VM: drainer drains in time"
                f" for NotBefore instead; write never or leave the key out, not {value}"
            )
        return value


@runtime_checkable
class EventSource(Protocol):
    def events(self) -> Listing:
        """Every event the cloud lists now, with the document's incarnation. Raises
        SourceError (PayloadError when the answer is not an events document at all);
        an error is never an empty listing. When only part of it could be read, the
        listing says so (``partial``): an event it lacks may still be on."""
        ...

    def approve(self, event_id: str) -> None:
        """Let the event start now. Raises SourceError. Never called for a source whose
        configuration says ``can_approve = False`` (its ``approve`` is ``never``)."""
        ...

    def node_names(self) -> frozenset[str]:
        """The names this VM goes by in events' resources. Raises SourceError."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Watching(Protocol):
    """What a source adds when its cloud can tell it of a change as it happens (Google
    Cloud's hanging GET): the loop then polls at once instead of at its next interval.
    Optional; ``events()`` must still answer at any time without blocking for long."""

    def watch(self, changed: Callable[[], None]) -> None:
        """Start watching in the source's own threads, until ``close()``; call
        ``changed()`` (quick, from any thread) whenever ``events()`` may answer
        differently."""
        ...


C = TypeVar("C", bound=SourceConfig)


@dataclass(frozen=True)
class SourcePlugin(Generic[C]):
    """What the ``drainer.sources`` entry-point group points at.

    ``config_model`` validates the ``source`` section; ``create(config, stopping)`` gets
    it validated. ``stopping`` is set on shutdown, and retries must end when it is.
    """

    config_model: type[C]
    create: Callable[[C, threading.Event], EventSource]


# What the registry holds: a plugin of any configuration model.
AnySourcePlugin = SourcePlugin[Any]
