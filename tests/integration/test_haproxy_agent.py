"""Agent-check mode: drainer answers HAProxy's agent on the VM; a real HAProxy polls it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drainer.adapters.base import AdapterContext
from drainer.adapters.haproxy.agent import AgentConfig, AgentLoadBalancer, create, established
from drainer.config import parse_config
from drainer.errors import ConfigError
from drainer.model import LBStatus
from drainer.testing import (
    HAProxy,
    WebServer,
    free_port,
    haproxy_available,
    haproxy_cli,
    start_haproxy_in_front,
    wait_until,
)

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0
   1: 0100007F:1F90 0200000A:D432 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0
   2: 0100007F:1F90 0100007F:D433 06 00000000:00000000 00:00000000 00000000     0        0 3 1 0
   3: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0
   4: 0100007F:1F91 0100007F:D434 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0
"""
TCP6 = """  sl  local_address                         remote_address                        st
   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000300000A:D435 01 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:D436 01 0
"""


def test_established_counts_connections_to_the_service_port(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    # port 0x1F90 = 8080: rows 0 and 1 (v4, established), both v6 rows; not TIME_WAIT,
    # not LISTEN, not the other port
    assert established(tmp_path, 8080, frozenset()) == 4
    assert established(tmp_path, 8080, frozenset({"127.0.0.1"})) == 1
    assert established(tmp_path, 8080, frozenset({"10.0.0.2", "10.0.0.3"})) == 2
    assert established(tmp_path, 8080, frozenset({"::1"})) == 1
    assert established(tmp_path, 8081, frozenset()) == 1


def test_established_reads_the_real_proc_net() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        before = established(Path("/proc/net"), port, frozenset())
        with socket.create_connection(("127.0.0.1", port)):
            conn, _ = server.accept()
            with conn:
                assert established(Path("/proc/net"), port, frozenset()) == before + 1
                assert established(Path("/proc/net"), port, frozenset({"10.9.9.9"})) == 0


def test_bad_listen_address_is_a_config_error() -> None:
    entry = {"type": "haproxy-agent", "listen": "nowhere", "service_port": 80}
    with pytest.raises(ConfigError, match=r"load_balancers\[0\]\.listen: not host:port"):
        parse_config({"health": {"tcp": {"port": 80}}, "load_balancers": [entry]})


def show_stat_status(proxy: HAProxy, server: str) -> str:
    """The status column of ``server`` in backend app, read from the admin socket."""
    lines = haproxy_cli(proxy.admin_socket, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "app" and row.get("svname") == server:
            return row["status"]
    raise AssertionError(f"no server {server} in show stat")


needs_haproxy = pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed")


def agent_line(port: int) -> str:
    return f"agent-check agent-addr 127.0.0.1 agent-port {port} agent-inter 200ms"


@pytest.fixture
def polled(tmp_path: Path) -> Iterator[tuple[AgentLoadBalancer, HAProxy, WebServer]]:
    web = WebServer(free_port(), name="web-1").start()
    agent_port = free_port()
    proxy = start_haproxy_in_front(
        tmp_path, backends={"web-1": web.port}, extra_server=agent_line(agent_port)
    )
    config = AgentConfig(
        listen=f"127.0.0.1:{agent_port}", service_port=web.port, peers=("127.0.0.1",)
    )
    (lb,) = create(config, AdapterContext(node="web-1", state_dir=tmp_path / "state"))
    assert isinstance(lb, AgentLoadBalancer)
    lb.serve()
    try:
        yield lb, proxy, web
    finally:
        lb.close()
        proxy.stop()
        web.stop()


@needs_haproxy
def test_real_haproxy_follows_the_agent(
    polled: tuple[AgentLoadBalancer, HAProxy, WebServer],
) -> None:
    lb, proxy, _ = polled
    wait_until(lambda: show_stat_status(proxy, "web-1") == "UP")
    assert lb.state().status is LBStatus.IN_SERVICE

    lb.drain()
    wait_until(lambda: show_stat_status(proxy, "web-1") == "DRAIN (agent)")
    wait_until(lambda: lb.state().sessions == 0)  # HAProxy has been told, nothing open
    assert lb.state().status is LBStatus.DRAINING

    lb.take_out(kill=False)
    wait_until(lambda: show_stat_status(proxy, "web-1") == "MAINT")
    assert lb.state().status is LBStatus.OUT

    assert lb.put_back()
    wait_until(lambda: show_stat_status(proxy, "web-1") == "UP")
    assert lb.state().status is LBStatus.IN_SERVICE


@needs_haproxy
def test_drain_is_not_effective_until_haproxy_was_told(tmp_path: Path) -> None:
    config = AgentConfig(listen=f"127.0.0.1:{free_port()}", service_port=free_port())
    (lb,) = create(config, AdapterContext(node="web-1", state_dir=tmp_path))
    lb.drain()  # nothing serves the agent, so no HAProxy has heard "drain"
    view = lb.state()
    assert view.status is LBStatus.DRAINING and view.sessions == 1
    assert "no HAProxy has polled" in view.detail


@needs_haproxy
def test_open_connections_keep_the_drain_going(
    polled: tuple[AgentLoadBalancer, HAProxy, WebServer],
) -> None:
    lb, proxy, _ = polled
    wait_until(lambda: show_stat_status(proxy, "web-1") == "UP")
    with socket.create_connection(("127.0.0.1", proxy.port)) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200" in client.recv(4096)
        lb.drain()
        wait_until(lambda: show_stat_status(proxy, "web-1") == "DRAIN (agent)")
        assert lb.state().sessions >= 1  # the keep-alive connection through HAProxy
    # HAProxy keeps its server connection idle in a pool while the server is in DRAIN
    # (counted: /proc cannot tell idle from busy) and closes it on MAINT.
    time.sleep(1.0)
    assert lb.state().sessions >= 1
    lb.take_out(kill=False)
    wait_until(lambda: lb.state().sessions == 0)


@needs_haproxy
def test_restarted_haproxy_is_corrected_by_the_agent(
    polled: tuple[AgentLoadBalancer, HAProxy, WebServer], tmp_path: Path
) -> None:
    lb, proxy, web = polled
    lb.drain()
    lb.take_out(kill=False)
    wait_until(lambda: show_stat_status(proxy, "web-1") == "MAINT")
    proxy.stop()  # a restart forgets every runtime state
    agent_port = int(lb.listen.rsplit(":", 1)[1])
    again = start_haproxy_in_front(
        tmp_path, backends={"web-1": web.port}, extra_server=agent_line(agent_port)
    )
    try:
        wait_until(lambda: show_stat_status(again, "web-1") == "MAINT")
    finally:
        again.stop()


def test_answer_survives_a_new_process(tmp_path: Path) -> None:
    config = AgentConfig(listen=f"127.0.0.1:{free_port()}", service_port=80)
    context = AdapterContext(node="web-1", state_dir=tmp_path)
    (first,) = create(config, context)
    first.drain()
    first.take_out(kill=False)
    (second,) = create(config, context)  # e.g. after a reboot
    assert isinstance(second, AgentLoadBalancer)
    assert second.answer() == "maint"
    second.serve()
    try:
        with socket.create_connection(("127.0.0.1", int(config.listen.rsplit(":", 1)[1]))) as c:
            assert c.recv(64) == b"maint\n"
    finally:
        second.close()


@needs_haproxy
def test_stats_socket_gives_exact_sessions(
    polled: tuple[AgentLoadBalancer, HAProxy, WebServer], tmp_path: Path
) -> None:
    _, proxy, web = polled
    agent_port = free_port()
    config = AgentConfig(
        listen=f"127.0.0.1:{agent_port}",
        service_port=web.port,
        stats=(proxy.admin,),
        backend="app",
        server="web-1",
    )
    (lb,) = create(config, AdapterContext(node="web-1", state_dir=tmp_path / "other"))
    assert lb.state().sessions == 0
    with socket.create_connection(("127.0.0.1", proxy.port)) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200" in client.recv(4096)
    # The idle pooled server connection is not a session for HAProxy. The client's
    # close reaches HAProxy a moment after ours returns: give it a bounded while.
    wait_until(lambda: lb.state().sessions == 0, timeout=5.0)
    assert "0 sessions" in lb.state().detail


def test_stats_need_backend_and_server() -> None:
    with pytest.raises(ValueError, match="stats needs backend and server"):
        AgentConfig(listen="127.0.0.1:1", service_port=80, stats=("tcp://127.0.0.1:1",))
    with pytest.raises(ValueError, match="invalid HAProxy server name"):
        AgentConfig(
            listen="127.0.0.1:1",
            service_port=80,
            stats=("tcp://127.0.0.1:1",),
            backend="app",
            server="web1;shutdown",
        )
