"""drainer: takes a web server out of its load balancers before cloud maintenance and
puts it back when it is healthy again.

The public surface, for three readers, is re-exported here; everything else is private
to its module and may change (``tests/test_exported_members.py`` pins this list):

- a plugin author: ``LoadBalancer`` and ``AdapterPlugin`` (with ``AdapterConfig``,
  ``AdapterContext``, ``Check``, ``LBView``, ``LBStatus``), or ``EventSource`` and
  ``SourcePlugin`` (with ``SourceConfig``, ``Listing``, ``MaintenanceEvent``,
  ``Damaged``, ``EventType``, ``EventStatus``); ``Duration`` and ``PositiveDuration``
  type a plugin's configuration fields;
- anyone handling drainer's errors: the tree under ``DrainerError`` (``drainer.errors``);
- a tool that reads drainer's configuration: ``Config`` and ``load_config``.

The engine, the core and the daemon are not here: ``drainer run`` wires them, and their
signatures follow the daemon's needs.
"""

from drainer._types import Duration, PositiveDuration
from drainer.adapters.base import (
    AdapterConfig,
    AdapterContext,
    AdapterPlugin,
    Check,
    LoadBalancer,
)
from drainer.config import Config, load_config
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
from drainer.model import (
    Damaged,
    EventStatus,
    EventType,
    LBStatus,
    LBView,
    Listing,
    MaintenanceEvent,
)
from drainer.sources.base import EventSource, SourceConfig, SourcePlugin

__all__ = [
    "AdapterConfig",
    "AdapterContext",
    "AdapterError",
    "AdapterPlugin",
    "Check",
    "Config",
    "ConfigError",
    "Damaged",
    "DrainerError",
    "Duration",
    "EventSource",
    "EventStatus",
    "EventType",
    "LBStatus",
    "LBView",
    "Listing",
    "LoadBalancer",
    "MaintenanceEvent",
    "PayloadError",
    "PermanentAdapterError",
    "PositiveDuration",
    "SourceConfig",
    "SourceError",
    "SourcePlugin",
    "StateError",
    "TransientAdapterError",
    "load_config",
]
