"""End to end with real HAProxy 2.6: ``drainer run``, ``drain``, ``undrain`` and ``status``
as processes, against HAProxy processes of our own and the fake metadata service.

What the HAProxy issue asks of drainer as a whole, not of the adapter alone: a reload
(or a restart) that forgets the drain is corrected by the next turns, and requests an
old worker is still finishing keep the drain going (counted through the master CLI, or
assumed until the drain deadline without it); an instance that is down is named at the
drain deadline and drained once it is back; a manual drain keeps ``min_in_service``
unless forced, while a maintenance event drains regardless; ``status`` shows each
instance's view; the node goes back only once drainer's own health check *and*
HAProxy's check pass; agent mode works with a real HAProxy polling.

Every HAProxy's state is read straight from its admin socket (``show servers state``
and ``show stat``, parsed here, independent of the code under test). To look at an
HAProxy right after a reload, before drainer has corrected it, the daemon is paused
with SIGSTOP for the reload and resumed with SIGCONT; the time it then takes to put
the drain back is measured. Every process is stopped by its PID at teardown.

A test whose setup did not produce the situation it is about raises RuntimeError
("premise: ..."), so a broken setup is never mistaken for the behaviour under test.
"""

from __future__ import annotations

import csv
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import NODE, Daemon, World
from lbprocs import HttpBackend, Lab

from drainer.testing import (
    HAProxy,
    free_port,
    haproxy_available,
    haproxy_cli,
    wait_until,
)

pytestmark = pytest.mark.skipif(not haproxy_available(), reason="needs /usr/sbin/haproxy")

POLL = 0.2  # the daemon's poll interval (harness.World: source.poll_interval 200ms)
REASSERT = 3 * POLL + 0.3  # "within a couple of poll intervals", with room for a busy CI box
MAINT_BITS = 0x01 | 0x02 | 0x20
DRAIN_BITS = 0x08 | 0x10


# -- HAProxy as seen from its own admin socket --------------------------------------------


@dataclass(frozen=True)
class Server:
    """One server as HAProxy shows it now."""

    admin: int  # srv_admin_state bits
    op: int  # srv_op_state: 0 stopped, 1 starting, 2 running, 3 stopping
    status: str  # show stat: UP, DOWN, DRAIN, MAINT, "DRAIN (agent)"...
    scur: int
    check: str

    @property
    def forced_maint(self) -> bool:
        return bool(self.admin & 0x01)

    @property
    def forced_drain(self) -> bool:
        return bool(self.admin & 0x08)

    @property
    def ready(self) -> bool:
        """Neither drain nor maint: what a reload leaves behind."""
        return not self.admin & (MAINT_BITS | DRAIN_BITS)

    @property
    def in_service(self) -> bool:
        """Gets new requests: up, neither drained nor in maintenance."""
        return self.ready and self.op in (1, 2)


def server(haproxy: HAProxy, name: str = "web1", backend: str = "app") -> Server:
    lines = haproxy_cli(haproxy.admin_socket, f"show servers state {backend}").splitlines()
    header = next(line for line in lines if line.startswith("# "))[2:].split()
    rows = [dict(zip(header, line.split(), strict=True)) for line in lines[2:] if line.strip()]
    state = next(r for r in rows if r["srv_name"] == name)
    text = haproxy_cli(haproxy.admin_socket, f"show stat {backend} 4 -1")
    stat = next(r for r in csv.DictReader(text[2:].splitlines()) if r["svname"] == name)
    return Server(
        admin=int(state["srv_admin_state"]),
        op=int(state["srv_op_state"]),
        status=stat["status"],
        scur=int(stat["scur"] or 0),
        check=stat["check_status"],
    )


def master_cli(haproxy: HAProxy) -> str:
    """The master CLI address of an HAProxy started with ``master_worker=True``."""
    return f"unix://{haproxy.dir}/master.sock"


def old_workers(haproxy: HAProxy) -> list[int]:
    """PIDs of the workers a reload left behind to finish their connections."""
    text = haproxy_cli(haproxy.dir / "master.sock", "show proc")
    old = text.partition("# old workers")[2].partition("#")[0]
    return [int(line.split()[0]) for line in old.splitlines() if line.strip()]


