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

The names are imported when first used (PEP 562), so that ``import drainer`` and the
commands that need none of them (``drainer --help``) do not load pydantic.
"""

# private names only: whatever else the root holds is exported (test_exported_members)
import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
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

# where each public name lives
_HOMES = {
    "AdapterConfig": "drainer.adapters.base",
    "AdapterContext": "drainer.adapters.base",
    "AdapterError": "drainer.errors",
    "AdapterPlugin": "drainer.adapters.base",
    "Check": "drainer.adapters.base",
    "Config": "drainer.config",
    "ConfigError": "drainer.errors",
    "Damaged": "drainer.model",
    "DrainerError": "drainer.errors",
    "Duration": "drainer._types",
    "EventSource": "drainer.sources.base",
    "EventStatus": "drainer.model",
    "EventType": "drainer.model",
    "LBStatus": "drainer.model",
    "LBView": "drainer.model",
    "Listing": "drainer.model",
    "LoadBalancer": "drainer.adapters.base",
    "MaintenanceEvent": "drainer.model",
    "PayloadError": "drainer.errors",
    "PermanentAdapterError": "drainer.errors",
    "PositiveDuration": "drainer._types",
    "SourceConfig": "drainer.sources.base",
    "SourceError": "drainer.errors",
    "SourcePlugin": "drainer.sources.base",
    "StateError": "drainer.errors",
    "TransientAdapterError": "drainer.errors",
    "load_config": "drainer.config",
}


def __getattr__(name: str) -> _typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(home), name)
    globals()[name] = value  # once: the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
