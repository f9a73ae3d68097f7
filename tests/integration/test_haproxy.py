"""The HAProxy runtime-API client and the ``haproxy`` adapter, against real HAProxy 2.6.

Parsers are checked on replies captured from HAProxy 2.6.12; everything else runs
against HAProxy processes of our own (tests/lbprocs.py), stopped by PID at teardown.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from lbprocs import HttpBackend, canned_cli, silent_listener
from pydantic import ValidationError

from drainer.adapters.base import AdapterContext, LBStatus, LoadBalancer
from drainer.adapters.haproxy.client import (
    FORCED_DRAIN,
    FORCED_MAINT,
    HAProxyClient,
    OpState,
    Processes,
    ServerState,
    StatRow,
    parse_address,
    parse_info_pid,
    parse_node_address,
    parse_proc,
    parse_servers_state,
    parse_stat,
)
from drainer.adapters.haproxy.runtime import (
    PLUGIN,
    HAProxyConfig,
    HAProxyLoadBalancer,
    admin_from_row,
    create,
    put_back_step,
)
from drainer.errors import ConfigError, PermanentAdapterError, TransientAdapterError
from drainer.testing import (
    HAProxy,
    free_port,
    haproxy_available,
    haproxy_cli,
    start_haproxy,
    wait_until,
)

needs_haproxy = pytest.mark.skipif(not haproxy_available(), reason="needs /usr/sbin/haproxy")


@pytest.fixture
def start() -> Iterator[Callable[..., HAProxy]]:
    started: list[HAProxy] = []

    def _start(body: str, **options: Any) -> HAProxy:
        started.append(start_haproxy(body, **options))
        return started[-1]

    yield _start
    for haproxy in started:
        haproxy.stop()


@pytest.fixture
def context(tmp_path: Path) -> AdapterContext:
    """Where the adapter remembers the worker a drain began in."""
    return AdapterContext(node="vm1", state_dir=tmp_path / "state")


@pytest.fixture
def backend() -> Iterator[Callable[..., HttpBackend]]:
    started: list[HttpBackend] = []

    def _backend(port: int = 0) -> HttpBackend:
        started.append(HttpBackend(port))
        return started[-1]

    yield _backend
    for server in started:
        server.stop()


def make_lb(context: AdapterContext, *instances: str, **options: Any) -> HAProxyLoadBalancer:
    lbs = create(HAProxyConfig(type="haproxy", instances=list(instances), **options), context)
    assert len(lbs) == 1 and isinstance(lbs[0], HAProxyLoadBalancer)
    return lbs[0]


def row(haproxy: HAProxy, backend: str, server: str) -> ServerState:
    states = HAProxyClient(haproxy.admin).servers_state(backend)
    return next(s for s in states if s.server == server)


def two_servers(port1: int, port2: int, extra: str = "") -> str:
    return f"""
backend app
  server web1 127.0.0.1:{port1} check inter 200ms {extra}
  server web2 127.0.0.1:{port2} check inter 200ms