class Sampler:
    """Calls ``probe`` every 20 ms in a thread and keeps (time, value): what a client
    could have met between two looks of the test."""

    def __init__(self, probe: Callable[[], Any]) -> None:
        self.samples: list[tuple[float, Any]] = []
        self._probe = probe
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with suppress(OSError, StopIteration):
                self.samples.append((time.monotonic(), self._probe()))

    def stop(self, last: Callable[[Any], bool] = bool) -> list[tuple[float, Any]]:
        """Stop once the newest sample satisfies ``last`` (the state the test just saw)."""
        wait_until(lambda: self.samples and last(self.samples[-1][1]), what="a last sample")
        self._stop.set()
        self._thread.join(timeout=5)
        return self.samples


def changes(values: list[Any]) -> list[Any]:
    """``values`` without repeats in a row: the sequence of states."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


# -- processes the tests start --------------------------------------------------------------


def use_haproxy(world: World, *instances: HAProxy | str, **options: Any) -> list[str]:
    """Point ``world`` at ``instances`` (their admin socket, or a runtime API address) for
    backend app, server web1; return the load balancers' names."""
    addresses = [i if isinstance(i, str) else i.admin for i in instances]
    entry = {
        "type": "haproxy",
        "name": "edge",
        "instances": addresses,
        "backend": "app",
        "server": "web1",
        "connect_timeout": 0.5,
        "timeout": 1.0,
        **options,
    }
    world.configure(load_balancers=[entry])
    return [f"edge@{address}" for address in addresses]


def two_servers(web1: int, web2: int) -> str:
    return (
        "backend app\n"
        f"  server web1 127.0.0.1:{web1} check inter 200ms\n"
        f"  server web2 127.0.0.1:{web2} check inter 200ms\n"
    )


def pinned(front: int, web1: int, web2: int) -> str:
    """A frontend whose ``/slow`` requests go to web1 even while it drains (``use-server``
    applies to a drained server, not to one in maint): the test decides what is open."""
    return f"""
frontend fe
  bind 127.0.0.1:{front}
  default_backend app
backend app
  use-server web1 if {{ path /slow }}
  server web1 127.0.0.1:{web1} check inter 200ms
  server web2 127.0.0.1:{web2} check inter 200ms
"""


@contextmanager
def paused(daemon: Daemon | None) -> Iterator[None]:
    """SIGSTOP the daemon for the block (it then sees the world as it is afterwards)."""
    assert daemon is not None and daemon.alive()
    daemon.signal(signal.SIGSTOP)
    try:
        stat = Path(f"/proc/{daemon.pid}/stat")
        wait_until(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] in "Tt", what="stopped")
        yield
    finally:
        daemon.signal(signal.SIGCONT)


def seconds_until(world: World, probe: Callable[[], object], what: str) -> float:
    """How long ``probe`` takes to hold (at most 10 s; the daemon's log if never)."""
    started = time.monotonic()
    world.wait(probe, what, timeout=10.0)
    return time.monotonic() - started


def wait_out(world: World, haproxy: HAProxy) -> None:
    """The record is saved before its actions run: once the phase says the node is out,
    the maint follows within a moment."""
    world.wait(lambda: server(haproxy).forced_maint, f"web1 in maint on {haproxy.admin}", 5.0)


def start_event(world: World) -> str:
    """A Reboot that has already started (no notice): drained at once, never approved."""
    return world.fake.schedule("Reboot", [NODE], status="Started")


# -- 1. a reload during the drain, and while the node is out --------------------------------


def test_a_reload_while_draining_and_while_out_is_reconciled(world: World, lab: Lab) -> None:
    web1, web2, front = lab.backend(), lab.backend(), free_port()
    haproxy = lab.haproxy(pinned(front, web1.port, web2.port), master_worker=True)
    use_haproxy(world, haproxy, masters=[master_cli(haproxy)])  # the old worker counted
    world.configure(drain={"timeout": "30s"})
    lab.hold(front, web1)  # an in-flight request: the drain lasts until it is done
    world.start()
    start_event(world)
    world.wait(lambda: server(haproxy).forced_drain, "web1 drained by the daemon")
    world.wait_phase("draining")

    with paused(world.daemon):
        haproxy.reload()
        forgotten = server(haproxy)
        assert forgotten.ready and forgotten.status == "UP", forgotten  # the reload forgot
        lab.hold(front, web1)  # and the new worker has a request of its own to finish
        wait_until(lambda: server(haproxy).scur == 1, what="scur=1 in the new worker")
    took = seconds_until(world, lambda: server(haproxy).forced_drain, "the drain re-asserted")
    assert took < REASSERT, f"drain re-asserted {took:.2f}s after the reload"
    assert world.phase() == "draining"
    assert not server(haproxy).forced_maint  # still one session: drained, not taken out

    web1.release()
    world.wait_phase("in_maintenance")
    wait_out(world, haproxy)

    with paused(world.daemon):
        haproxy.reload()
        forgotten = server(haproxy)
        assert forgotten.in_service and forgotten.status == "UP", forgotten
    took = seconds_until(world, lambda: server(haproxy).forced_maint, "maint re-asserted")
    assert took < REASSERT, f"maint re-asserted {took:.2f}s after the reload"
    world.wait_polls(3)
    assert world.phase() == "in_maintenance"
    assert server(haproxy).forced_maint and server(haproxy).status == "MAINT"


