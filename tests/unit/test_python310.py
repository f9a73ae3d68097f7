"""drainer runs on Python 3.10 (Ubuntu 22.04), and there is no 3.10 interpreter here.
Kept honest statically: mypy checks the stdlib names as 3.10 has them
(``python_version`` in pyproject.toml), ruff writes for 3.10, and this test parses every
file with 3.10's grammar and checks the three settings say 3.10."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    p for folder in ("drainer", "tests", "bench") for p in (ROOT / folder).rglob("*.py")
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_parses_with_python_310_grammar(path: Path) -> None:
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def test_python_310_grammar_check_catches_newer_syntax() -> None:
    with pytest.raises(SyntaxError):  # except* is 3.11
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass\n", feature_version=(3, 10))


def test_the_tools_and_the_package_say_310() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - on 3.10 the tests need tomli
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["requires-python"] == ">=3.10"
    assert project["tool"]["mypy"]["python_version"] == "3.10"
    assert project["tool"]["ruff"]["target-version"] == "py310"
