"""Entry-point discovery: what a wrong name or a wrong entry point tells a person."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from drainer.adapters.base import AdapterPlugin
from drainer.errors import ConfigError
from drainer.plugins import ADAPTERS, SOURCES, _load, adapter_plugins, source_plugin
from drainer.sources.azure import AzureConfig
from drainer.sources.base import SourcePlugin


def test_the_built_in_plugins_are_found() -> None:
    assert {"haproxy", "haproxy-agent", "mock", "nginx", "nginx-plus", "remote"} <= set(
        adapter_plugins()
    )
    assert source_plugin("azure").config_model is AzureConfig


def test_an_unknown_source_names_the_known_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"source.type: unknown source 'oci' \(known: auto, aws, azure, gcp\)"
    ):
        source_plugin("oci")


@pytest.mark.parametrize(("group", "kind"), [(ADAPTERS, AdapterPlugin), (SOURCES, SourcePlugin)])
def test_an_entry_point_that_is_not_a_plugin_is_a_config_error(group: str, kind: type) -> None:
    wrong = EntryPoint(name="wrong", value="drainer.errors:ConfigError", group=group)
    with pytest.raises(ConfigError, match=f"entry point {group}:wrong is not an? {kind.__name__}"):
        _load(group, wrong, kind)


def test_a_source_is_not_taken_for_an_adapter() -> None:
    azure = EntryPoint(name="azure", value="drainer.sources.azure:PLUGIN", group=ADAPTERS)
    with pytest.raises(ConfigError, match="is not an AdapterPlugin"):
        _load(ADAPTERS, azure, AdapterPlugin)


def test_an_adapter_that_does_not_subclass_load_balancer_is_named_at_start(
    tmp_path: Path,
) -> None:
    """A third-party adapter written to the protocol's four calls only would fail at its
    first drain (no check_manual_drain): it is refused when the load balancers are built."""
    from drainer.adapters.base import AdapterContext
    from drainer.adapters.mock import MockConfig
    from drainer.config import parse_config
    from drainer.engine import build_lbs
    from drainer.model import LBStatus, LBView

    class Structural:
        name = "lb1"

        def state(self) -> LBView:
            return LBView(LBStatus.IN_SERVICE, 0)

        def drain(self) -> None: ...

        def take_out(self, *, kill: bool) -> None: ...

        def put_back(self) -> bool:
            return True

    def create(config: MockConfig, context: AdapterContext) -> list[Structural]:
        return [Structural()]

    config = parse_config(
        {
            "state_dir": str(tmp_path),
            "health": {"tcp": {"port": 8080}},
            "load_balancers": [{"type": "mock", "path": str(tmp_path / "lb.json")}],
        }
    )
    plugins = {"mock": AdapterPlugin(config_model=MockConfig, create=create)}
    with pytest.raises(ConfigError, match=r"load_balancers\[0\]: the 'mock' adapter's Structural"):
        build_lbs(config, "web-1", plugins=plugins)
