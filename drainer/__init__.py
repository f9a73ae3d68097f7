"""drainer: takes a web server out of its load balancers before cloud maintenance and
puts it back when it is healthy again.

The public surface for adapter and source authors and for users' own tests is
re-exported here; everything else is private to its module.
"""

from drainer.adapters.base import (
    AdapterConfig,
    AdapterContext,
    AdapterPlugin,
    LBStatus,
    LBView,
    LoadBalancer,
)
from drainer.errors import (
    AdapterError,
    ConfigError,
    DrainerError,
    PayloadError,
    PermanentAdapterError,
    SourceError,
    StateError,
    TransientAdapterError,
)
from drainer.model import EventStatus, EventType, MaintenanceEvent
from drainer.sources.base import EventSource, SourcePlugin

__all__ = [
    "AdapterConfig",
    "AdapterContext",
    "AdapterError",
    "AdapterPlugin",
    "ConfigError",
    "DrainerError",
    "EventSource",
    "EventStatus",
    "EventType",
    "LBStatus",
    "LBView",
    "LoadBalancer",
    "MaintenanceEvent",
    "PayloadError",
    "PermanentAdapterError",
    "SourceError",
    "SourcePlugin",
    "StateError",
    "TransientAdapterError",
]
