"""The layers STYLE.md asks for: a pure core, sources that only translate."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "drainer"


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", ["core.py", "model.py"])
def test_the_core_imports_only_the_standard_library_and_the_model(module: str) -> None:
    allowed = {"__future__", "drainer.model"}
    for name in imports_of(PACKAGE / module):
        top = name.split(".")[0]
        assert name in allowed or (top in sys.stdlib_module_names and top != "drainer"), (
            f"{module} imports {name}: the core does no I/O and knows no adapter"
        )
    io = {"socket", "subprocess", "os", "time", "httpx", "pathlib", "threading"}
    assert not imports_of(PACKAGE / module) & io


def test_sources_never_import_the_core_or_adapters() -> None:
    for path in (PACKAGE / "sources").glob("*.py"):
        for name in imports_of(path):
            assert not name.startswith(("drainer.core", "drainer.adapters", "drainer.engine")), (
                f"{path.name} imports {name}: a source translates, the core decides"
            )