def reload_with_a_request_left(
    world: World, lab: Lab, *, timeout: str, master: bool
) -> tuple[HAProxy, HttpBackend, str, int]:
    """Drain web1 while it holds a request, reload: the request is left in the old worker.
    Returns the HAProxy, web1, the load balancer's name and the old worker's PID."""
    web1, web2, front = lab.backend(), lab.backend(), free_port()
    haproxy = lab.haproxy(pinned(front, web1.port, web2.port), master_worker=True)
    (name,) = use_haproxy(world, haproxy, masters=[master_cli(haproxy)] if master else None)
    world.configure(drain={"timeout": timeout})
    lab.hold(front, web1)
    world.start()
    start_event(world)
    world.wait(lambda: server(haproxy).forced_drain, "web1 drained by the daemon")
    world.wait_phase("draining")

    with paused(world.daemon):
        haproxy.reload()
    world.wait_polls(5)
    # (RuntimeError, not AssertionError: a broken premise is not the failure tested.)
    old = old_workers(haproxy)
    if len(old) != 1 or server(haproxy).scur != 0:
        raise RuntimeError("premise: the old worker alone should be finishing the request")
    return haproxy, web1, name, old[0]


def test_sessions_left_in_the_old_worker_keep_the_drain_going(world: World, lab: Lab) -> None:
    """With the master CLI configured, the old worker's sessions are counted: the drain
    ends as soon as it is done, not at the deadline."""
    haproxy, web1, name, old = reload_with_a_request_left(world, lab, timeout="30s", master=True)
    assert world.phase() == "draining", f"the node is {world.phase()} while {old} serves it"
    code, data = world.status()
    assert (code, data["load_balancers"][name]["sessions"]) == (0, 1), data
    assert data["load_balancers"][name]["detail"].endswith(f"; old worker {old} scur=1")

    web1.release()
    took = seconds_until(world, lambda: world.phase() == "in_maintenance", "the node out")
    assert took < REASSERT, f"out {took:.2f}s after the old worker's request ended"
    assert world.record()["alert"] == ""  # done, not cut at a deadline
    wait_out(world, haproxy)


def test_without_the_master_a_reload_keeps_the_drain_until_its_deadline(
    world: World, lab: Lab
) -> None:
    """Without it, the old worker is out of sight: its sessions are assumed (at least 1)
    until the drain deadline."""
    haproxy, web1, name, old = reload_with_a_request_left(world, lab, timeout="6s", master=False)
    assert world.phase() == "draining", f"the node is {world.phase()} while {old} serves it"
    web1.release()
    wait_until(lambda: not old_workers(haproxy), what="the old worker done and gone")
    world.wait_polls(3)
    assert world.phase() == "draining"  # drainer cannot know: it waits for the deadline
    code, data = world.status()
    view = data["load_balancers"][name]
    assert (code, view["status"], view["sessions"]) == (0, "draining", 1), data
    assert view["detail"].endswith(": an old worker may still serve it"), view
    assert f"reloaded since the drain (worker {old}, now " in view["detail"], view

    world.wait_phase("in_maintenance")
    record = world.record()
    assert record["alert"] == "drain deadline passed with 1 sessions left", record
    assert record["since"] >= record["drain_deadline"]  # out at the deadline, not before
    wait_out(world, haproxy)


# -- 2. two instances, one down ----------------------------------------------------------------


