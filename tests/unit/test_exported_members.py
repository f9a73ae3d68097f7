"""The public surface is what ``drainer.__all__`` says, and nothing slips in or out
unnoticed: a name added to or removed from the package root changes this test too."""

from __future__ import annotations

from types import ModuleType

import drainer

PUBLIC = {
    # plugins: load balancers
    "AdapterConfig",
    "AdapterContext",
    "AdapterPlugin",
    "Check",
    "LBStatus",
    "LBView",
    "LoadBalancer",
    # plugins: event sources
    "Damaged",
    "EventSource",
    "EventStatus",
    "EventType",
    "Listing",
    "MaintenanceEvent",
    "SourceConfig",
    "SourcePlugin",
    # plugins' configuration fields
    "Duration",
    "PositiveDuration",
    # errors
    "AdapterError",
    "ConfigError",
    "DrainerError",
    "PayloadError",
    "PermanentAdapterError",
    "SourceError",
    "StateError",
    "TransientAdapterError",
    # configuration
    "Config",
    "load_config",
}


def test_all_is_the_public_surface() -> None:
    assert set(drainer.__all__) == PUBLIC
    assert drainer.__all__ == sorted(drainer.__all__)  # so a name twice shows too


def test_all_imports_are_exported() -> None:
    # Whatever the package root imports is exported: no half-public name. (Submodules
    # become attributes of the package when imported; they are not members.) The names
    # are imported on first use (PEP 562): use each once first.
    for name in drainer.__all__:
        getattr(drainer, name)
    members = {
        name
        for name, value in vars(drainer).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert members == set(drainer.__all__)