"""


# -- parsing, on replies captured from HAProxy 2.6.12 ------------------------------------

SERVERS_STATE = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight"
    " srv_iweight srv_time_since_last_change srv_check_status srv_check_result"
    " srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id"
    " srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr"
    " srv_agent_port\n"
    "3 app 1 web1 127.0.0.1 2 8 1 1 0 6 3 4 6 0 0 0 - 18081 - 0 0 - - 0\n"
    "3 app 2 web2 127.0.0.1 2 0 1 1 1 1 0 2 0 0 0 0 - 18082 - 0 0 - - 0\n"
    "5 dead 1 w3 127.0.0.1 0 1 1 1 1 8 2 0 14 0 0 0 - 18089 - 0 0 - - 0\n\n"
)

STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
    "wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,"
    "throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,\n"
    "app,web1,0,0,3,3,,0,0,0,,0,,0,0,0,0,DRAIN,1,1,0,0,0,1,0,,1,3,1,,0,,2,0,,0,L4OK,,\n"
    "app,web2,0,0,0,0,,0,0,0,,0,,0,0,0,0,no check,1,1,0,,,2,,,1,3,2,,0,,2,0,,0,,,\n"
    "app,BACKEND,0,0,3,3,999,0,0,0,0,0,,0,0,0,0,UP,1,1,0,,0,2,0,,1,3,0,,0,,1,0,,0,,,\n\n"
)


def test_servers_state_is_parsed_by_its_header() -> None:
    web1, web2, w3 = parse_servers_state(SERVERS_STATE)
    assert web1 == ServerState(
        backend="app", server="web1", address="127.0.0.1", port=18081,
        op_state=OpState.RUNNING, admin_state=8, check_state=6,
    )  # fmt: skip
    assert web1.forced_drain and not web1.maint and web1.checked and web1.up
    assert web2.in_service and not web2.checked
    assert w3.forced_maint and w3.checked and not w3.up  # 14: the check is paused in maint

    # Columns moved and one added (as between versions): the same rows come out.
    lines = SERVERS_STATE.splitlines()
    header = lines[1][2:].split()
    order = [header.index(n) for n in reversed(header)]
    shuffled = ["1", "# " + " ".join(header[i] for i in order) + " srv_new_in_3x"]
    shuffled += [" ".join([line.split()[i] for i in order] + ["x"]) for line in lines[2:5]]
    assert parse_servers_state("\n".join(shuffled) + "\n\n") == [web1, web2, w3]


def test_stat_is_parsed_by_its_header_and_keeps_servers_only() -> None:
    rows = parse_stat(STAT)
    assert rows == [
        StatRow(backend="app", server="web1", status="DRAIN", scur=3, check_status="L4OK"),
        StatRow(backend="app", server="web2", status="no check", scur=0, check_status=""),
    ]
    header, *lines = STAT.strip().splitlines()
    names = header[2:].rstrip(",").split(",")
    moved = ["# " + ",".join(reversed(names))]
    moved += [",".join(reversed(line.split(",")[: len(names)])) for line in lines]
    assert parse_stat("\n".join(moved) + "\n") == rows


SHOW_PROC = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
    "12935           master          1 [failed: 0]   0d00h00m02s     2.6.12-1+deb12u4\n"
    "# workers\n"
    "12964           worker          0               0d00h00m00s     2.6.12-1+deb12u4\n"
    "# old workers\n"
    "12937           worker          1               0d00h00m02s     2.6.12-1+deb12u4\n"
    "# programs\n\n"
)


def test_show_proc_and_show_info_are_parsed() -> None:
    assert parse_proc(SHOW_PROC) == Processes(workers=(12964,), old_workers=(12937,))
    assert parse_proc(SHOW_PROC).all == (12964, 12937)
    no_reload = SHOW_PROC.replace("# old workers\n", "").replace("12937  ", "# programs\n")
    assert parse_proc(no_reload).old_workers == ()
    with pytest.raises(ValueError, match="header"):
        parse_proc("Unknown command, but maybe one of the following ones...\n\n")
    assert parse_info_pid("Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nPid: 12964\n") == 12964


@pytest.mark.parametrize(
    ("admin_state", "maint", "drain"),
    [(0x00, False, False), (0x01, True, False), (0x02, True, False), (0x20, True, False),
     (0x04, False, False), (0x40, False, False), (0x05, True, False), (0x08, False, True),
     (0x10, False, True), (0x0C, False, True), (0x09, True, True)],
)  # fmt: skip
def test_admin_state_is_a_bit_mask(admin_state: int, maint: bool, drain: bool) -> None:
    state = ServerState("b", "s", "10.0.0.4", 80, OpState.RUNNING, admin_state, 0)
    assert (state.maint, state.drain) == (maint, drain)


@pytest.mark.parametrize(
    ("admin_state", "op_state", "check_state", "step"),
    [(0x01, OpState.STOPPED, 14, "recheck"), (0x01, OpState.STOPPED, 0, "ready"),
     (0x09, OpState.STOPPED, 14, "recheck"), (0x08, OpState.STOPPED, 6, "wait"),
     (0x08, OpState.RUNNING, 6, "ready"), (0x08, OpState.STARTING, 6, "ready"),
     (0x08, OpState.STOPPED, 0, "ready"), (0x02, OpState.STOPPED, 6, "wait"),
     (0x10, OpState.RUNNING, 6, "wait"), (0x00, OpState.STOPPED, 6, "done"),
     (0x04, OpState.RUNNING, 0, "done")],
)  # fmt: skip
def test_put_back_step(admin_state: int, op_state: int, check_state: int, step: str) -> None:
    state = ServerState("b", "s", "10.0.0.4", 80, op_state, admin_state, check_state)
    assert put_back_step(state) == step


def test_addresses_are_checked() -> None:
    assert parse_address("unix:///run/haproxy/admin.sock") == "/run/haproxy/admin.sock"
    assert parse_address("tcp://127.0.0.1:9999") == ("127.0.0.1", 9999)
    assert parse_address("tcp://[::1]:9999") == ("::1", 9999)
    for bad in ["/run/haproxy/admin.sock", "unix://run/admin.sock", "tcp://host", "http://h:1"]:
        with pytest.raises(ConfigError, match=bad):
            HAProxyClient(bad)
    assert parse_node_address("10.0.0.4")[1] is None
    assert parse_node_address("10.0.0.4:8080")[1] == 8080
    assert parse_node_address("[::1]:8080")[1] == 8080
    assert str(parse_node_address("::1")[0]) == "::1"
    for bad in ["web1", "10.0.0.4:http", "10.0.0.4:0", "[::1]"]:
        with pytest.raises(ConfigError, match="node address"):
            parse_node_address(bad)


def test_config_is_validated() -> None:
    ok = HAProxyConfig(type="haproxy", instances=["tcp://10.0.0.1:9999"], address="10.0.0.4")
    assert (ok.connect_timeout, ok.timeout, ok.min_in_service) == (2.0, 5.0, 1)
    assert PLUGIN.config_model is HAProxyConfig
    assert ok.masters is None
    pair = HAProxyConfig(
        type="haproxy", instances=["tcp://a:1", "tcp://b:1"], masters=["tcp://a:2", "tcp://b:2"],
        address="10.0.0.4",
    )  # fmt: skip
    assert pair.masters == ["tcp://a:2", "tcp://b:2"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"address": "10.0.0.4", "backend": "app", "server": "web1"}, "not both"),
        ({"backend": "app"}, "set `backend` and `server`"),
        ({"address": "web1.example"}, "invalid node address"),
        ({"backend": "app", "server": "web1;shutdown sessions"}, "invalid HAProxy server name"),
        ({"backend": "app\nshow info", "server": "web1"}, "invalid HAProxy backend name"),
        ({"instances": [], "address": "10.0.0.4"}, "at least 1 item"),
        ({"instances": ["/run/haproxy/admin.sock"], "address": "10.0.0.4"}, "admin.sock"),
        ({"instances": ["tcp://h:1", "tcp://h:1"], "address": "10.0.0.4"}, "listed twice"),
        ({"address": "10.0.0.4", "port": 80}, "Extra inputs are not permitted"),
        ({"address": "10.0.0.4", "masters": []}, "1 instance\\(s\\), 0 master\\(s\\)"),
        ({"address": "10.0.0.4", "masters": ["tcp://h:1", "tcp://h:2"]}, "one master CLI per"),
        ({"address": "10.0.0.4", "masters": ["/run/haproxy/master.sock"]}, "master.sock"),
        (
            {
                "instances": ["tcp://a:1", "tcp://b:1"],
                "masters": ["tcp://h:2", "tcp://h:2"],
                "address": "10.0.0.4",
            },
            "masters are listed twice",
        ),
    ]
    for options, message in cases:
        options.setdefault("instances", ["unix:///run/haproxy/admin.sock"])
        with pytest.raises(ValidationError, match=message):
            HAProxyConfig(type="haproxy", **options)


def test_names_are_validated_before_anything_is_sent() -> None:
    # Connecting would raise TransientAdapterError: ConfigError proves nothing was sent.
    client = HAProxyClient("unix:///nonexistent/admin.sock")
    for backend, server in [("app", "web1;shutdown sessions"), ("app", "web1\nshow info"),
                            ("app;x", "web1"), ("app", "web 1"), ("app", "")]:  # fmt: skip
        with pytest.raises(ConfigError, match="invalid HAProxy"):
            client.set_state(backend, server, "drain")
        with pytest.raises(ConfigError, match="invalid HAProxy"):
            client.shutdown_sessions(backend, server)
    with pytest.raises(ConfigError):
        client.servers_state("app;shutdown sessions server app/web1")
    with pytest.raises(TransientAdapterError):
        client.set_state("app", "web1", "drain")


# -- against real HAProxy ----------------------------------------------------------------


@needs_haproxy
def test_drain_maint_ready_round_trip(context: AdapterContext, start: Any, backend: Any) -> None:
    haproxy = start(two_servers(backend().port, backend().port))
    lb = make_lb(context, haproxy.admin, backend="app", server="web1")
    assert lb.name == f"haproxy@{haproxy.admin}" and isinstance(lb, LoadBalancer)
    assert lb.state().status is LBStatus.IN_SERVICE

    lb.drain()
    lb.drain()  # idempotent
    view = lb.state()
    assert view.status is LBStatus.DRAINING
    assert view.detail == "app/web1 DRAIN scur=0 check=L4OK"
    assert row(haproxy, "app", "web1").forced_drain
    assert row(haproxy, "app", "web2").in_service  # only the node moved

    lb.take_out(kill=False)
    lb.drain()  # re-asserting the drain never moves maint back to drain
    assert lb.state().status is LBStatus.OUT
    assert row(haproxy, "app", "web1").forced_maint

    assert lb.put_back() is False  # maint -> drain, and HAProxy's check must pass first
    assert lb.state().status is LBStatus.DRAINING
    wait_until(lb.put_back, timeout=3, what="put_back() once the check passed")
    assert lb.put_back() is True
    view = lb.state()
    assert view.status is LBStatus.IN_SERVICE and view.detail.startswith("app/web1 UP ")
    assert row(haproxy, "app", "web1").in_service


@needs_haproxy
def test_leaving_maint_marks_a_checked_server_up_without_a_check(start: Any) -> None:
    """The HAProxy 2.6 trap that put_back() works around: drain from maint is UP at once."""
    haproxy = start(f"backend app\n  server web1 127.0.0.1:{free_port()} check inter 200ms\n")
    client = HAProxyClient(haproxy.admin)
    wait_until(lambda: not row(haproxy, "app", "web1").up, what="web1 DOWN (nothing listens)")
    client.set_state("app", "web1", "maint")
    client.set_state("app", "web1", "drain")
    assert row(haproxy, "app", "web1").op_state == OpState.RUNNING  # no check has run
    wait_until(lambda: not row(haproxy, "app", "web1").up, what="the next check fails")


@needs_haproxy
def test_put_back_waits_for_haproxys_own_check(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    port = free_port()  # nothing listens yet: the node's application is not up
    haproxy = start(two_servers(port, backend().port))
    lb = make_lb(context, haproxy.admin, backend="app", server="web1")
    wait_until(lambda: not row(haproxy, "app", "web1").up, what="web1 DOWN")
    lb.take_out(kill=False)

    assert lb.put_back() is False
    assert lb.put_back() is False  # without `health down` HAProxy would call it UP here
    web1 = row(haproxy, "app", "web1")
    assert web1.forced_drain and not web1.maint and not web1.up
    deadline = time.monotonic() + 0.8  # four check intervals: still refused
    while time.monotonic() < deadline:
        assert lb.put_back() is False
        assert lb.state().status is LBStatus.DRAINING
        time.sleep(0.1)

    backend(port)  # the application comes up
    wait_until(lb.put_back, timeout=3, what="put_back() after the check passed")
    assert row(haproxy, "app", "web1").in_service
    assert lb.state().detail.startswith("app/web1 UP ")


@needs_haproxy
def test_put_back_without_a_check_is_immediate(context: AdapterContext, start: Any) -> None:
    haproxy = start(
        f"backend app\n  server web1 127.0.0.1:{free_port()}\n"
        f"  server web3 127.0.0.1:{free_port()} disabled\n"
    )
    lb = make_lb(context, haproxy.admin, backend="app", server="web1")
    lb.take_out(kill=False)
    assert lb.state().status is LBStatus.OUT
    assert lb.put_back() is True
    assert lb.state().status is LBStatus.IN_SERVICE

    # `disabled` in the configuration: 0x04 stays in the mask while the server serves.
    web3 = make_lb(context, haproxy.admin, backend="app", server="web3")
    assert web3.state().status is LBStatus.OUT
    assert web3.put_back() is True
    assert row(haproxy, "app", "web3").admin_state == 0x04
    assert web3.state().status is LBStatus.IN_SERVICE
    assert web3.state().detail == "app/web3 no check scur=0 check=-"


@needs_haproxy
def test_sessions_are_counted_and_killed(context: AdapterContext, start: Any, backend: Any) -> None:
    app, front = backend(), free_port()
    haproxy = start(
        f"frontend fe\n  bind 127.0.0.1:{front}\n  default_backend app\n"
        f"backend app\n  server web1 127.0.0.1:{app.port} check inter 200ms\n"
    )
    lb = make_lb(context, haproxy.admin, backend="app", server="web1")
    with socket.create_connection(("127.0.0.1", front), timeout=3) as client:
        client.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        assert app.slow_started.acquire(timeout=3)
        wait_until(lambda: lb.state().sessions == 1, what="scur=1")
        lb.drain()
        view = lb.state()
        assert view.status is LBStatus.DRAINING and view.sessions == 1
        assert "scur=1" in view.detail

        lb.take_out(kill=True)
        wait_until(lambda: lb.state().sessions == 0, what="scur=0 after shutdown sessions")
        try:
            answer = client.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert b"200 OK" not in answer  # killed, not completed
        assert lb.state().status is LBStatus.OUT


@needs_haproxy
def test_missing_server_and_backend_are_permanent(context: AdapterContext, start: Any) -> None:
    haproxy = start(two_servers(free_port(), free_port()))
    client, where = HAProxyClient(haproxy.admin), haproxy.admin
    no_backend = f"^backend nope not found on {re.escape(where)}$"
    with pytest.raises(PermanentAdapterError) as error:
        client.set_state("app", "nope", "drain")
    assert str(error.value) == f"server nope not found in backend app on {where}"
    assert where in str(error.value)
    with pytest.raises(PermanentAdapterError, match=no_backend):
        client.set_state("nope", "web1", "maint")
    with pytest.raises(PermanentAdapterError, match=no_backend):
        client.servers_state("nope")
    with pytest.raises(PermanentAdapterError, match=no_backend):
        client.stat("nope")
    with pytest.raises(PermanentAdapterError, match="server nope not found in backend app"):
        client.shutdown_sessions("app", "nope")
    with pytest.raises(PermanentAdapterError, match="server nope not found in backend app"):
        make_lb(context, where, backend="app", server="nope").state()
    with pytest.raises(PermanentAdapterError, match=no_backend):
        make_lb(context, where, backend="nope", server="web1").drain()
    with pytest.raises(PermanentAdapterError, match=r"no server with address 10\.9\.9\.9 in"):
        make_lb(context, where, address="10.9.9.9").state()


@needs_haproxy
def test_permission_denied_explains_level_admin(context: AdapterContext, start: Any) -> None:
    haproxy = start(
        two_servers(free_port(), free_port()),
        global_lines=["stats socket {dir}/operator.sock level operator"],
    )
    operator = f"unix://{haproxy.dir}/operator.sock"
    lb = make_lb(context, operator, backend="app", server="web1")
    assert lb.state().status is LBStatus.IN_SERVICE  # reading is allowed
    with pytest.raises(PermanentAdapterError, match="needs `level admin`") as error:
        lb.drain()
    assert operator in str(error.value)
    with pytest.raises(PermanentAdapterError, match="needs `level admin`"):
        HAProxyClient(operator).shutdown_sessions("app", "web1")
    assert row(haproxy, "app", "web1").admin_state == 0  # nothing changed


@needs_haproxy
def test_tcp_stats_socket(context: AdapterContext, start: Any) -> None:
    port = free_port()
    haproxy = start(
        two_servers(free_port(), free_port()),
        global_lines=[f"stats socket ipv4@127.0.0.1:{port} level admin"],
    )
    make_lb(context, f"tcp://127.0.0.1:{port}", backend="app", server="web2").drain()
    assert row(haproxy, "app", "web2").forced_drain


def test_unreachable_instances_are_transient(context: AdapterContext) -> None:
    missing = "unix:///nonexistent/admin.sock"
    with pytest.raises(TransientAdapterError, match=f"^{re.escape(missing)} unreachable") as error:
        make_lb(context, missing, backend="app", server="web1").state()
    assert missing in str(error.value)
    refused = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(TransientAdapterError, match=f"^{re.escape(refused)} unreachable"):
        HAProxyClient(refused).servers_state()


def test_a_hanging_instance_times_out() -> None:
    with silent_listener() as address:
        client = HAProxyClient(address, connect_timeout=0.3, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(TransientAdapterError, match="did not answer") as error:
            client.set_state("app", "web1", "drain")
        assert time.monotonic() - started < 1.0
        assert address in str(error.value)


EXPECTS = "'set server <srv> state' expects 'ready', 'drain' and 'maint'."


@pytest.mark.parametrize(
    ("reply", "call", "error", "message"),
    [
        (f"{EXPECTS}\n", lambda c: c.set_state("app", "web1", "drain"), PermanentAdapterError,
         f"refused `set server app/web1 state drain`: {re.escape(EXPECTS)}$"),
        ("Unknown command, but maybe...\n\n", lambda c: c.servers_state(), PermanentAdapterError,
         "refused `show servers state`: Unknown command"),
        ("1\n# be_id be_name srv_name\n3 app\n\n", lambda c: c.servers_state(),
         PermanentAdapterError, "unexpected format: 2 fields for 3 columns"),
        ("", lambda c: c.shutdown_sessions("app", "web1"), TransientAdapterError,
         "closed the connection without answering"),
        ("Unknown command, but maybe...\n\n", lambda c: c.worker_pid(), PermanentAdapterError,
         "refused `show info`: Unknown command"),
        ("Unknown command, but maybe...\n\n", lambda c: c.processes(), PermanentAdapterError,
         "is not a master CLI: `show proc` got 'Unknown command, but maybe...'$"),
        ("Permission denied\n", lambda c: c.stat("app", worker=12), PermanentAdapterError,
         "refused `@!12 show stat app 4 -1`: permission denied"),
        ("Can't connect to the target CLI!\n", lambda c: c.stat("app", worker=12),
         TransientAdapterError, "could not reach worker 12 .* \\(it may be exiting\\)$"),
    ],
)  # fmt: skip
def test_any_other_reply_is_a_refusal_and_silence_is_transient(
    reply: str, call: Callable[[HAProxyClient], object], error: type[Exception], message: str
) -> None:
    with canned_cli(reply.encode()) as address, pytest.raises(error, match=message) as raised:
        call(HAProxyClient(address))
    assert str(raised.value).startswith(address)


@needs_haproxy
def test_two_instances_one_down(context: AdapterContext, start: Any, backend: Any) -> None:
    body = two_servers(backend().port, backend().port)
    first, second = start(body), start(body)
    lbs = create(
        HAProxyConfig(
            type="haproxy", name="edge", instances=[first.admin, second.admin],
            backend="app", server="web1",
        ),
        context,
    )  # fmt: skip
    assert [lb.name for lb in lbs] == [f"edge@{first.admin}", f"edge@{second.admin}"]
    second.stop()

    lbs[0].drain()
    assert lbs[0].state().status is LBStatus.DRAINING
    for call in (lbs[1].drain, lbs[1].state):
        with pytest.raises(TransientAdapterError) as error:
            call()
        assert second.admin in str(error.value)
        assert str(error.value).startswith(f"{second.admin} unreachable")


@needs_haproxy
def test_a_reload_forgets_the_drain_and_drain_reasserts_it(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    haproxy = start(two_servers(backend().port, backend().port), master_worker=True)
    lb = make_lb(context, haproxy.admin, backend="app", server="web1")
    lb.drain()
    assert lb.state().status is LBStatus.DRAINING
    worker = haproxy.worker_pid()

    haproxy.reload()  # SIGUSR2 to the master: a new worker from the configuration file
    assert haproxy.worker_pid() != worker
    assert lb.state().status is LBStatus.IN_SERVICE  # the drain is gone

    lb.drain()
    assert lb.state().status is LBStatus.DRAINING


def test_a_worker_gone_from_the_master_has_no_rows() -> None:
    gone = b"Can't find the target PID matching the prefix '@!12937'\n"  # 2.6.12, verbatim
    with canned_cli(gone) as address:
        assert HAProxyClient(address).stat("app", worker=12937) == []


@needs_haproxy
def test_a_reload_since_the_drain_keeps_1_session_until_put_back(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    """Without a master CLI the old worker is out of sight: a worker PID other than the
    one the drain began in reads as at least 1 session, until the node is put back."""
    haproxy = start(two_servers(backend().port, backend().port), master_worker=True)
    lb = make_lb(context, haproxy.admin, backend="app", server="web1")
    lb.drain()
    worker = haproxy.worker_pid()
    (remembered,) = context.state_dir.iterdir()
    assert json.loads(remembered.read_text()) == {"lb": lb.name, "worker_pid": worker}
    view = lb.state()
    assert (view.status, view.sessions) == (LBStatus.DRAINING, 0)  # no reload: exact
    assert view.detail == "app/web1 DRAIN scur=0 check=L4OK"

    haproxy.reload()
    reloaded = (
        f"; reloaded since the drain (worker {worker}, now {haproxy.worker_pid()}):"
        " an old worker may still serve it"
    )
    view = lb.state()
    assert (view.status, view.sessions) == (LBStatus.IN_SERVICE, 1)  # drain forgotten too
    assert view.detail.endswith(reloaded)
    lb.drain()  # re-asserted in the new worker: the drain still began in the old one
    view = lb.state()
    assert (view.status, view.sessions) == (LBStatus.DRAINING, 1)
    assert view.detail == "app/web1 DRAIN scur=0 check=L4OK" + reloaded
    lb.take_out(kill=True)
    other = make_lb(context, haproxy.admin, backend="app", server="web1")  # the CLI, a restart
    view = other.state()
    assert (view.status, view.sessions) == (LBStatus.OUT, 1)
    assert view.detail.endswith(reloaded)

    wait_until(lb.put_back, timeout=3, what="put_back() once HAProxy's check passed")
    view = other.state()
    assert (view.status, view.sessions) == (LBStatus.IN_SERVICE, 0)
    assert "reloaded" not in view.detail
    assert list(context.state_dir.iterdir()) == []  # forgotten
    other.drain()  # the next drain begins in the new worker
    assert other.state().sessions == 0

    remembered.write_text("{")
    with pytest.raises(PermanentAdapterError, match=f"{re.escape(str(remembered))} is not JSON"):
        lb.state()


@needs_haproxy
def test_nodes_sharing_an_instance_keep_their_own_reload_record(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    """Under `drainer serve` two nodes reach one instance under one name: one node's
    put-back must not erase the other's record of the worker it drained under."""
    haproxy = start(two_servers(backend().port, backend().port), master_worker=True)
    a = make_lb(context, haproxy.admin, backend="app", server="web1")
    b = make_lb(context, haproxy.admin, backend="app", server="web2")
    assert a.name == b.name
    a.drain()
    b.drain()
    assert len(list(context.state_dir.iterdir())) == 2
    wait_until(a.put_back, timeout=3, what="a put back")
    haproxy.reload()
    b.drain()
    view = b.state()
    assert view.sessions == 1 and "reloaded since the drain" in view.detail