def test_an_instance_down_is_named_at_the_deadline_and_drained_when_back(
    world: World, lab: Lab
) -> None:
    web1, web2 = lab.backend(), lab.backend()
    body = two_servers(web1.port, web2.port)
    up, down = lab.haproxy(body), lab.haproxy(body)
    up_name, down_name = use_haproxy(world, up, down)
    world.configure(drain={"timeout": "2s"})
    down.halt()  # stopped: its socket file is left behind, and refuses connections
    assert down.admin_socket.exists()

    world.start()
    start_event(world)
    world.wait(lambda: server(up).forced_drain, "the reachable instance drained")
    drained = time.monotonic()
    assert world.phase() == "draining"
    world.wait_phase("in_maintenance")
    assert time.monotonic() - drained > 1.0  # out only at the deadline: one instance unknown
    wait_out(world, up)

    alert = f"drain deadline passed with 0 sessions left; unreachable: {down_name}"
    assert world.record()["alert"] == alert
    assert alert in world.log_path.read_text()  # the engine's Alert, logged
    code, data = world.status()
    assert code == 1  # an unreachable load balancer needs a person
    assert data["alert"] == alert
    assert set(data["load_balancers"]) == {up_name, down_name}
    assert data["load_balancers"][up_name] == {
        "status": "out",
        "sessions": 0,
        "detail": "app/web1 MAINT scur=0 check=-",
        "owned": True,
    }
    error = data["load_balancers"][down_name]["error"]
    assert error == f"{down_name}: cannot read state: {down.admin} unreachable: Connection refused"
    text = world.cli("status").stdout
    assert f"lb:     {down_name}: {error}" in text.splitlines()
    assert f"ALERT:  {alert}" in text.splitlines()

    with paused(world.daemon):
        back = lab.again(down)
        assert server(back).in_service  # a fresh process: the node is back in service there
    took = seconds_until(world, lambda: server(back).forced_maint, "the instance back taken out")
    assert took < REASSERT, f"taken out {took:.2f}s after the instance came back"
    assert server(up).forced_maint
    code, data = world.status()
    assert code == 0 and data["phase"] == "in_maintenance"
    assert {name: lb["status"] for name, lb in data["load_balancers"].items()} == {
        up_name: "out",
        down_name: "out",
    }


def refusing_pair(world: World, lab: Lab) -> tuple[HAProxy, HAProxy, str, str]:
    """Two instances; drainer reaches the second through a ``level operator`` socket: it
    reads the node's state there, and every drain or maint is refused."""
    web1, web2 = lab.backend(), lab.backend()
    good = lab.haproxy(two_servers(web1.port, web2.port))
    bad = lab.haproxy(
        two_servers(web1.port, web2.port),
        global_lines=["stats socket {dir}/operator.sock level operator"],
    )
    good_name, bad_name = use_haproxy(world, good, f"unix://{bad.dir}/operator.sock")
    return good, bad, good_name, bad_name


def test_an_instance_that_refuses_is_named_at_the_deadline(world: World, lab: Lab) -> None:
    good, bad, good_name, bad_name = refusing_pair(world, lab)
    world.configure(drain={"timeout": "1s"})
    world.start()
    start_event(world)
    world.wait_phase("in_maintenance")
    try:
        wait_out(world, good)
    except AssertionError as exc:
        raise RuntimeError("premise: the first instance should take the node out") from exc
    if not server(bad).in_service:
        raise RuntimeError("premise: the second instance refused, so web1 is in service there")
    alert = world.record()["alert"]
    assert bad_name in alert and good_name not in alert, f"alert: {alert!r}"
    code, data = world.status()
    assert (code, data["needs_attention"]) == (1, True), data


def test_a_refused_drain_is_logged_once(world: World, lab: Lab) -> None:
    _, _, _, bad_name = refusing_pair(world, lab)
    world.configure(drain={"timeout": "30s"})
    world.start()
    start_event(world)
    world.wait_phase("draining")
    world.wait_polls(6)
    lines = world.log_path.read_text().splitlines()
    refused = [line for line in lines if "refused `set server app/web1 state drain`" in line]
    if not refused:
        raise RuntimeError("premise: the refused drain should be logged")
    again = [line for line in lines if f"{bad_name}: reachable again" in line]
    assert (len(refused), again) == (1, []), "\n".join(refused + again)


# -- 3. min_in_service ------------------------------------------------------------------------


