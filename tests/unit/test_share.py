"""drainer.share from a source checkout (the editable install the tests run from): every
file of configs/ and deploy/, found by path, unique file name or alias. The wheel's copy
is tested in tests/e2e/test_install.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from drainer import share
from drainer.errors import ConfigError

ROOT = Path(__file__).parents[2]


def test_a_checkout_is_read_where_its_files_are() -> None:
    assert share.root() == ROOT
    names = share.names()
    assert "deploy/systemd/drainer.service" in names
    assert "configs/drainer.yaml" in names
    assert all(name.startswith(("configs/", "deploy/")) for name in names)
    assert not [name for name in names if "__pycache__" in name or "/." in name]


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("systemd-unit", "deploy/systemd/drainer.service"),
        ("install-script", "deploy/install.sh"),
        ("config", "configs/drainer.yaml"),
        ("drainer.service", "deploy/systemd/drainer.service"),
        ("deploy/haproxy/README.md", "deploy/haproxy/README.md"),
        ("/configs/haproxy.yaml", "configs/haproxy.yaml"),
    ],
)
def test_find(name: str, path: str) -> None:
    assert share.find(name) == ROOT / path


def test_every_alias_names_a_shipped_file() -> None:
    assert set(share.ALIASES.values()) <= set(share.names())


def test_a_file_name_two_files_have_asks_for_the_path() -> None:
    with pytest.raises(ConfigError, match=r"deploy/nginx/README\.md"):
        share.find("README.md")


@pytest.mark.parametrize("name", ["nothing", "../pyproject.toml", "deploy", "drainer/cli.py"])
def test_only_shipped_files_are_found(name: str) -> None:
    with pytest.raises(ConfigError, match="`drainer print` lists them"):
        share.find(name)
