"""A sidecar you can see: ``drainer run`` as a real process, its probes and its signals.

One ``drainer run`` per state directory; a state directory that cannot be written is a
clear exit 1 at start and a failing ``/healthz`` later (logged once); ``/healthz``,
``/readyz`` and ``/metrics`` on the metrics listener (IPv6 too); SIGHUP reloads the
configuration and keeps the old one when the new one is wrong; systemd's notify
protocol on a real unix datagram socket. Then the re-check between polls: the pure
``Recheck`` input of the core, and a real HAProxy whose reload or restart forgot the
drain, taken out again by drainer long before its next metadata poll.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from harness import NODE, Daemon, World
from lbprocs import HttpBackend

from drainer import sidecar
from drainer.core import (
    Drain,
    Phase,
    Policy,
    PutBack,
    Recheck,
    Record,
    StartChecks,
    TakeOut,
    step,
    wants_recheck,
)
from drainer.model import LBStatus, LBView
from drainer.systemd import watchdog_seconds
from drainer.testing import (
    HAProxy,
    free_port,
    haproxy_available,
    haproxy_cli,
    start_haproxy,
    wait_until,
)


def listen(world: World, host: str = "127.0.0.1") -> str:
    """Turn the metrics listener on at a free port; return its base URL."""
    port = free_port()
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    world.configure(metrics={"listen": address})
    return f"http://{address}"


def get(url: str) -> httpx.Response:
    return httpx.get(url, trust_env=False, timeout=2.0)


def answers(url: str, status: int) -> bool:
    try:
        return get(url).status_code == status
    except httpx.HTTPError:
        return False


def log_text(world: World) -> str:
    return world.log_path.read_text() if world.log_path.exists() else ""


# -- one sidecar per state directory ---------------------------------------------------------


def test_a_second_run_on_the_same_state_dir_refuses(world: World) -> None:
    first = world.start()
    world.wait_polls(2)
    second = world.cli("run", timeout=20)
    assert second.returncode == 1
    assert f"another drainer run (pid {first.pid}) already uses" in second.stderr
    assert "Traceback" not in second.stderr
    world.wait_polls(2)  # the first one goes on
    assert first.alive()


# -- a state directory that cannot be written --------------------------------------------------


def test_a_state_dir_that_is_a_file_is_a_clear_exit_1(world: World) -> None:
    world.state_dir.write_text("not a directory\n")
    done = world.cli("run", timeout=20)
    assert done.returncode == 1
    assert f"cannot use state directory {world.state_dir}" in done.stderr
    assert "Traceback" not in done.stderr
    assert world.requests() == 0  # it never started polling


@pytest.mark.parametrize("name", ["daemon.lock", "lock"])
def test_a_lock_that_is_a_directory_is_named(world: World, name: str) -> None:
    """The state directory itself is fine: the message must send the operator to the file."""
    (world.state_dir / name).mkdir(parents=True)
    command = ("run",) if name == "daemon.lock" else ("drain",)
    done = world.cli(*command, timeout=20)
    assert done.returncode == 1, done.stderr
    assert f"{world.state_dir / name}: Is a directory" in done.stderr
    assert "Traceback" not in done.stderr


class Frozen:
    """Makes a directory unwritable for the test: ``chattr +i`` as root (the mode bits do
    not stop root), ``chmod 555`` otherwise."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.on = False

    def freeze(self) -> None:
        if os.geteuid() == 0:
            done = subprocess.run(["chattr", "+i", str(self.path)], capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"premise: cannot make {self.path} immutable: {done.stderr!r}")
        else:
            self.path.chmod(0o555)
        self.on = True

    def thaw(self) -> None:
        if self.on and os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(self.path)], check=True)
        elif self.on:
            self.path.chmod(0o700)
        self.on = False


@pytest.fixture
def frozen(world: World) -> Iterator[Frozen]:
    freezer = Frozen(world.state_dir)
    try:
        yield freezer
    finally:
        freezer.thaw()


@pytest.mark.skipif(shutil.which("chattr") is None and os.geteuid() == 0, reason="needs chattr")
def test_an_unwritable_state_dir_is_a_clear_exit_1(world: World, frozen: Frozen) -> None:
    world.start()
    world.wait_polls(2)  # the state directory and its lock file exist
    assert world.daemon is not None
    assert world.daemon.terminate()[0] == 0
    frozen.freeze()
    done = world.cli("run", timeout=20)
    assert done.returncode == 1, done.stderr
    assert f"cannot write in the state directory {world.state_dir}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(shutil.which("chattr") is None and os.geteuid() == 0, reason="needs chattr")
