"""What an event source is: something that reports maintenance events and nothing more.

A source translates a cloud's payload into a ``Listing`` of ``MaintenanceEvent`` values;
it never decides what to do with them (that is the core's job) and never filters them
by node: an entry it cannot read well enough to know whom it is for is handed on as
``Damaged``, never dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from drainer.model import Listing


@runtime_checkable
class EventSource(Protocol):
    def events(self) -> Listing:
        """Every event the cloud lists now, with the document's incarnation. Raises
        SourceError (PayloadError when the answer is not an events document at all);
        an error is never an empty listing."""
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
