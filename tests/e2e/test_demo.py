"""The README's first command: `drainer demo` handles a whole maintenance."""

from __future__ import annotations

import subprocess
import sys

import pytest

from drainer.testing import haproxy_available


@pytest.mark.parametrize(
    "flag",
    [
        "--mock",
        pytest.param(
            "--haproxy",
            marks=pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed"),
        ),
    ],
)
def test_demo_runs_a_whole_maintenance(flag: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "drainer", "demo", flag],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    steps = [
        "draining:",
        "drained:",
        "approved event",
        "in_maintenance:",
        "recovering: rebooted",
        "in_service: back in service",
    ]
    positions = [out.index(step) for step in steps]
    assert positions == sorted(positions), out
    if flag == "--haproxy":
        assert "HAProxy on 127.0.0.1" in out and ", 0 failed" in out
        seen = [
            line.split(" is ")[1].split(",")[0]
            for line in out.splitlines()
            if "haproxy  demo-web-1 is " in line
        ]
        assert seen[:3] == ["UP", "DRAIN", "MAINT"] and seen[-1] == "UP", seen
