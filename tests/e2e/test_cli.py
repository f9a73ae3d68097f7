"""The ``drainer`` command as an operator types it: ``python -m drainer ...`` as a real
process against the fake metadata service, asserting the exit code, the message, and
that no traceback reaches the terminal.

Exit codes: 0 success, 1 the operation failed (or, for ``status``, needs a person),
2 bad usage or configuration, 3 (``status``) the sidecar is not running or stale.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
from harness import DRAINER, NODE, World, wait_until

from drainer import sidecar

TRACEBACK = "Traceback (most recent call last)"


def drainer(
    *args: str,
    env: dict[str, str] | None = None,
    preexec: Callable[[], object] | None = None,
    traceback_ok: bool = False,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*DRAINER, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec,
    )
    if not traceback_ok:
        assert TRACEBACK not in done.stdout + done.stderr, done.stderr
    return done


def cli(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    done = world.cli(*args)
    assert TRACEBACK not in done.stdout + done.stderr, done.stderr
    return done


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- version, completion, global options ------------------------------------------------------


def test_version() -> None:
    done = drainer("--version")
    assert (done.returncode, done.stdout) == (0, f"drainer {version('drainer')}\n")


def test_shell_completion_is_enabled() -> None:
    assert "--install-completion" in drainer("--help").stdout
    done = drainer(
        env={"_DRAINER_COMPLETE": "complete_bash", "COMP_WORDS": "drainer und", "COMP_CWORD": "1"}
    )
    assert (done.returncode, done.stdout.split()) == (0, ["undrain"])


@pytest.mark.parametrize(
    "order",
    [
        ["config", "check", "-c", "{c}"],
        ["-c", "{c}", "config", "check"],
        ["--config", "{c}", "config", "check"],
        ["--config={c}", "config", "check"],
        ["config", "-c", "{c}", "check"],
        ["-c{c}", "config", "check"],
        ["--debug", "config", "check", "-c", "{c}"],
        ["config", "check", "-c", "{c}", "--debug"],
        ["-c", "{c}", "--debug", "config", "check"],
        ["config", "check", "--log-format", "json", "-c", "{c}"],
        ["--log-format=json", "-c", "{c}", "config", "check", "--lock-timeout", "3"],
    ],
)
def test_global_options_work_before_or_after_the_command(world: World, order: list[str]) -> None:
    done = drainer(*(arg.format(c=world.config_path) for arg in order))
    assert (done.returncode, done.stdout) == (0, f"{world.config_path}: ok\n"), done.stderr


def test_debug_after_the_command_takes_effect(world: World) -> None:
    world.configure(source={"timeout": 0})
    quiet = drainer("-c", str(world.config_path), "config", "check")
    assert quiet.returncode == 2
    assert quiet.stderr.startswith(f"drainer: {world.config_path}: source.timeout: must be more")
    loud = drainer("config", "check", "-c", str(world.config_path), "--debug", traceback_ok=True)
    assert loud.returncode == 1 and TRACEBACK in loud.stderr  # --debug: the traceback


def test_config_check_refuses_two_webhooks_with_one_url(world: World) -> None:
    hook = {"url": "https://hooks.example.com/services/T0/SECRETTOKEN"}
    world.configure(notify={"webhooks": [hook, {**hook, "format": "slack"}]})
    done = drainer("config", "check", "-c", str(world.config_path))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"drainer: {world.config_path}: notify.webhooks: entries [0]")
    assert "SECRETTOKEN" not in done.stderr


def test_a_config_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "drainer.yaml"
    path.write_bytes(b"health:\n  tcp: {port: 80}\nnote: caf\xe9\n")
    for command in (["config", "check"], ["status"], ["drain"]):
        done = drainer(*command, "-c", str(path))
        assert done.returncode == 2, command
        assert f"{path}: not UTF-8 text (byte 35: 0xe9)" in done.stderr


def test_config_check_refuses_a_bogus_source_and_a_listen_address_without_port(
    world: World,
) -> None:
    world.configure(
        source={"type": "bogus", "endpoint": "169.254.169.254"}, metrics={"listen": "localhost"}
    )
    done = cli(world, "config", "check")
    assert done.returncode == 2
    assert "source.type: unknown source 'bogus' (known: auto, aws, azure, gcp)" in done.stderr
    assert "source.endpoint: not an http(s) URL with a host: '169.254.169.254'" in done.stderr
    assert "metrics.listen: not host:port: 'localhost'" in done.stderr


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 10**12, "99999999h"])
def test_a_duration_that_is_endless_or_absurd_is_refused_by_config_check(
    world: World, timeout: float | str
) -> None:
    world.configure(drain={"timeout": timeout})
    for command in (["config", "check"], ["config", "show"]):
        done = cli(world, *command)
        assert done.returncode == 2, (command, done.stderr)
        assert "drain.timeout: " in done.stderr
        assert "unexpected error" not in done.stderr


# -- drain --timeout ----------------------------------------------------------------------------


def test_drain_timeout_without_wait_is_a_usage_error(world: World) -> None:
    done = cli(world, "drain", "--timeout", "5")
    assert done.returncode == 2
    assert "--timeout" in done.stderr and "--wait" in done.stderr
    assert world.calls() == []  # nothing drained


@pytest.mark.parametrize(
    "args",
    [
        ["drain", "--wait", "--timeout", "inf"],
        ["undrain", "--timeout", "inf"],
        ["--lock-timeout", "inf", "drain"],
    ],
)
def test_an_endless_timeout_is_a_usage_error_before_anything_is_done(
    world: World, args: list[str]
) -> None:
    done = cli(world, *args)
    assert done.returncode == 2, done.stderr
    assert "unexpected error" not in done.stderr
    assert "timeout" in done.stderr
    assert world.calls() == []  # nothing drained or put back


def test_drain_wait_timeout_is_the_longest_wait(world: World) -> None:
    world.configure(drain={"timeout": "60s"})
    world.configure_lb(drain_seconds="60s")  # the sessions take a minute to go
    done = cli(world, "drain", "--wait", "--timeout", "1")
    assert done.returncode == 1
    assert "drain not finished after 1s" in done.stderr
    first = next(line for line in done.stderr.splitlines() if line.startswith("draining: "))
    left = int(first.rsplit("; ", 1)[1].removesuffix("s left"))
    assert left <= 1, first  # the wait ends at --timeout, not 5 s later


# -- fake-imds ----------------------------------------------------------------------------------


def test_fake_imds_on_a_port_in_use_or_out_of_range_is_a_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        done = drainer("fake-imds", "--port", str(port))
    assert done.returncode == 1
    assert done.stderr == (
        f"drainer: fake-imds: cannot listen on 127.0.0.1:{port}: Address already in use"
        " (choose another --port or --host)\n"
    )
    done = drainer("fake-imds", "--port", "70000")
    assert done.returncode == 2 and "--port" in done.stderr


# -- the state files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('["in_service"]', "a JSON list where an object was expected"),
        ('"drained"', "a JSON str where an object was expected"),
        ('{"version": 1, "phase": "resting"}', "unknown phase 'resting'"),
        ('{"version": 1, "owned": "lb1"}', 'owned is "lb1"'),
        ('{"version": 1, "since": NaN}', "since is NaN"),
        ('{"version": 1, "since": 1e400}', "since is Infinity"),
        ('{"version": 1, "drain_deadline": 1e300}', "drain_deadline is 1e+300"),
        ('{"version": 1, "phase": "dr', "Unterminated string"),
        (None, "a directory, not a file"),
    ],
)
def test_a_state_file_of_any_other_shape_is_one_clear_error(
    world: World, content: str | None, reason: str
) -> None:
    world.state_dir.mkdir()
    path = world.state_dir / "state.json"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    for command in ("status", "drain", "undrain"):
        done = cli(world, command)
        assert done.returncode == 1, (command, done.stderr)
        assert done.stderr.startswith(f"drainer: {path} is damaged or unusable ({reason}")
        assert f"mv {path} {path}.bad" in done.stderr
    assert world.calls() == []  # nothing was done on a guess


def test_files_are_owner_only_whatever_the_umask(world: World) -> None:
    world.mock_path = world.state_dir / "mock-lb1.json"  # the adapter's file, in state_dir
    world.configure_lb(path=str(world.mock_path))
    done = drainer("drain", "-c", str(world.config_path), preexec=lambda: os.umask(0))
    assert done.returncode == 0, done.stderr
    assert world.lb_status() != "in_service"
    assert mode(world.state_dir) == 0o700
    for name in ("state.json", "lock", "node-names.json", "mock-lb1.json", "mock-lb1.lock"):
        assert mode(world.state_dir / name) == 0o600, name


def test_check_and_run_create_a_missing_state_dir_owner_only_whatever_the_umask(
    world: World,
) -> None:
    for command in ("check", "run"):
        state_dir = world.dir / command / "drainer"  # the parent is missing too
        world.configure(state_dir=str(state_dir))
        proc = subprocess.Popen(
            [*DRAINER, command, "-c", str(world.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: os.umask(0),
        )
        try:
            if command == "run":
                beat = state_dir / sidecar.HEARTBEAT
                wait_until(beat.exists, what="a turn")
                proc.terminate()
            assert proc.wait(timeout=30) in (0, 1)  # check: 1, the lb file is elsewhere
        finally:
            proc.kill()
        assert (mode(state_dir.parent), mode(state_dir)) == (0o700, 0o700), command


def test_a_held_state_lock_is_said_and_given_up(world: World) -> None:
    world.state_dir.mkdir()
    holder = os.open(world.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        os.write(holder, f"{os.getpid()}\n".encode())
        done = cli(world, "drain", "--lock-timeout", "2")
    finally:
        os.close(holder)
    assert done.returncode == 1
    assert f"drainer: waiting for the state lock held by pid {os.getpid()}...\n" in done.stderr
    assert "drainer: gave up after 2s waiting for the state lock" in done.stderr
    assert world.calls() == []
    done = cli(world, "drain")  # free again
    assert done.returncode == 0, done.stderr


# -- node names kept ------------------------------------------------------------------------------


def test_manual_commands_work_without_the_metadata_service_once_names_are_known(
    world: World,
) -> None:
    world.fake.stop()
    done = cli(world, "drain")
    assert done.returncode == 1  # never learned: nothing to fall back on
    assert "cannot learn this VM's name (set node.name)" in done.stderr

    world.fake = type(world.fake)(rate_limit=None).start()
    world.configure(source={"endpoint": world.fake.url})
    _, data = world.status()  # learns the name, keeps it
    assert data["node"] == [NODE]
    assert json.loads((world.state_dir / "node-names.json").read_text())["names"] == [NODE]

    world.fake.stop()
    done = cli(world, "drain")
    assert done.returncode == 0, done.stderr
    assert f"using the name learned before: {NODE}" in done.stderr
    assert world.calls() == ["drain"]
    _, data = world.status()
    assert data["node"] == [NODE] and data["phase"] in ("draining", "held")

    world.configure(node={"name": "configured"})  # the configuration still wins
    _, data = world.status()
    assert data["node"] == ["configured"]


def test_drainer_run_keeps_the_names_it_learns(world: World) -> None:
    world.start()
    world.wait_polls(2)
    path = world.state_dir / "node-names.json"
    assert json.loads(path.read_text())["names"] == [NODE]
    assert mode(path) == 0o600


# -- undrain during a maintenance ------------------------------------------------------------------


def test_undrain_is_refused_while_a_maintenance_is_under_way(world: World) -> None:
    eid = world.fake.schedule("Reboot", [NODE])
    world.start()
    world.wait_phase("in_maintenance")
    done = cli(world, "undrain")
    assert done.returncode == 1
    assert f"Reboot {eid} (Started)" in done.stderr and "--force" in done.stderr
    world.wait_polls(3)
    assert world.phase() == "in_maintenance" and "put_back" not in world.calls()
    assert world.lb_status() == "out"

    # the daemon gone and the metadata service silent: the record still knows
    world.kill9()
    world.fake.stop()
    done = cli(world, "undrain")
    assert done.returncode == 1
    assert f"Reboot {eid} (Started)" in done.stderr
    assert world.lb_status() == "out"

    done = cli(world, "undrain", "--force")  # a person who knows better
    assert done.returncode == 0, done.stderr
    assert world.lb_status() == "in_service"


def test_undrain_is_refused_when_the_metadata_service_cannot_say(world: World) -> None:
    assert cli(world, "drain").returncode == 0  # names learned, node held out
    world.fake.stop()
    done = cli(world, "undrain")
    assert done.returncode == 1
    assert "cannot ask the metadata service whether a maintenance is pending" in done.stderr
    assert "--force" in done.stderr
    assert world.lb_status() != "in_service"
    done = cli(world, "undrain", "--force")
    assert done.returncode == 0, done.stderr
    assert world.lb_status() == "in_service"


def test_undrain_without_a_maintenance_still_works(world: World) -> None:
    world.fake.schedule("Reboot", ["web-2"], status="Started")  # a neighbour's
    assert cli(world, "drain").returncode == 0
    done = cli(world, "undrain")
    assert done.returncode == 0, done.stderr
    assert world.lb_status() == "in_service"


# -- status and the sidecar --------------------------------------------------------------------


def test_status_without_a_sidecar_says_so_and_exits_3(world: World) -> None:
    done = cli(world, "status")
    assert done.returncode == 3
    assert "sidecar: not running" in done.stdout
    code, data = world.status()
    assert code == 3
    assert data["sidecar"] == {
        "running": False,
        "pid": None,
        "last_turn": None,
        "age": None,
        "stale": True,
    }
    assert data["phase"] == "in_service" and data["needs_attention"] is False


def test_status_reads_the_sidecar_lock_and_heartbeat(world: World) -> None:
    world.state_dir.mkdir()
    lock = sidecar.acquire(world.state_dir)  # what drainer run holds for its life
    try:
        sidecar.beat(world.state_dir, phase="in_service", poll_interval=0.2)
        done = cli(world, "status")
        assert done.returncode == 0, done.stdout
        # the age is whole seconds since the beat: a loaded machine may show 1 or 2
        assert re.search(
            rf"sidecar: running \(pid {os.getpid()}\), last turn \d s ago", done.stdout
        )

        sidecar.beat(world.state_dir, phase="in_service", poll_interval=0.2, now=time.time() - 60)
        done = cli(world, "status")
        assert done.returncode == 3
        assert re.search(rf"sidecar: STALE \(pid {os.getpid()}\): last turn 6\d s ago", done.stdout)
        code, data = world.status()
        assert code == 3 and data["sidecar"]["stale"] is True and data["sidecar"]["running"]
    finally:
        lock.close()
    done = cli(world, "status")  # the heartbeat is left, but nobody holds the lock
    assert done.returncode == 3 and "sidecar: not running" in done.stdout


def test_status_with_drainer_run_going(world: World) -> None:
    world.start()
    world.wait_polls(3)
    done = world.wait(lambda: (d := cli(world, "status")).returncode == 0 and d, "status 0")
    assert "last turn" in done.stdout
    code, data = world.status()
    assert code == 0 and data["sidecar"]["running"] is True
    assert world.daemon is not None and data["sidecar"]["pid"] == world.daemon.pid
    world.kill9()
    done = cli(world, "status")
    assert done.returncode == 3 and "sidecar: not running" in done.stdout


def test_status_does_not_lend_a_new_run_the_heartbeat_of_the_one_before(world: World) -> None:
    """kill -9, then a new ``drainer run`` that cannot turn yet (the metadata service is
    down and it is still learning the VM's name): the heartbeat left on disk is the dead
    run's, so it says nothing about the new one."""
    world.start()
    world.wait_polls(3)
    world.wait(lambda: cli(world, "status").returncode == 0, "status 0")
    assert world.daemon is not None
    old = world.daemon.pid
    world.kill9()
    with socket.socket() as closed:  # a port nobody listens on: the service is down
        closed.bind(("127.0.0.1", 0))
        world.configure(source={"endpoint": f"http://127.0.0.1:{closed.getsockname()[1]}"})
    new = world.start()
    world.wait(lambda: "cannot learn this VM's name yet" in world.log_path.read_text(), "wait")
    done = cli(world, "status")
    assert done.returncode == 3, done.stdout
    assert f"sidecar: running (pid {new.pid}), no turn completed yet" in done.stdout
    assert f"pid {old}" not in done.stdout
