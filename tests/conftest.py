"""Fixtures shared by several test files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import World
from lbprocs import Lab


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A VM named web-1 behind the mock load balancer (tests/harness.py); every ``drainer``
    process it started is killed by PID at the end."""
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def lab() -> Iterator[Lab]:
    started = Lab()
    try:
        yield started
    finally:
        started.close()
