"""What a command loads: each imports only what it uses, so that a person's commands
start fast and the sidecar stays small (the figures are in ``bench/footprint.py``).

Each command runs in a fresh interpreter that lists, at exit, the modules it loaded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from drainer.config import load_config
from drainer.daemon import Runner
from drainer.node import assemble
from drainer.testing import FakeIMDS, free_port, wait_until

# runs the CLI as `python -m drainer ...` would, then writes the loaded modules' names
LIST_MODULES = """
import atexit, json, sys
out, sys.argv = sys.argv[1], ["drainer", *sys.argv[2:]]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
from drainer.early import main
main()
"""


def loaded(tmp_path: Path, *args: str) -> set[str]:
    out = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", LIST_MODULES, str(out), *args],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return {name.split(".")[0] for name in json.loads(out.read_text())}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "boot_id").write_text("boot-1\n")
    path = tmp_path / "drainer.yaml"
    config = {
        "node": {"name": "web-1", "boot_id_path": str(tmp_path / "boot_id")},
        "state_dir": str(tmp_path / "state"),
        "source": {"endpoint": "http://127.0.0.1:9/", "timeout": "200ms"},
        "health": {"tcp": {"port": 9}},
        "load_balancers": [{"type": "mock", "path": str(tmp_path / "mock.json")}],
    }
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    "args",
    [("--help",), ("config", "check", "-c", "CONFIG"), ("status", "-c", "CONFIG")],
    ids=["help", "config-check", "status"],
)
def test_a_cli_command_loads_no_metrics_server_http_client_retrier_nor_rich(
    tmp_path: Path, config: Path, args: tuple[str, ...]
) -> None:
    modules = loaded(tmp_path, *(str(config) if a == "CONFIG" else a for a in args))
    assert "drainer" in modules
    assert not modules & {"prometheus_client", "rich", "http", "httpx", "tenacity"}, modules


def test_help_loads_neither_pydantic_nor_the_configuration(tmp_path: Path) -> None:
    modules = loaded(tmp_path, "--help")
    assert not modules & {"pydantic", "yaml", "httpx"}, modules


class CountingEvent(threading.Event):
    """The daemon's ``wake``: counts how often the loop goes to sleep on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        return super().wait(timeout)


def test_the_loop_sleeps_once_between_two_polls_in_service(config: Path) -> None:
    node = assemble(load_config(config), threading.Event())
    try:
        runner = Runner(node, stopping=threading.Event())
        runner.wake = wake = CountingEvent()
        node.engine.turn(None)
        assert not node.engine.should_recheck()
        runner._between(time.monotonic() + 0.6)  # recheck_interval is 250ms
        assert wake.waits == 1
    finally:
        node.close()


@pytest.mark.parametrize("serve", [False, True], ids=["metrics-off", "metrics-on"])
def test_drainer_run_loads_prometheus_client_only_to_serve_metrics(
    tmp_path: Path, config: Path, serve: bool
) -> None:
    listen = f"127.0.0.1:{free_port()}" if serve else None
    out = tmp_path / "modules.json"
    with FakeIMDS() as fake:
        document = json.loads(config.read_text())
        document["source"] = {"endpoint": fake.url, "poll_interval": "1s"}
        document["metrics"] = {"listen": listen}
        config.write_text(json.dumps(document))
        run = subprocess.Popen(
            [sys.executable, "-c", LIST_MODULES, str(out), "run", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            heartbeat = Path(document["state_dir"]) / "heartbeat.json"
            wait_until(heartbeat.exists, timeout=30, what="the sidecar's first turn")
        finally:
            run.send_signal(signal.SIGTERM)
            assert run.wait(timeout=30) == 0
    modules = {name.split(".")[0] for name in json.loads(out.read_text())}
    assert ("prometheus_client" in modules) is serve