def held(front: int, app: HttpBackend) -> socket.socket:
    """A request to ``/slow`` through HAProxy's frontend, open until ``app.release()``."""
    client = socket.create_connection(("127.0.0.1", front), timeout=5)
    client.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    assert app.slow_started.acquire(timeout=5), "the held request did not arrive"
    return client


@needs_haproxy
def test_a_master_cli_counts_the_sessions_left_in_old_workers(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    app, front = backend(), free_port()
    haproxy = start(
        f"frontend fe\n  bind 127.0.0.1:{front}\n  default_backend app\n"
        f"backend app\n  server web1 127.0.0.1:{app.port} check inter 200ms\n",
        master_worker=True,
    )
    master = f"unix://{haproxy.dir}/master.sock"
    lb = make_lb(context, haproxy.admin, backend="app", server="web1", masters=[master])
    with held(front, app) as client:
        wait_until(lambda: lb.state().sessions == 1, what="scur=1")
        lb.drain()
        old = haproxy.worker_pid()
        haproxy.reload()
        lb.drain()
        assert HAProxyClient(haproxy.admin).stat("app")[0].scur == 0  # the new worker's view
        view = lb.state()
        assert (view.status, view.sessions) == (LBStatus.DRAINING, 1)
        assert view.detail == f"app/web1 DRAIN scur=0 check=L4OK; old worker {old} scur=1"

        app.release()
        assert b"200 OK" in client.recv(4096)
    # While it exits (a few ms) the master answers nothing about it: a transient error.
    wait_until(
        lambda: HAProxyClient(master).processes().old_workers == (), what="the old worker exits"
    )
    view = lb.state()
    assert (view.status, view.sessions) == (LBStatus.DRAINING, 0)
    assert view.detail == "app/web1 DRAIN scur=0 check=L4OK"

    def unknown() -> bool:  # "Can't find the target PID", once the master reaped it
        with suppress(TransientAdapterError):
            return HAProxyClient(master).stat("app", worker=old) == []
        return False

    wait_until(unknown, what="the old PID unknown to the master")


@needs_haproxy
def test_a_master_of_another_instance_is_refused(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    body = two_servers(backend().port, backend().port)
    first, second = start(body, master_worker=True), start(body, master_worker=True)
    swapped = [f"unix://{second.dir}/master.sock", f"unix://{first.dir}/master.sock"]
    lbs = create(
        HAProxyConfig(
            type="haproxy", instances=[first.admin, second.admin], masters=swapped,
            backend="app", server="web1",
        ),
        context,
    )  # fmt: skip
    for lb, haproxy, master in zip(lbs, [first, second], swapped, strict=True):
        with pytest.raises(PermanentAdapterError, match="is not the master of") as error:
            lb.state()
        assert str(error.value) == (
            f"{master} is not the master of {haproxy.admin}: it does not list worker"
            f" {haproxy.worker_pid()}, which answers there (`masters` must follow the order"
            " of `instances`)"
        )
        assert haproxy.admin in str(error.value)
    admin_as_master = make_lb(
        context, first.admin, backend="app", server="web1", masters=[first.admin]
    )
    with pytest.raises(PermanentAdapterError, match="is not a master CLI"):
        admin_as_master.state()


@needs_haproxy
def test_discovery_by_address_finds_every_backend(context: AdapterContext, start: Any) -> None:
    node, other = f"127.0.0.2:{free_port()}", f"127.0.0.1:{free_port()}"
    haproxy = start(
        f"backend app\n  server web1 {node}\n  server web2 {other}\n"
        f"backend api\n  server vm1 {node}\n  server vm2 {other}\n"
        f"backend ops\n  server vm1-admin 127.0.0.2:{free_port()}\n  server o {other}\n"
    )
    client = HAProxyClient(haproxy.admin)
    assert client.find_by_address(node) == [("app", "web1"), ("api", "vm1")]
    assert client.find_by_address("127.0.0.2") == [
        ("app", "web1"), ("api", "vm1"), ("ops", "vm1-admin"),
    ]  # fmt: skip
    assert client.find_by_address("127.0.0.3") == []

    lb = make_lb(context, haproxy.admin, address=node)
    lb.drain()
    view = lb.state()
    assert view.status is LBStatus.DRAINING
    assert view.detail == "app/web1 DRAIN scur=0 check=-, api/vm1 DRAIN scur=0 check=-"
    assert row(haproxy, "ops", "vm1-admin").in_service  # other port: not this address
    assert row(haproxy, "app", "web2").in_service and row(haproxy, "api", "vm2").in_service

    HAProxyClient(haproxy.admin).set_state("app", "web1", "ready")
    assert lb.state().status is LBStatus.IN_SERVICE  # partly drained is not drained
    lb.take_out(kill=True)
    assert lb.state().status is LBStatus.OUT
    assert lb.put_back() is True
    assert lb.state().status is LBStatus.IN_SERVICE


@needs_haproxy
def test_check_manual_drain_keeps_min_in_service(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    haproxy = start(two_servers(backend().port, backend().port))
    lb = make_lb(context, haproxy.admin, backend="app", server="web1")
    assert lb.check_manual_drain() is None

    strict = make_lb(context, haproxy.admin, backend="app", server="web1", min_in_service=2)
    assert strict.check_manual_drain() == (
        "refusing to drain vm1: backend app would keep"
        " 1 other server(s) in service, min_in_service is 2"
    )
    HAProxyClient(haproxy.admin).set_state("app", "web2", "drain")
    refusal = lb.check_manual_drain()
    assert refusal is not None and "backend app would keep 0 other server(s)" in refusal


@needs_haproxy
def test_state_reads_one_row_by_id_and_finds_the_server_again_after_a_reload(
    context: AdapterContext, start: Any
) -> None:
    """state() addresses the server by the id found at the last `show servers state`; a
    reload that renumbers the servers (one added before it) is seen by its new PID."""
    ports = [free_port() for _ in range(3)]
    haproxy = start(
        f"backend app\n  server web1 127.0.0.1:{ports[0]}\n  server web2 127.0.0.1:{ports[1]}\n",
        master_worker=True,
    )
    lb = make_lb(context, haproxy.admin, backend="app", server="web2")
    client = HAProxyClient(haproxy.admin)
    assert client.stat("app", server_id=row(haproxy, "app", "web2").server_id)[0].server == "web2"
    assert client.stat("app", server_id=99) == []
    assert lb.state().detail == "app/web2 no check scur=0 check=-"

    text = haproxy.config.read_text()
    haproxy.config.write_text(
        text.replace("backend app\n", f"backend app\n  server web0 127.0.0.1:{ports[2]}\n")
    )
    haproxy.reload()
    assert row(haproxy, "app", "web2").server_id == 3
    client.set_state("app", "web2", "drain")
    view = lb.state()
    assert view.status is LBStatus.DRAINING
    assert view.detail == "app/web2 DRAIN scur=0 check=-"


@needs_haproxy
def test_state_follows_an_address_changed_at_runtime(context: AdapterContext, start: Any) -> None:
    node, other = f"127.0.0.2:{free_port()}", f"127.0.0.1:{free_port()}"
    haproxy = start(f"backend app\n  server web1 {node}\n  server web2 {other}\n")
    lb = make_lb(context, haproxy.admin, address=node)
    assert lb.state().detail == "app/web1 no check scur=0 check=-"
    client = HAProxyClient(haproxy.admin)
    host, port = other.split(":")
    haproxy_cli(haproxy.admin_socket, f"set server app/web1 addr {host} port {port}")
    host, port = node.split(":")
    haproxy_cli(haproxy.admin_socket, f"set server app/web2 addr {host} port {port}")
    client.set_state("app", "web2", "maint")
    view = lb.state()
    assert view.status is LBStatus.OUT
    assert view.detail == "app/web2 MAINT scur=0 check=-"


@needs_haproxy
def test_a_drained_server_that_is_down_still_reads_draining(
    context: AdapterContext, start: Any
) -> None:
    """show stat says DOWN, not DRAIN, for a drained server that is down: the admin
    state decides then."""
    haproxy = start(two_servers(free_port(), free_port()))
    lb = make_lb(context, haproxy.admin, backend="app", server="web1")
    wait_until(lambda: not row(haproxy, "app", "web1").up, what="web1 DOWN")
    lb.drain()
    view = lb.state()
    assert view.detail.startswith("app/web1 DOWN")
    assert view.status is LBStatus.DRAINING


# -- the admin state from one show stat row (issue 9: no whole-backend read per action) ---


class CountingClient(HAProxyClient):
    """The runtime API client, counting the commands it sends by their first two words."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.sent: list[str] = []

    def _send(self, command: str) -> str:
        self.sent.append(" ".join(command.split()[:2]))
        return super()._send(command)


WEB2 = "127.0.0.2:9"  # never contacted: no check


def counting_lb(context: AdapterContext, haproxy: HAProxy, **options: Any) -> HAProxyLoadBalancer:
    config = HAProxyConfig(type="haproxy", instances=[haproxy.admin], **options)
    client = CountingClient(haproxy.admin)
    return HAProxyLoadBalancer(
        name="counted", client=client, config=config, node="vm1", state_dir=context.state_dir
    )


def test_stat_keeps_tracked_and_whether_a_check_runs() -> None:
    web1, web2 = parse_stat(STAT)
    assert (web1.checked, web1.tracked) == (True, "")  # chkfail "0"
    assert (web2.checked, web2.tracked) == (False, "")  # chkfail ""
    header = STAT.splitlines()[0].replace(",tracked,", ",trk,")  # an older layout
    assert parse_stat("\n".join([header, *STAT.splitlines()[1:]]))[0].tracked == ""


@pytest.mark.parametrize(
    ("status", "tracked", "expected"),
    [
        ("MAINT", "", (FORCED_MAINT, OpState.STOPPED)),
        ("DRAIN", "", (FORCED_DRAIN, OpState.RUNNING)),
        ("DRAIN 1/2", "", (FORCED_DRAIN, OpState.RUNNING)),
        ("UP", "", (0, OpState.RUNNING)),
        ("UP 1/3", "", (0, OpState.RUNNING)),
        ("no check", "", (0, OpState.RUNNING)),
        ("DOWN", "", None),  # a drain hides behind DOWN
        ("DOWN 1/2", "", None),
        ("NOLB", "", None),
        ("MAINT (resolution)", "", None),  # DNS's, not forced
        ("MAINT (via app/web2)", "app/web2", None),  # inherited
        ("DRAIN", "app/web2", None),  # may be inherited
    ],
)
def test_admin_from_row(status: str, tracked: str, expected: tuple[int, int] | None) -> None:
    kept = ServerState("app", "web1", "127.0.0.1", 80, 0, admin_state=0x04 | 0x01, check_state=0)
    row_ = StatRow("app", "web1", status, scur=0, check_status="", tracked=tracked, checked=True)
    now = admin_from_row(kept, row_)
    if expected is None:
        assert now is None
    else:
        assert now is not None and (now.admin_state, now.op_state) == (
            0x04 | expected[0],
            expected[1],
        )
        assert now.checked and now.server_id == kept.server_id


@needs_haproxy
def test_the_admin_state_from_a_row_is_the_one_show_servers_state_has(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    port = backend().port
    haproxy = start(
        f"backend app\n  server web1 127.0.0.1:{port} check inter 100ms rise 5\n"
        f"  server web2 127.0.0.1:{port}\n  server web3 127.0.0.1:{port} track app/web1\n"
    )
    client = HAProxyClient(haproxy.admin)
    wait_until(lambda: row(haproxy, "app", "web1").up, what="web1 UP")

    def agree(server: str) -> ServerState | None:
        full = row(haproxy, "app", server)
        (stat,) = client.stat("app", server_id=full.server_id)
        now = admin_from_row(replace(full, admin_state=0, op_state=0, check_state=0), stat)
        if now is not None:
            assert (now.forced_maint, now.forced_drain, now.maint, now.drain, now.up) == (
                full.forced_maint,
                full.forced_drain,
                full.maint,
                full.drain,
                full.up,
            ), (server, stat.status)
            assert now.checked == full.checked, (server, stat.status)
        return now

    def every(step: str, readable: tuple[str, ...] = ("web1", "web2")) -> None:
        for server in ("web1", "web2"):
            assert (agree(server) is not None) is (server in readable), (server, step)
        assert agree("web3") is None  # tracks web1: always from show servers state

    every("up")
    for state in ("drain", "maint"):
        for server in ("web1", "web2"):
            client.set_state("app", server, state)  # type: ignore[arg-type]
        every(state)
    for server in ("web1", "web2"):
        client.set_state("app", server, "drain", recheck=True)
    every("health down", readable=())  # DOWN hides the drain
    wait_until(lambda: row(haproxy, "app", "web1").up, what="web1 UP again")
    every("drained, up", readable=("web1",))  # web2 has no check to bring it up


@needs_haproxy
def test_a_drain_and_put_back_read_the_whole_backend_once(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    haproxy = start(f"backend app\n  server web1 127.0.0.1:{free_port()}\n  server web2 {WEB2}\n")
    lb = counting_lb(context, haproxy, backend="app", server="web1")
    assert lb.check_manual_drain() is None  # counts the other servers: the whole backend
    lb.state()
    lb.drain()
    assert lb.state().status is LBStatus.DRAINING
    lb.take_out(kill=False)
    lb.drain()  # re-asserted: no step back
    assert lb.state().status is LBStatus.OUT
    assert lb.put_back() is True  # no check: ready at once
    assert lb.state().status is LBStatus.IN_SERVICE
    sent = lb._client.sent  # type: ignore[attr-defined]
    assert sent.count("show servers") == 1 and sent[:2] == ["show info", "show servers"]
    assert sent.count("set server") == 3  # drain, maint, ready


@needs_haproxy
def test_put_back_reads_the_whole_backend_only_while_the_server_is_down(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    haproxy = start(two_servers(backend().port, backend().port))
    wait_until(lambda: row(haproxy, "app", "web1").up, what="web1 UP")
    lb = counting_lb(context, haproxy, backend="app", server="web1")
    lb.take_out(kill=False)  # the first read of a fresh adapter: the whole backend
    assert lb.state().status is LBStatus.OUT
    assert lb.put_back() is False  # maint -> drain + health down: HAProxy's check first
    sent = lb._client.sent  # type: ignore[attr-defined]
    assert sent.count("show servers") == 1
    calls = 0

    def put_back() -> bool:
        nonlocal calls
        calls += 1
        return lb.put_back()

    wait_until(put_back, timeout=3, what="put_back() once the check passed")
    # each call that saw web1 DOWN (a drain hides there) read the backend; the last saw
    # DRAIN, unless the check passed between its two reads
    assert calls - 1 <= sent.count("show servers") - 1 <= calls
    assert lb.state().status is LBStatus.IN_SERVICE


@needs_haproxy
def test_start_checks_runs_haproxys_check_while_the_node_gets_nothing(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    port = free_port()  # nothing listens yet: the node is still rebooting
    haproxy = start(two_servers(port, backend().port))
    lb = make_lb(context, haproxy.admin, backend="app", server="web1")
    lb.take_out(kill=False)

    assert lb.start_checks() is True  # maint -> drain + health down: the check runs
    web1 = row(haproxy, "app", "web1")
    assert web1.forced_drain and not web1.maint and not web1.up
    assert lb.state().status is LBStatus.DRAINING
    backend(port)  # the application comes up: HAProxy's check passes, UP in drain
    wait_until(lambda: row(haproxy, "app", "web1").up, timeout=3, what="web1 UP in drain")
    # drainer's checks have not agreed yet: DOWN again, so that no persistent request
    # reaches it; its check goes on
    assert lb.start_checks() is True
    web1 = row(haproxy, "app", "web1")
    assert web1.forced_drain and not web1.up and not web1.in_service
    # both agree: HAProxy's check passed during this recovery and still passes, so the
    # put-back makes it UP and ready at once, without another `rise`
    assert lb.put_back() is True
    assert row(haproxy, "app", "web1").in_service


def passed_then_down(
    lb: HAProxyLoadBalancer, haproxy: HAProxy, backend: Any, port: int
) -> HttpBackend:
    """web1 out, its application started on ``port``, HAProxy's check passed (noted)
    and the server set DOWN again by ``start_checks``; the application."""
    lb.take_out(kill=False)
    assert lb.start_checks() is True
    app: HttpBackend = backend(port)
    wait_until(lambda: row(haproxy, "app", "web1").up, timeout=3, what="web1 UP in drain")
    assert lb.start_checks() is True  # DOWN again, noted as passed
    return app


def wait_for_a_failed_check(haproxy: HAProxy) -> None:
    client = HAProxyClient(haproxy.admin)

    def failed() -> bool:
        return any(
            r.server == "web1" and r.check_status.startswith("L4") and r.check_status != "L4OK"
            for r in client.stat("app")
        )

    wait_until(failed, timeout=3, what="a failed check")


@needs_haproxy
def test_a_check_that_fails_after_passing_makes_the_put_back_wait_again(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    port = free_port()
    haproxy = start(two_servers(port, backend().port))
    lb = make_lb(context, haproxy.admin, backend="app", server="web1")
    app = passed_then_down(lb, haproxy, backend, port)
    app.stop()  # the application goes away: HAProxy's next check fails
    wait_for_a_failed_check(haproxy)
    assert lb.put_back() is False
    assert not row(haproxy, "app", "web1").up
    # a new drain forgets what HAProxy's check said in this recovery
    lb.take_out(kill=False)
    assert not any(context.state_dir.glob("*-passed.json"))


def shared_lb(context: AdapterContext, haproxy: HAProxy) -> HAProxyLoadBalancer:
    """As under `drainer serve`: state reads shared (here for an hour)."""
    from drainer.serve.shared import SharedReads

    config = HAProxyConfig(type="haproxy", instances=[haproxy.admin], backend="app", server="web1")
    (lb,) = create(config, context, client=partial(SharedReads, max_age=3600))
    assert isinstance(lb, HAProxyLoadBalancer)
    return lb


@needs_haproxy
def test_a_drain_never_decides_on_a_shared_read(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    haproxy = start(two_servers(backend().port, backend().port))
    lb = shared_lb(context, haproxy)
    assert lb.state().status is LBStatus.IN_SERVICE  # shared: web1 UP
    HAProxyClient(haproxy.admin).set_state("app", "web1", "maint")  # an operator, meanwhile
    lb.drain()
    assert row(haproxy, "app", "web1").forced_maint  # not moved back to drain


@needs_haproxy
def test_a_put_back_never_trusts_a_check_passed_in_a_shared_read(
    context: AdapterContext, start: Any, backend: Any
) -> None:
    port = free_port()
    haproxy = start(two_servers(port, backend().port))
    lb = shared_lb(context, haproxy)
    app = passed_then_down(lb, haproxy, backend, port)
    assert lb.state().status is LBStatus.DRAINING  # shared: its latest check passed
    app.stop()
    wait_for_a_failed_check(haproxy)
    assert lb.put_back() is False
    assert not row(haproxy, "app", "web1").up


@needs_haproxy
def test_start_checks_leaves_a_server_without_a_check_in_maint(
    context: AdapterContext, start: Any
) -> None:
    haproxy = start(f"backend app\n  server web1 127.0.0.1:{free_port()}\n")
    lb = make_lb(context, haproxy.admin, backend="app", server="web1")
    lb.take_out(kill=False)
    assert lb.start_checks() is False
    assert lb.state().status is LBStatus.OUT