def test_manual_drain_keeps_min_in_service_unless_forced_and_events_drain_anyway(
    world: World, lab: Lab
) -> None:
    web1, web2 = lab.backend(), lab.backend()
    haproxy = lab.haproxy(
        "backend app\n"
        f"  server web1 127.0.0.1:{web1.port} check inter 200ms\n"
        f"  server web2 127.0.0.1:{web2.port} check inter 200ms\n"
        f"  server web3 127.0.0.1:{free_port()} check inter 200ms\n"  # nothing listens: DOWN
    )
    wait_until(lambda: server(haproxy, "web3").status == "DOWN", what="web3 DOWN")
    (name,) = use_haproxy(world, haproxy, min_in_service=2)
    refusal = (
        f"drainer: {name}: refusing to drain {NODE}: backend app would keep"
        " 1 other server(s) in service, min_in_service is 2 (use --force to drain anyway)"
    )

    refused = world.cli("drain")
    assert (refused.returncode, refused.stderr.strip()) == (1, refusal)
    assert server(haproxy).in_service and world.record() == {}  # nothing was touched

    forced = world.cli("drain", "--force", "--wait", "--timeout", "5")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines()[-1] == "held: no connections left", forced.stdout
    assert server(haproxy).forced_maint and world.phase() == "held"

    undone = world.cli("undrain", "--timeout", "10")
    assert undone.returncode == 0, undone.stderr
    assert server(haproxy).in_service and world.phase() == "in_service"
    again = world.cli("drain")  # web2 is still the only other server UP
    assert (again.returncode, again.stderr.strip()) == (1, refusal)

    world.start()
    start_event(world)
    world.wait_phase("in_maintenance")
    wait_out(world, haproxy)
    assert server(haproxy, "web2").in_service  # one left, below min_in_service: a reboot wins


# -- 4. status per instance ----------------------------------------------------------------------


def test_status_shows_each_instance(world: World, lab: Lab) -> None:
    web1, web2, front = lab.backend(), lab.backend(), free_port()
    first = lab.haproxy(pinned(front, web1.port, web2.port))
    # The second instance checks web1 on a port where nothing listens: DOWN there only.
    second = lab.haproxy(
        pinned(free_port(), web1.port, web2.port).replace(
            f"{web1.port} check inter 200ms", f"{web1.port} check inter 200ms port {free_port()}"
        )
    )
    wait_until(lambda: server(second).status == "DOWN", what="web1 DOWN on the second")
    one, two = use_haproxy(world, first, second)
    held = lab.hold(front, web1)

    drained = world.cli("drain")
    assert drained.returncode == 0, drained.stderr
    # HAProxy puts "* " before a check status while that check runs.
    first_detail = r"app/web1 DRAIN scur=1 check=(\* )?L4OK"
    second_detail = r"app/web1 DOWN scur=0 check=(\* )?L4CON"
    text = world.cli("status")
    assert text.returncode == 3, text.stderr  # no drainer run in this test: exit 3
    lines = text.stdout.splitlines()
    assert lines[0] == f"node:   {NODE}"
    assert lines.pop(1).startswith("sidecar: not running")
    assert re.fullmatch(r"phase:  draining \(manual\) since [-\d]+ [:\d]+: manual drain", lines[1])
    assert len(lines) == 4, lines
    mine = r" \(drained by drainer\)"
    assert re.fullmatch(
        rf"lb:     {re.escape(one)}: draining, 1 sessions: {first_detail}{mine}", lines[2]
    )
    assert re.fullmatch(
        rf"lb:     {re.escape(two)}: draining, 0 sessions: {second_detail}{mine}", lines[3]
    )

    code, data = world.status()
    assert code == 3 and data["sidecar"]["running"] is False
    assert data["phase"] == "draining" and data["owned"] == sorted([one, two])
    lbs = data["load_balancers"]
    assert re.fullmatch(first_detail, lbs[one].pop("detail"))
    assert re.fullmatch(second_detail, lbs[two].pop("detail"))
    assert lbs == {
        one: {"status": "draining", "sessions": 1, "owned": True},
        two: {"status": "draining", "sessions": 0, "owned": True},
    }

    web1.release()
    assert b"200 OK" in held.recv(4096)
    finished = world.cli("drain", "--wait", "--timeout", "5")
    assert finished.returncode == 0, finished.stderr
    code, data = world.status()
    assert (code, data["phase"]) == (3, "held")
    assert {name: (lb["status"], lb["detail"]) for name, lb in data["load_balancers"].items()} == {
        one: ("out", "app/web1 MAINT scur=0 check=-"),
        two: ("out", "app/web1 MAINT scur=0 check=-"),
    }


# -- 5. back only after both health checks ---------------------------------------------------------


