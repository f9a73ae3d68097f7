"""Where adapters and sources come from: the ``drainer.adapters`` and ``drainer.sources``
entry-point groups, read here and nowhere else.

Built-in plugins register in drainer's own ``pyproject.toml``; a third-party package
registers its own the same way. An entry point must point at an ``AdapterPlugin`` (or a
``SourcePlugin``); anything else, and a name no entry point has, is a ``ConfigError``
that names the group, the name and what is known.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import TypeVar

from drainer.adapters.base import AdapterPlugin, AnyAdapterPlugin
from drainer.errors import ConfigError
from drainer.sources.base import AnySourcePlugin, SourcePlugin

__all__ = ["adapter_names", "adapter_plugins", "source_names", "source_plugin"]

ADAPTERS = "drainer.adapters"
SOURCES = "drainer.sources"

P = TypeVar("P", AnyAdapterPlugin, AnySourcePlugin)


def _load(group: str, ep: EntryPoint, kind: type[P]) -> P:
    plugin = ep.load()
    if not isinstance(plugin, kind):
        article = "an" if kind.__name__[0] in "AEIOU" else "a"
        raise ConfigError(f"entry point {group}:{ep.name} is not {article} {kind.__name__}")
    return plugin


def adapter_plugins(names: Iterable[str] | None = None) -> dict[str, AnyAdapterPlugin]:
    """The adapters registered under ``drainer.adapters``, by type name: every one, or
    only those in ``names`` (only they are imported; a name no entry point has is left
    out, for the caller to name with ``adapter_names``)."""
    wanted = None if names is None else set(names)
    return {
        ep.name: _load(ADAPTERS, ep, AdapterPlugin)
        for ep in entry_points(group=ADAPTERS)
        if wanted is None or ep.name in wanted
    }


def adapter_names() -> list[str]:
    """The type names registered under ``drainer.adapters``, sorted (none is imported)."""
    return sorted(ep.name for ep in entry_points(group=ADAPTERS))


def source_names() -> list[str]:
    """The type names registered under ``drainer.sources``, sorted."""
    return sorted(ep.name for ep in entry_points(group=SOURCES))


def source_plugin(name: str) -> AnySourcePlugin:
    """The source registered as ``name`` (only that one is imported); ConfigError
    (``source.type: unknown source ...``) when none is."""
    for ep in entry_points(group=SOURCES, name=name):
        return _load(SOURCES, ep, SourcePlugin)
    known = ", ".join(source_names())
    raise ConfigError(f"source.type: unknown source {name!r} (known: {known})")
