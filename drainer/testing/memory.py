"""An event source and a load balancer held in memory, for tests of the engine.

Each implements its protocol (``drainer.sources.base.EventSource``,
``drainer.adapters.base.LoadBalancer``), records every call in ``calls`` and does only
what the test sets: no thread, no file, no clock. A test lists events with
``MemorySource.publish(...)``, finishes a drain with ``MemoryLoadBalancer.sessions = 0`` and
makes a call fail with ``fail["drain"] = PermanentAdapterError("...")`` (``"*"``: every
call).
"""

from __future__ import annotations

from drainer.adapters.base import Check, LoadBalancer
from drainer.errors import AdapterError, SourceError
from drainer.model import (
    Damaged,
    EventStatus,
    EventType,
    LBStatus,
    LBView,
    Listing,
    MaintenanceEvent,
)


def maintenance(
    event_id: str,
    event_type: EventType = EventType.REBOOT,
    status: EventStatus = EventStatus.SCHEDULED,
    *,
    resources: tuple[str, ...] = ("web-1",),
    not_before: float | None = None,
) -> MaintenanceEvent:
    """A ``MaintenanceEvent`` as a source reports one, with a test's usual defaults."""
    return MaintenanceEvent(event_id, event_type, status, resources, not_before)


class MemorySource:
    """An ``EventSource`` listing what the test set; ``approvals`` holds each approved id."""

    def __init__(self, *, names: tuple[str, ...] = ("web-1",), incarnation: int = 1) -> None:
        self.names = frozenset(names)
        self.listed: tuple[MaintenanceEvent, ...] = ()
        self.damaged: tuple[Damaged, ...] = ()
        self.incarnation: int | None = incarnation
        self.approvals: list[str] = []
        self.calls: list[str] = []
        self.fail: dict[str, SourceError] = {}  # method name -> what it raises
        self.closed = False

    def publish(self, *events: MaintenanceEvent, damaged: tuple[Damaged, ...] = ()) -> None:
        """List ``events`` (none: an empty document) from now on, as a new incarnation."""
        self.listed, self.damaged = events, damaged
        if self.incarnation is not None:
            self.incarnation += 1

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if error := self.fail.get(name) or self.fail.get("*"):
            raise error

    # -- EventSource ----------------------------------------------------------------------

    def events(self) -> Listing:
        self._call("events")
        return Listing(self.listed, self.incarnation, self.damaged)

    def approve(self, event_id: str) -> None:
        self._call("approve")
        self.approvals.append(event_id)

    def node_names(self) -> frozenset[str]:
        self._call("node_names")
        return self.names

    def close(self) -> None:
        self.closed = True


class MemoryLoadBalancer(LoadBalancer):
    """A ``LoadBalancer`` whose node is where the calls put it.

    ``drain()`` makes an in-service node DRAINING with ``sessions`` still open (set it to
    0 to end the drain); ``take_out()`` makes it OUT (``kill`` closes the sessions);
    ``put_back()`` makes it IN_SERVICE and returns ``ready`` (False: the load balancer's
    own health check has not passed yet).
    """

    def __init__(self, name: str = "lb1", *, sessions: int = 0) -> None:
        self.name = name
        self.status = LBStatus.IN_SERVICE
        self.sessions = sessions
        self.ready = True
        self.calls: list[str] = []
        self.fail: dict[str, AdapterError] = {}  # method name -> what it raises
        self.serving = False
        self.closed = False

    def _call(self, name: str) -> None:
        if error := self.fail.get(name) or self.fail.get("*"):
            raise error
        self.calls.append(name)

    # -- LoadBalancer ---------------------------------------------------------------------

    def state(self) -> LBView:
        if error := self.fail.get("state") or self.fail.get("*"):
            raise error
        return LBView(self.status, self.sessions, f"{self.status.value} in memory")

    def drain(self) -> None:
        self._call("drain")
        if self.status is LBStatus.IN_SERVICE:
            self.status = LBStatus.DRAINING

    def take_out(self, *, kill: bool) -> None:
        self._call("take_out_kill" if kill else "take_out")
        self.status = LBStatus.OUT
        if kill:
            self.sessions = 0

    def put_back(self) -> bool:
        self._call("put_back")
        self.status = LBStatus.IN_SERVICE
        return self.ready

    def preflight(self) -> list[Check]:
        return [Check(f"{self.name}: in memory", True, self.status.value)]

    def serve(self) -> None:
        self.serving = True

    def close(self) -> None:
        self.closed = True