def test_back_only_after_drainers_check_and_haproxys_check(world: World, lab: Lab) -> None:
    port = free_port()
    app, other = lab.web(port, "web1"), lab.web(free_port(), "web2")
    haproxy = lab.haproxy(
        "backend app\n"
        "  option httpchk GET /healthz\n"
        f"  server web1 127.0.0.1:{port} check inter 200ms rise 2 fall 2\n"
        f"  server web2 127.0.0.1:{other.port} check inter 200ms\n"
    )
    wait_until(lambda: server(haproxy).status == "UP", what="web1 UP")
    use_haproxy(world, haproxy)
    world.start()
    event = start_event(world)
    world.wait_phase("in_maintenance")
    wait_out(world, haproxy)

    # The VM reboots: drainer dies, the application comes back unhealthy.
    world.kill9()
    app.stop()
    world.reboot()
    world.health.status = 503
    app = lab.web(port, "web1")
    app.healthy = False
    sampler = Sampler(lambda: server(haproxy))
    world.start()
    world.wait_phase("recovering")
    world.fake.end_event(event)

    hits = world.health.hits
    world.wait_polls(6)
    assert world.health.hits >= hits + 2  # drainer keeps checking...
    # ...and waits, while HAProxy's own check runs too: drain, forced DOWN (no request)
    web1 = server(haproxy)
    assert world.phase() == "recovering" and web1.forced_drain and not web1.forced_maint
    assert (web1.status, web1.op) == ("DOWN", 0), web1

    world.health.status = 200  # drainer's check passes; HAProxy's check still fails
    time.sleep(6 * 0.2)  # six HAProxy check intervals
    web1 = server(haproxy)
    assert (web1.status, web1.check.lstrip("* "), web1.op) == ("DOWN", "L7STS", 0), web1
    assert world.phase() == "recovering"

    app.healthy = True
    healthy = time.monotonic()
    world.wait_phase("in_service")
    web1 = server(haproxy)
    assert web1.in_service and (web1.status, web1.check.lstrip("* ")) == ("UP", "L7OK"), web1
    samples = sampler.stop(lambda s: s.in_service)
    early = [s for at, s in samples if at < healthy and s.in_service]
    assert early == [], f"web1 took traffic before HAProxy's check passed: {early[:3]}"


# -- 6. agent mode --------------------------------------------------------------------------------


def test_agent_mode_end_to_end(world: World, lab: Lab) -> None:
    app, other, agent_port = lab.web(free_port(), "web1"), lab.web(free_port(), "web2"), free_port()
    haproxy = lab.haproxy(
        "backend app\n"
        f"  server web1 127.0.0.1:{app.port} check inter 200ms"
        f" agent-check agent-addr 127.0.0.1 agent-port {agent_port} agent-inter 200ms\n"
        f"  server web2 127.0.0.1:{other.port} check inter 200ms\n"
    )
    world.configure(
        load_balancers=[
            {
                "type": "haproxy-agent",
                "name": "agent",
                "listen": f"127.0.0.1:{agent_port}",
                "service_port": app.port,
                "peers": ["127.0.0.1"],
            }
        ]
    )
    world.start()
    seen = world.state_dir / "agent-agent.seen.json"
    world.wait(seen.exists, "HAProxy polled the agent")
    assert server(haproxy).status == "UP"
    sampler = Sampler(lambda: server(haproxy).status)

    # A connection to the application keeps the drain going until the test closes it.
    conn = socket.create_connection(("127.0.0.1", app.port))
    event = start_event(world)
    world.wait(lambda: server(haproxy).status == "DRAIN (agent)", "DRAIN (agent)")
    world.wait_polls(3)
    assert world.phase() == "draining" and server(haproxy).status == "DRAIN (agent)"

    conn.close()
    world.wait_phase("in_maintenance")
    wait_until(lambda: server(haproxy).status == "MAINT", what="MAINT from the agent")

    world.health.status = 503
    world.fake.end_event(event)
    world.wait_phase("recovering")
    world.wait_polls(4)
    assert world.phase() == "recovering" and server(haproxy).status == "MAINT"

    world.health.status = 200
    healthy = time.monotonic()
    world.wait_phase("in_service")
    wait_until(lambda: server(haproxy).status == "UP", what="UP after the agent said ready")
    samples = sampler.stop(lambda status: status == "UP")
    before = changes([s for at, s in samples if at < healthy])
    assert before == ["UP", "DRAIN (agent)", "MAINT"], before
    assert changes([s for at, s in samples if at >= healthy])[-1] == "UP"
