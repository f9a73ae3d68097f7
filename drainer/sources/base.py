"""What an event source is: something that reports maintenance events and nothing more.

A source translates a cloud's payload into ``MaintenanceEvent`` values; it never
decides what to do with them (that is the core's job) and never filters them by node.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from drainer.model import MaintenanceEvent


@runtime_checkable
class EventSource(Protocol):
    def events(self) -> tuple[MaintenanceEvent, ...]:
        """Every event the cloud lists now. Raises SourceError (PayloadError when the
        answer is off-schema); an error is never an empty list."""
        ...

    def approve(self, event_id: str) -> None:
        """Let the event start now. Raises SourceError."""
        ...

    def node_names(self) -> frozenset[str]:
        """The names this VM goes by in events' resources. Raises SourceError."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SourcePlugin:
    """What the ``drainer.sources`` entry-point group points at.

    ``create(config, stopping)``: ``config`` is the validated ``source`` section;
    ``stopping`` is set on shutdown, and retries must end when it is.
    """

    create: Callable[[Any, threading.Event], EventSource]
