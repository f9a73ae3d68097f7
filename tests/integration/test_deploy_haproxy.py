"""The HAProxy setup documented in deploy/haproxy/ does what it says, on real HAProxy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lbprocs import HttpBackend

from drainer.testing import haproxy_available, haproxy_cli, start_haproxy

DEPLOY = Path(__file__).parents[2] / "deploy" / "haproxy"
pytestmark = pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed")


@pytest.mark.parametrize("name", ["runtime-api.cfg", "agent-check.cfg"])
def test_example_configurations_are_valid(name: str) -> None:
    result = subprocess.run(
        ["/usr/sbin/haproxy", "-c", "-f", str(DEPLOY / name)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "Configuration file is valid" in result.stdout


def admin_state(socket_path: Path, server: str) -> int:
    lines = haproxy_cli(socket_path, "show servers state app").splitlines()
    header = lines[1].lstrip("# ").split()
    for line in lines[2:]:
        row = dict(zip(header, line.split(), strict=False))
        if row.get("srv_name") == server:
            return int(row["srv_admin_state"])
    raise AssertionError(f"{server} not in show servers state")


def test_saved_state_keeps_a_drain_across_a_reload() -> None:
    backend = HttpBackend()
    port = backend.port
    body = (
        "backend app\n"
        "  load-server-state-from-file global\n"
        f"  server web-1 127.0.0.1:{port} check inter 200ms\n"
        f"  server web-2 127.0.0.1:{port} check inter 200ms\n"
    )
    hx = start_haproxy(
        body, global_lines=["server-state-file {dir}/server-state"], master_worker=True
    )
    try:
        sock, state = hx.admin_socket, hx.dir / "server-state"
        haproxy_cli(sock, "set server app/web-1 state drain")
        assert admin_state(sock, "web-1") & 0x08
        hx.reload()  # without a saved state the drain is forgotten
        assert admin_state(sock, "web-1") & 0x08 == 0

        haproxy_cli(sock, "set server app/web-1 state maint")
        saved = subprocess.run(
            [sys.executable, str(DEPLOY / "save-server-state"), str(sock), str(state)],
            capture_output=True,
            text=True,
        )
        assert saved.returncode == 0, saved.stderr
        assert state.read_text().startswith("1\n")
        hx.reload()
        assert admin_state(sock, "web-1") & 0x01  # still in maint after the reload
        assert admin_state(sock, "web-2") == 0
    finally:
        hx.stop()
        backend.stop()


def test_save_refuses_when_the_socket_does_not_answer(tmp_path: Path) -> None:
    target = tmp_path / "server-state"
    target.write_text("1\n# old\n")
    result = subprocess.run(
        [
            sys.executable,
            str(DEPLOY / "save-server-state"),
            str(tmp_path / "none.sock"),
            str(target),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "none.sock" in result.stderr
    assert target.read_text() == "1\n# old\n"  # untouched