def test_healthz_fails_while_the_state_cannot_be_written(world: World, frozen: Frozen) -> None:
    url = listen(world)
    world.start()
    world.wait(lambda: answers(f"{url}/healthz", 200), "/healthz 200")
    frozen.freeze()
    world.wait(lambda: answers(f"{url}/healthz", 503), "/healthz 503")
    reply = get(f"{url}/healthz")
    assert reply.text.startswith("state: ") and str(world.state_dir) in reply.text
    assert reply.text.count("\n") == 1
    world.wait_polls(6)
    assert log_text(world).count("/healthz fails until") == 1  # said once, not every turn
    assert answers(f"{url}/healthz", 503)

    frozen.thaw()
    world.wait(lambda: answers(f"{url}/healthz", 200), "/healthz 200 again")
    assert "can be written again" in log_text(world)
    assert world.daemon is not None and world.daemon.alive()


def test_healthz_fails_when_the_loop_stops_turning(world: World) -> None:
    url = listen(world)
    world.start()
    world.wait(lambda: answers(f"{url}/healthz", 200), "/healthz 200")
    world.wait_polls(2)
    # a process that holds the state lock (a stuck command) stops every turn
    with open(world.state_dir / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        world.wait(lambda: answers(f"{url}/healthz", 503), "/healthz 503")
        assert "no completed turn for" in get(f"{url}/healthz").text
    world.wait(lambda: answers(f"{url}/healthz", 200), "/healthz 200 again")


def test_a_probe_that_hangs_up_leaves_no_traceback_in_the_log(world: World) -> None:
    """A cloud probe or a scrape with a short timeout gives up while the daemon is slow:
    the answer then meets a reset connection, which is the client's business."""
    url = listen(world)
    daemon = world.start()
    world.wait(lambda: answers(f"{url}/healthz", 200), "/healthz 200")
    host, port = url.removeprefix("http://").rsplit(":", 1)
    daemon.signal(signal.SIGSTOP)  # slow: the requests wait in the listen queue
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            with socket.create_connection((host, int(port))) as probe:
                probe.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
                # close with a reset, as a client that timed out may
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        daemon.signal(signal.SIGCONT)
    world.wait(lambda: answers(f"{url}/healthz", 200), "/healthz 200 after the resets")
    assert daemon.alive()
    assert "Traceback" not in log_text(world), log_text(world)


# -- probes and metrics -------------------------------------------------------------------------


def test_readyz_follows_the_node_out_of_service_and_back(world: World) -> None:
    url = listen(world)
    world.configure_lb(drain_seconds="1s")
    world.start()
    world.wait(lambda: answers(f"{url}/readyz", 200), "/readyz 200")
    assert get(f"{url}/healthz").text == "ok\n"
    assert get(f"{url}/other").status_code == 404
    eid = world.fake.schedule("Reboot", [NODE], start_on_approval=False)
    world.wait_phase("draining")
    reply = get(f"{url}/readyz")  # from the moment the drain starts
    assert reply.status_code == 503
    assert reply.text in ("not in service: draining\n", "not in service: drained\n")
    world.wait_phase("drained")
    assert answers(f"{url}/readyz", 503)
    world.wait(
        lambda: 'drainer_lb_status{lb="lb1",status="out"} 1.0' in get(f"{url}/metrics").text,
        "the load balancer's view in the metrics",
    )
    metrics = get(f"{url}/metrics").text
    assert 'drainer_lb_up{lb="lb1"} 1.0' in metrics
    assert 'drainer_lb_sessions{lb="lb1"} 0.0' in metrics
    assert "drainer_build_info{version=" in metrics
    since = world.record()["since"]
    assert _gauge(metrics, "drainer_phase_since_timestamp_seconds") == pytest.approx(since)
    assert _gauge(metrics, "drainer_last_poll_success_timestamp_seconds") > 0
    assert _gauge(metrics, "drainer_last_turn_timestamp_seconds") > 0

    world.fake.cancel_event(eid)
    world.wait_phase("in_service")
    world.wait(lambda: answers(f"{url}/readyz", 200), "/readyz 200 again")


def _gauge(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(f"{name} "))
    return float(line.split()[1])


def test_metrics_listen_on_ipv6_loopback(world: World) -> None:
    url = listen(world, "::1")
    world.start()
    world.wait(lambda: answers(f"{url}/healthz", 200), f"{url}/healthz 200")
    assert 'drainer_phase{phase="in_service"} 1.0' in get(f"{url}/metrics").text


# -- SIGHUP --------------------------------------------------------------------------------------


def test_sighup_reloads_the_configuration_and_keeps_the_old_one_on_error(world: World) -> None:
    url = listen(world)
    daemon = world.start()
    world.wait(lambda: answers(f"{url}/healthz", 200), "/healthz 200")
    world.wait_polls(2)

    # a second load balancer appears in the file; the running daemon learns it on SIGHUP
    second = world.dir / "mock-lb2.json"
    entry = {**world.settings["load_balancers"][0], "name": "lb2", "path": str(second)}
    world.configure(load_balancers=[world.settings["load_balancers"][0], entry])
    daemon.signal(signal.SIGHUP)
    world.wait(lambda: "configuration reloaded" in log_text(world), "the reload in the log")
    assert daemon.alive()

    # a broken file: logged, the configuration in use is kept
    good = world.config_path.read_text()
    world.config_path.write_text(good.replace("poll_interval: 200ms", "poll_interval: soon"))
    daemon.signal(signal.SIGHUP)
    world.wait(
        lambda: "configuration not reloaded, keeping the one in use" in log_text(world),
        "the refused reload in the log",
    )
    assert "source.poll_interval" in log_text(world)
    # nor can the state directory move under a running daemon (its lock is there)
    world.config_path.write_text(good.replace(str(world.state_dir), str(world.dir / "elsewhere")))
    daemon.signal(signal.SIGHUP)
    world.wait(
        lambda: "state_dir: cannot change while drainer runs" in log_text(world),
        "the refused state_dir change in the log",
    )
    world.wait_polls(3)
    assert daemon.alive()
    assert not (world.dir / "elsewhere").exists()

    # the reloaded configuration is the one in use: both load balancers are drained
    world.fake.schedule("Reboot", [NODE], start_on_approval=False)
    world.wait_phase("drained")
    world.wait_call("take_out")
    assert world.calls() == ["drain", "take_out"]
    assert '"op": "take_out"' in second.read_text()
    assert 'drainer_lb_up{lb="lb2"} 1.0' in get(f"{url}/metrics").text
    assert daemon.terminate()[0] == 0


def test_sighups_while_starting_are_one_reload_once_running(world: World) -> None:
    """A process without a handler for SIGHUP ends on it, and ``drainer run`` needs most
    of a second to install the daemon's. Its configuration is a FIFO here, so the test
    knows when the process is reading it (after the CLI's first lines, before the
    daemon's imports) and sends its SIGHUPs then, several in a row: drainer keeps them
    for one reload once its loop runs, which reads the FIFO again."""
    fifo = world.dir / "drainer.fifo"
    os.mkfifo(fifo)
    text = world.config_path.read_bytes()
    daemon = Daemon(fifo, world.log_path)
    world.daemons.append(daemon)  # stopped by PID at the end

    def running() -> bool:
        if not daemon.alive():
            raise AssertionError(f"drainer run ended: {daemon.proc.returncode}\n{log_text(world)}")
        return True

    def reading() -> int | None:
        """The FIFO's writing end once drainer opened it to read (ENXIO until then)."""
        running()
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            return None

    def feed(fd: int) -> None:
        try:
            os.set_blocking(fd, True)
            with contextlib.suppress(BrokenPipeError):  # ended meanwhile: running() says so
                os.write(fd, text)
        finally:
            os.close(fd)

    fd = world.wait(reading, "drainer reading its configuration")
    for _ in range(5):
        daemon.signal(signal.SIGHUP)
    feed(fd)
    # the first read is over (its file closed) once the loop is built: then the reload
    world.wait(lambda: running() and "SIGHUP while starting" in log_text(world), "the held SIGHUP")
    feed(world.wait(reading, "the reload reading the configuration again"))
    world.wait(lambda: running() and "configuration reloaded" in log_text(world), "the reload")
    heartbeat = world.state_dir / sidecar.HEARTBEAT
    world.wait(lambda: running() and heartbeat.exists(), "a turn after the reload")
    assert log_text(world).count("SIGHUP while starting") == 1
    assert json.loads(heartbeat.read_text())["pid"] == daemon.pid
    assert daemon.terminate()[0] == 0


def test_a_burst_of_signals_to_a_running_daemon_never_hangs_it(world: World) -> None:
    """Python runs a handler between any two bytecodes of the main thread, nested when
    signals come in a burst: a handler that set an Event could wait on its own lock.
    A thousand SIGHUPs in a row, then a SIGTERM in the middle of more: the daemon goes on
    turning, reloads, and stops cleanly."""
    daemon = world.start()
    world.wait_polls(2)
    for _ in range(1000):
        daemon.signal(signal.SIGHUP)
    world.wait(lambda: "configuration reloaded" in log_text(world), "a reload")
    beats = world.state_dir / sidecar.HEARTBEAT
    before = json.loads(beats.read_text())
    world.wait(lambda: json.loads(beats.read_text()) != before, "a turn after the burst")
    for index in range(400):
        daemon.signal(signal.SIGTERM if index == 200 else signal.SIGHUP)
    world.wait(lambda: not daemon.alive(), "the stop")
    assert daemon.proc.returncode == 0, log_text(world)


# -- systemd's notify protocol -------------------------------------------------------------------


class NotifySocket:
    """A unix datagram socket as systemd listens on; ``address`` for NOTIFY_SOCKET."""

    def __init__(self, *, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dir = Path(tempfile.mkdtemp(prefix="nt-", dir="/tmp"))  # a short path
        if abstract:
            name = f"drainer-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = self.dir / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def receive(self) -> list[str]:
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except TimeoutError:
            pass
        return self.messages

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_systemd_notify(world: World, monkeypatch: pytest.MonkeyPatch, abstract: bool) -> None:
    notify = NotifySocket(abstract=abstract)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
        daemon = world.start()
        world.wait(lambda: any("READY=1" in m for m in notify.receive()), "READY=1")
        ready = next(m for m in notify.messages if "READY=1" in m)
        assert "STATUS=in_service" in ready.splitlines()
        assert f"MAINPID={daemon.pid}" in ready.splitlines()
        world.wait(
            lambda: sum("WATCHDOG=1" in m for m in notify.receive()) >= 3, "a watchdog per turn"
        )
        world.fake.schedule("Reboot", [NODE], start_on_approval=False)
        world.wait_phase("drained")
        world.wait(lambda: any("STATUS=drained" in m for m in notify.receive()), "STATUS=drained")
        assert daemon.terminate()[0] == 0
        world.wait(lambda: any("STOPPING=1" in m for m in notify.receive()), "STOPPING=1")
    finally:
        notify.close()


def test_turns_come_within_the_watchdog_whatever_the_poll_interval(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # WATCHDOG=1 comes after a turn: a poll_interval (or its backoff while the metadata
    # service refuses, 16 times as long) over WatchdogSec had systemd kill a healthy
    # sidecar; turns now come at least every half of it
    notify = NotifySocket(abstract=False)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", notify.address)
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1s, for drainer run only
        world.configure(source={"poll_interval": "60s"})
        daemon = world.start()
        world.wait(
            lambda: sum("WATCHDOG=1" in m for m in notify.receive()) >= 3,
            "three turns, each within half of WatchdogSec",
        )
        assert daemon.terminate()[0] == 0
    finally:
        notify.close()


def test_the_watchdog_is_read_as_systemd_passes_it() -> None:
    assert watchdog_seconds({"WATCHDOG_USEC": "120000000"}, 7) == 120.0
    assert watchdog_seconds({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, 7) == 2.0
    assert watchdog_seconds({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "8"}, 7) is None
    for environ in ({}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"}):
        assert watchdog_seconds(environ, 7) is None


# -- the re-check between polls, pure ------------------------------------------------------------

POLICY = Policy(node_names=frozenset({NODE}), lbs=("a", "b"), rules={}, health_successes=2)
IN = LBView(LBStatus.IN_SERVICE, 0)
OUT = LBView(LBStatus.OUT, 0)
DRAINING_VIEW = LBView(LBStatus.DRAINING, 3)


def test_recheck_takes_the_node_out_again_where_a_reload_forgot_it() -> None:
    for phase in (Phase.DRAINED, Phase.IN_MAINTENANCE, Phase.HELD, Phase.REMOVED):
        record = Record(phase=phase, owned=frozenset({"a", "b"}))
        new, actions = step(record, Recheck({"a": IN, "b": OUT}), 10.0, POLICY)
        assert (new, actions) == (record, [TakeOut(("a",))]), phase
        assert step(record, Recheck({"a": OUT, "b": None}), 10.0, POLICY) == (record, [])


def test_recheck_redrains_and_may_finish_the_drain() -> None:
    record = Record(phase=Phase.DRAINING, owned=frozenset({"a", "b"}), drain_deadline=100.0)
    new, actions = step(record, Recheck({"a": IN, "b": DRAINING_VIEW}), 10.0, POLICY)
    assert (new, actions) == (record, [Drain(("a",))])
    drained = LBView(LBStatus.DRAINING, 0)
    new, actions = step(record, Recheck({"a": drained, "b": drained}), 10.0, POLICY)
    assert new.phase is Phase.DRAINED and TakeOut(("a", "b")) in actions


def test_recheck_never_takes_out_a_node_being_put_back_or_in_service() -> None:
    record = Record(phase=Phase.IN_SERVICE)
    assert not wants_recheck(record, POLICY)
    assert step(record, Recheck({"a": IN, "b": IN}), 10.0, POLICY) == (record, [])
    # being put back: the re-check only goes on with the put-back (a load balancer may
    # wait for its own check), never takes the node out again
    for record in (
        Record(phase=Phase.RECOVERING, owned=frozenset({"a"}), undrain=True),
        Record(phase=Phase.RECOVERING, owned=frozenset({"a"}), health_ok=2, next_health=12),
    ):
        assert wants_recheck(record, POLICY)
        assert step(record, Recheck({"a": IN, "b": IN}), 10.0, POLICY) == (
            record,
            [PutBack(("a",))],
        )
    unhealthy = Record(phase=Phase.RECOVERING, owned=frozenset({"a"}), health_ok=1)
    assert wants_recheck(unhealthy, POLICY)
    unhealthy = replace(unhealthy, next_health=12)  # no health check due in this one
    assert step(unhealthy, Recheck({"a": IN}), 10.0, POLICY) == (
        unhealthy,
        [TakeOut(("a",)), StartChecks(("a",))],
    )


# -- the re-check between polls, with a real HAProxy -----------------------------------------


def haproxy_status(haproxy: HAProxy, name: str = "web1") -> str:
    text = haproxy_cli(haproxy.admin_socket, "show stat app 4 -1")
    row = next(line for line in text.splitlines() if line.startswith(f"app,{name},"))
    return row.split(",")[17]  # status: UP, DRAIN, MAINT...


@pytest.fixture
def backend() -> Iterator[HttpBackend]:
    server = HttpBackend(0)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.skipif(not haproxy_available(), reason="needs /usr/sbin/haproxy")
@pytest.mark.parametrize("how", ["reload", "restart"])
def test_a_forgotten_drain_is_reasserted_before_the_next_poll(
    world: World, backend: HttpBackend, how: str
) -> None:
    body = (
        "backend app\n"
        f"  server web1 127.0.0.1:{backend.port} check inter 200ms\n"
        f"  server web2 127.0.0.1:{backend.port} check inter 200ms\n"
    )
    haproxy = start_haproxy(body, master_worker=how == "reload")
    stops = [haproxy]
    try:
        world.configure(
            node={"name": NODE},
            source={"poll_interval": "60s"},  # the next poll is a minute away
            drain={"recheck_interval": "250ms"},
            load_balancers=[
                {
                    "type": "haproxy",
                    "name": "edge",
                    "instances": [haproxy.admin],
                    "backend": "app",
                    "server": "web1",
                }
            ],
        )
        world.fake.schedule("Reboot", [NODE], start_on_approval=False)
        world.start()
        world.wait_phase("drained")  # the first poll; the drain finished between polls
        world.wait(lambda: haproxy_status(haproxy) == "MAINT", "web1 in MAINT")
        polls = world.requests()

        assert world.daemon is not None
        world.daemon.signal(signal.SIGSTOP)  # to see what the reload left behind
        try:
            if how == "reload":
                haproxy.reload()  # the new worker starts from the configuration file
            else:
                haproxy.halt()
                haproxy = haproxy.start_again()
                stops.append(haproxy)
            wait_until(lambda: haproxy_status(haproxy) == "UP", what="premise: web1 UP again")
        finally:
            world.daemon.signal(signal.SIGCONT)
        world.wait(lambda: haproxy_status(haproxy) == "MAINT", "web1 in MAINT again")
        assert world.requests() == polls  # long before the next metadata poll
        assert world.phase() == "drained"
    finally:
        for each in reversed(stops):
            each.stop()


def test_recheck_interval_is_a_positive_duration() -> None:
    from drainer.config import parse_config
    from drainer.errors import ConfigError

    base = {"health": {"tcp": {"port": 8080}}, "load_balancers": [{"type": "mock"}]}
    assert parse_config(base).drain.recheck_interval == 0.25
    assert parse_config({**base, "drain": {"recheck_interval": "1s"}}).drain.recheck_interval == 1
    for bad in ("0", "0ms", "-1s", "soon"):
        with pytest.raises(ConfigError, match=r"drain\.recheck_interval"):
            parse_config({**base, "drain": {"recheck_interval": bad}})
