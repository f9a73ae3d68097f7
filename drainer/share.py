"""The files that ship with drainer besides the code: the example configurations
(``configs/``) and the deployment files (``deploy/``: the systemd unit, cloud-init user
data, Prometheus rules, a Grafana dashboard...), which ``drainer print`` shows.

A wheel carries them as package data under ``drainer/_share/``: ``setup.py`` copies both
directories there at build time, whatever they hold, so a file added to them ships
without a list to keep. From a source checkout (an editable install) they are read where
they are. A file is named by its path (``deploy/systemd/drainer.service``), by its file
name when no other file has it (``drainer.service``), or by one of ``ALIASES``.
"""

from __future__ import annotations

from pathlib import Path

from drainer.errors import ConfigError

__all__ = ["ALIASES", "DIRECTORIES", "find", "names", "root"]

DIRECTORIES = ("configs", "deploy")
ALIASES = {
    "systemd-unit": "deploy/systemd/drainer.service",
    "config": "configs/drainer.yaml",
    "install-script": "deploy/install.sh",
}

_PACKAGE = Path(__file__).parent


def root() -> Path:
    """The directory holding ``configs/`` and ``deploy/``: the wheel's copy, else the
    source checkout this module was imported from."""
    shipped = _PACKAGE / "_share"
    if shipped.is_dir():
        return shipped
    checkout = _PACKAGE.parent
    if all((checkout / name).is_dir() for name in DIRECTORIES):
        return checkout
    raise ConfigError(
        f"no deployment files next to {_PACKAGE}: this install has neither the wheel's "
        "drainer/_share nor a source checkout; reinstall drainer from a wheel or the sources"
    )


def _shipped(path: Path) -> bool:
    return not any(part.startswith(".") or part == "__pycache__" for part in path.parts)


def names() -> list[str]:
    """Every shipped file, as its path under the checkout (``deploy/...``), sorted."""
    base = root()
    found = [
        path.relative_to(base)
        for top in DIRECTORIES
        for path in (base / top).rglob("*")
        if path.is_file()
    ]
    return sorted(path.as_posix() for path in found if _shipped(path))


def find(name: str) -> Path:
    """The file ``name`` stands for: a path, a unique file name, or an alias."""
    known = names()
    wanted = ALIASES.get(name, name.strip("/"))
    if wanted in known:
        return root() / wanted
    same = [path for path in known if path.rsplit("/", 1)[-1] == wanted]
    if len(same) == 1:
        return root() / same[0]
    if same:
        raise ConfigError(f"{name!r} names several files, give the path: {', '.join(same)}")
    raise ConfigError(f"no shipped file {name!r}; `drainer print` lists them")
