"""The layers STYLE.md asks for, held by import-linter's contracts in ``.importlinter``.

``lint-imports`` checks the whole import graph, indirect imports too (``sources.azure ->
config -> core`` broke the old rule, which read each module's own imports only). These
tests run it, check that the contracts that must name every module of drainer do, and
keep the one thing import-linter does not see: that the core uses only the standard
library, and none of it for I/O.
"""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "drainer"
KIT = {"drainer.testing"}
KIT_USERS = {"drainer.demo"}  # the demo runs the kit; the CLI imports it only when called


def contracts() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    return parser


def listed(section: str, key: str) -> set[str]:
    return set(contracts()[f"importlinter:contract:{section}"][key].split())


def top_modules() -> set[str]:
    """drainer's modules and subpackages, one level down (what the contracts name)."""
    return {
        f"drainer.{path.stem if path.suffix else path.name}"
        for path in PACKAGE.iterdir()
        if (path.suffix == ".py" and path.stem not in ("__init__", "__main__"))
        or (path.is_dir() and (path / "__init__.py").exists())
    }


def test_the_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def _kit(modules: set[str]) -> set[str]:
    return {m for m in modules if m.removesuffix(".**") in KIT}


def test_the_core_contract_forbids_every_other_module() -> None:
    forbidden = listed("core", "forbidden_modules")
    rest = top_modules() - {"drainer.core", "drainer.model"}
    assert rest - KIT <= forbidden, f"add to the core contract: {sorted(rest - KIT - forbidden)}"
    assert rest & KIT <= {m.removesuffix(".**") for m in forbidden}


def test_every_product_module_is_kept_from_the_test_kit() -> None:
    sources = listed("test-kit", "source_modules")
    product = top_modules() - KIT - KIT_USERS
    assert product <= sources, f"add to the test-kit contract: {sorted(product - sources)}"
    forbidden = {m.removesuffix(".**") for m in listed("test-kit", "forbidden_modules")}
    assert top_modules() & KIT <= forbidden


def test_every_adapter_is_independent_of_the_others() -> None:
    shared = {"__init__", "base", "checks", "_state"}
    adapters = {
        f"drainer.adapters.{path.stem if path.suffix else path.name}"
        for path in (PACKAGE / "adapters").iterdir()
        if (path.suffix == ".py" or (path / "__init__.py").exists()) and path.stem not in shared
    }
    assert adapters == listed("adapters-independent", "modules")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", ["core.py", "model.py"])
def test_the_core_imports_only_the_standard_library_and_no_io(module: str) -> None:
    for name in imports_of(PACKAGE / module):
        top = name.split(".")[0]
        assert top == "drainer" or top == "__future__" or top in sys.stdlib_module_names, (
            f"{module} imports {name}: the core does no I/O and knows no adapter"
        )
    io = {"socket", "subprocess", "os", "time", "httpx", "pathlib", "threading"}
    assert not imports_of(PACKAGE / module) & io
