"""``drainer serve`` and the ``remote`` adapter, over real HTTP (and TLS, and a real nginx).

Most tests serve the ``mock`` adapter (one JSON file per node) so they can look at
exactly what each node's call changed; one serves a real nginx.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import yaml
from nginxprocs import Backend
from pydantic import ValidationError

from drainer.adapters import mock, nginx
from drainer.adapters import remote as remote_adapter
from drainer.adapters.base import AdapterConfig, AdapterContext, AdapterPlugin, LBStatus
from drainer.adapters.haproxy import runtime as haproxy
from drainer.adapters.haproxy.client import StatRow
from drainer.adapters.remote import RemoteConfig, RemoteLoadBalancer
from drainer.adapters.remote import create as create_remote
from drainer.errors import ConfigError, PermanentAdapterError, TransientAdapterError
from drainer.serve.config import parse_serve_config
from drainer.serve.http import RemoteServer, serve
from drainer.serve.protocol import NODE_HEADER
from drainer.serve.shared import SharedReads
from drainer.testing import (
    FakeClock,
    Nginx,
    free_port,
    haproxy_available,
    haproxy_cli,
    nginx_available,
    openssl_available,
    self_signed_certificate,
    start_haproxy,
)

PLUGINS: dict[str, AdapterPlugin] = {
    "mock": mock.PLUGIN,
    "nginx": nginx.PLUGIN,
    "haproxy": haproxy.PLUGIN,
    "remote": remote_adapter.PLUGIN,
}
TOKENS = {"web-1": "t1-" + "a" * 40, "web-2": "t2-" + "b" * 40}


def serve_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    for node, token in TOKENS.items():
        (tmp_path / f"{node}.token").write_text(token + "\n")
    config: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}",
        "state_dir": str(tmp_path / "serve-state"),
        "load_balancers": {"app": {"type": "mock", "sessions": 0}},
        "nodes": {
            node: {
                "token_file": str(tmp_path / f"{node}.token"),
                "servers": {"app": {"path": str(tmp_path / f"mock-{node}.json")}},
            }
            for node in TOKENS
        },
    }
    config.update(overrides)
    return config


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[RemoteServer]:
    setup = parse_serve_config(serve_config(tmp_path), plugins=PLUGINS)
    with RemoteServer(setup, clock=clock) as running:
        yield running


RemoteFactory = Callable[..., RemoteLoadBalancer]


@pytest.fixture
def remote(tmp_path: Path, server: RemoteServer, clock: FakeClock) -> RemoteFactory:
    def make(who: str = "web-1", **overrides: Any) -> RemoteLoadBalancer:
        """The remote adapter of node ``who`` (its token); ``node=`` claims another name."""
        entry = {
            "type": "remote",
            "url": server.url,
            "load_balancer": "app",
            "token_file": str(tmp_path / f"{who}.token"),
            "retry_delay": "100ms",
            **overrides,
        }
        config = RemoteConfig.model_validate(entry)
        return RemoteLoadBalancer(
            config, name="remote-app", node=config.node or who, sleep=clock.sleep
        )

    return make


def mock_status(tmp_path: Path, node: str) -> str | None:
    path = tmp_path / f"mock-{node}.json"
    return json.loads(path.read_text())["status"] if path.exists() else None


# -- the channel works -------------------------------------------------------------------


def test_a_node_drains_and_puts_back_its_own_server_only(
    tmp_path: Path, remote: RemoteFactory
) -> None:
    lb = remote("web-1")
    assert lb.state().status is LBStatus.IN_SERVICE
    lb.drain()
    assert mock_status(tmp_path, "web-1") == "draining"
    assert mock_status(tmp_path, "web-2") is None, "another node's server was touched"
    view = lb.state()
    assert view.status is LBStatus.DRAINING and "mock-web-1.json" in view.detail
    lb.take_out(kill=True)
    assert lb.state().status is LBStatus.OUT
    calls = json.loads((tmp_path / "mock-web-1.json").read_text())["calls"]
    assert [c["op"] for c in calls] == ["drain", "take_out_kill"]
    assert lb.put_back() is True
    assert mock_status(tmp_path, "web-1") == "in_service"
    lb.close()


def test_the_adapter_plugin_reads_node_and_token(tmp_path: Path, server: RemoteServer) -> None:
    entry = {
        "type": "remote",
        "url": server.url,
        "load_balancer": "app",
        "token_env": "DRAINER_TEST_TOKEN",
    }
    with pytest.raises(ConfigError, match=r"\$DRAINER_TEST_TOKEN is not set"):
        create_remote(RemoteConfig.model_validate(entry), AdapterContext("web-2", tmp_path))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DRAINER_TEST_TOKEN", TOKENS["web-2"])
        [lb] = create_remote(RemoteConfig.model_validate(entry), AdapterContext("web-2", tmp_path))
        lb.drain()
    assert mock_status(tmp_path, "web-2") == "draining"
    assert mock_status(tmp_path, "web-1") is None


# -- refusals ----------------------------------------------------------------------------


def test_a_wrong_token_is_refused_and_never_logged(
    tmp_path: Path, remote: RemoteFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    (tmp_path / "wrong.token").write_text("not-the-token-" + "c" * 30)
    lb = remote("web-1", token_file=str(tmp_path / "wrong.token"))
    with pytest.raises(PermanentAdapterError, match="unknown node or wrong token") as caught:
        lb.drain()
    assert mock_status(tmp_path, "web-1") is None
    remote("web-1").drain()  # the right one works
    for secret in [*TOKENS.values(), "not-the-token-"]:
        assert secret not in caplog.text
        assert secret not in str(caught.value)
    assert "refused a request from 127.0.0.1" in caplog.text


def test_a_token_a_header_cannot_carry_is_refused_without_showing_it(
    tmp_path: Path, remote: RemoteFactory
) -> None:
    # h11 refused the header with the token in its message: that message became the
    # adapter's error, logged, alerted, sent to every webhook and kept in notifications.json
    (tmp_path / "two-lines.token").write_text("s3cret-first-line\ns3cret-second-line\n")
    lb = remote("web-1", token_file=str(tmp_path / "two-lines.token"))
    with pytest.raises(PermanentAdapterError) as caught:
        lb.drain()
    assert "s3cret" not in str(caught.value)
    assert "a line break, a control character or a non-ASCII one" in str(caught.value)
    assert mock_status(tmp_path, "web-1") is None


def test_a_node_cannot_act_for_another(tmp_path: Path, remote: RemoteFactory) -> None:
    # web-2's own token, claiming to be web-1
    impostor = remote("web-2", node="web-1")
    with pytest.raises(PermanentAdapterError, match="unknown node or wrong token"):
        impostor.drain()
    # a load balancer that web-1 is not configured on
    with pytest.raises(PermanentAdapterError, match="may not act on load balancer 'other'"):
        remote("web-1", load_balancer="other").drain()
    # an unknown node
    with pytest.raises(PermanentAdapterError, match="unknown node or wrong token"):
        remote("web-1", node="web-9").drain()
    assert mock_status(tmp_path, "web-1") is None
    assert mock_status(tmp_path, "web-2") is None


def _raw(server: RemoteServer, method: str, path: str, node: str = "web-1", **kw: Any) -> Any:
    headers = {NODE_HEADER: node, "Authorization": f"Bearer {TOKENS[node]}"}
    headers.update(kw.pop("headers", {}))
    return httpx.request(method, f"{server.url}{path}", headers=headers, **kw)


def _raw_socket(server: RemoteServer, headers: str) -> bytes:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET /v1/load-balancers HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        return sock.recv(4096)


def test_header_names_and_the_scheme_are_case_insensitive(server: RemoteServer) -> None:
    # an HTTP/2 proxy in front lowercases header names; the scheme is case-insensitive too
    token = TOKENS["web-1"]
    for headers in (
        f"x-drainer-node: web-1\r\nauthorization: Bearer {token}\r\n",
        f"X-DRAINER-NODE: web-1\r\nAUTHORIZATION: BEARER {token}\r\n",
        f"X-Drainer-Node: web-1\r\nAuthorization: bearer  {token}\r\n",
    ):
        reply = _raw_socket(server, headers)
        assert reply.startswith(b"HTTP/1.1 200"), (headers, reply)
        assert b'"node": "web-1"' in reply
    wrong = _raw_socket(server, f"x-drainer-node: web-1\r\nauthorization: Basic {token}\r\n")
    assert wrong.startswith(b"HTTP/1.1 401")
    twice = _raw_socket(
        server,
        f"X-Drainer-Node: web-2\r\nx-drainer-node: web-1\r\nAuthorization: Bearer {token}\r\n",
    )
    assert twice.startswith(b"HTTP/1.1 400") and b"send one X-Drainer-Node header" in twice


def test_a_request_cannot_name_a_server(tmp_path: Path, server: RemoteServer) -> None:
    reply = _raw(server, "POST", "/v1/load-balancers/app/drain", json={"server": "web-2"})
    assert reply.status_code == 400
    assert reply.json() == {
        "error": "drain takes a JSON object with these keys: none",
        "kind": "refused",
    }
    assert mock_status(tmp_path, "web-1") is None and mock_status(tmp_path, "web-2") is None
    assert _raw(server, "GET", "/v1/load-balancers").json() == {
        "node": "web-1",
        "load_balancers": ["app"],
    }


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/v1/load-balancers/app/drain", {}, 405),
        ("POST", "/v1/load-balancers/app", {}, 405),
        ("POST", "/v1/load-balancers/app/reboot", {}, 404),
        ("GET", "/admin", {}, 404),
        ("POST", "/v1/load-balancers/app/take-out", {"json": {"kill": "yes"}}, 400),
        ("POST", "/v1/load-balancers/app/drain", {"content": b"x" * 5000}, 413),
        ("POST", "/v1/load-balancers/app/drain", {"content": iter([b"{}"])}, 411),
    ],
)
def test_malformed_requests(
    tmp_path: Path, server: RemoteServer, method: str, path: str, kwargs: Any, status: int
) -> None:
    assert _raw(server, method, path, **kwargs).status_code == status
    assert mock_status(tmp_path, "web-1") is None


def test_rate_limit_per_node_and_retry_after(
    tmp_path: Path, clock: FakeClock, remote: RemoteFactory, server: RemoteServer
) -> None:
    for _ in range(20):  # the burst
        assert _raw(server, "GET", "/v1/load-balancers").status_code == 200
    reply = _raw(server, "GET", "/v1/load-balancers")
    assert reply.status_code == 429 and reply.headers["Retry-After"] == "1"
    # web-2, behind the same address (a NAT), has a rate of its own
    for _ in range(20):
        assert _raw(server, "GET", "/v1/load-balancers", node="web-2").status_code == 200
    # the adapter waits (on the injected clock) and retries
    started = clock.now
    remote("web-1").drain()
    assert mock_status(tmp_path, "web-1") == "draining"
    assert clock.now > started


def test_wrong_tokens_are_limited_per_address(clock: FakeClock, server: RemoteServer) -> None:
    wrong = {"Authorization": "Bearer " + "x" * 20}
    for _ in range(20):  # the burst
        assert _raw(server, "GET", "/v1/load-balancers", headers=wrong).status_code == 401
    guess = _raw(server, "GET", "/v1/load-balancers", headers=wrong)
    assert guess.status_code == 429 and guess.headers["Retry-After"] == "1"
    # then nothing is compared from that address, so a right guess is not told either
    assert _raw(server, "GET", "/v1/load-balancers").status_code == 429
    clock.advance(1)
    assert _raw(server, "GET", "/v1/load-balancers").status_code == 200


def test_too_many_connections_are_refused(tmp_path: Path) -> None:
    config = serve_config(tmp_path, limits={"max_connections": 2, "timeout": "5s"})
    setup = parse_serve_config(config, plugins=PLUGINS)
    with RemoteServer(setup) as running:
        port = int(running.url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            time.sleep(0.3)  # both accepted and holding a slot
            with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
                assert third.recv(100).startswith(b"HTTP/1.1 503")
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.3)
        assert _raw(running, "GET", "/v1/load-balancers").status_code == 200


def _closed_by_server(sock: socket.socket, *, within: float) -> float | None:
    """Trickle a header byte every 0.2 s; the seconds until the server closed, or None."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < within:
        try:
            sock.sendall(b"X")
            if sock.recv(100) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:  # reset, broken pipe: closed too
            return time.monotonic() - started
    return None


def test_a_request_must_arrive_whole_within_the_timeout(tmp_path: Path) -> None:
    # slowloris: a byte now and then resets a per-read timeout, not the request's deadline
    config = serve_config(tmp_path, limits={"timeout": "1s"})
    with RemoteServer(parse_serve_config(config, plugins=PLUGINS)) as running:
        port = int(running.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /v1/load-balancers/app/drain HTTP/1.1\r\nX-Drainer-Node: web-1")
            closed = _closed_by_server(sock, within=4)
        assert closed is not None and closed < 2.5, f"still open after {closed} s"
        # the deadline bounds reading the request, not the call it then makes: this drain
        # waits 1.5 s for the mock's lock and still gets its answer
        with open(tmp_path / "mock-web-1.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            replies: list[int] = []
            call = threading.Thread(
                target=lambda: replies.append(
                    _raw(running, "POST", "/v1/load-balancers/app/drain", timeout=10).status_code
                )
            )
            call.start()
            time.sleep(1.5)
        call.join(timeout=10)
        assert replies == [200]
        assert mock_status(tmp_path, "web-1") == "draining"


def test_one_client_address_cannot_take_every_connection(tmp_path: Path) -> None:
    limits = {"max_connections": 4, "max_connections_per_client": 2, "timeout": "5s"}
    config = serve_config(tmp_path, limits=limits)
    with RemoteServer(parse_serve_config(config, plugins=PLUGINS)) as running:
        port = int(running.url.rsplit(":", 1)[1])

        def connect() -> socket.socket:  # from another loopback address than the sidecar
            return socket.create_connection(
                ("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0)
            )

        idle = [connect() for _ in range(2)]
        try:
            for sock in idle:
                sock.sendall(b"G")  # a request begun, never finished
            time.sleep(0.3)
            with connect() as third:
                reply = third.recv(200)
            assert reply.startswith(b"HTTP/1.1 429") and b"Retry-After: 1" in reply
            # the sidecar, from its own address, still gets a slot
            assert _raw(running, "GET", "/v1/load-balancers").status_code == 200
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.3)
        with connect() as again:  # the slots are given back when the connections end
            again.sendall(
                f"GET /v1/load-balancers HTTP/1.1\r\nHost: x\r\n{NODE_HEADER}: web-1\r\n"
                f"Authorization: Bearer {TOKENS['web-1']}\r\n\r\n".encode()
            )
            assert again.recv(200).startswith(b"HTTP/1.1 200")


def test_connections_that_showed_a_token_do_not_count_against_their_address(
    tmp_path: Path,
) -> None:
    # a fleet behind one NAT address: only strangers are limited per address
    limits = {"max_connections": 8, "max_connections_per_client": 2}
    config = serve_config(tmp_path, limits=limits)
    with RemoteServer(parse_serve_config(config, plugins=PLUGINS)) as running:
        port = int(running.url.rsplit(":", 1)[1])
        kept = []
        try:
            for _ in range(4):  # twice the per-address limit, each kept open
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                kept.append(sock)
                sock.sendall(
                    f"GET /v1/load-balancers HTTP/1.1\r\nHost: x\r\n{NODE_HEADER}: web-1\r\n"
                    f"Authorization: Bearer {TOKENS['web-1']}\r\n\r\n".encode()
                )
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            strangers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
            kept += strangers
            time.sleep(0.3)  # both accepted, neither has sent anything
            with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
                assert third.recv(200).startswith(b"HTTP/1.1 429")
        finally:
            for sock in kept:
                sock.close()


# -- retries -------------------------------------------------------------------------------


def test_the_adapter_retries_until_the_server_is_up(tmp_path: Path) -> None:
    config = serve_config(tmp_path)
    setup = parse_serve_config(config, plugins=PLUGINS)
    server = RemoteServer(setup)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the server comes up during the second wait
        sleeps.append(seconds)
        if len(sleeps) == 2:
            server.start()

    entry = {
        "type": "remote",
        "url": f"http://{config['listen']}",
        "load_balancer": "app",
        "token_file": str(tmp_path / "web-1.token"),
        "retry_delay": "100ms",
    }
    lb = RemoteLoadBalancer(RemoteConfig.model_validate(entry), name="r", node="web-1", sleep=sleep)
    try:
        lb.drain()
    finally:
        server.stop()
    assert sleeps == [0.1, 0.2]
    assert mock_status(tmp_path, "web-1") == "draining"
    with pytest.raises(TransientAdapterError, match="unreachable after 4 attempts"):
        lb.drain()


def test_adapter_errors_keep_their_kind_across_the_wire(
    tmp_path: Path, remote: RemoteFactory
) -> None:
    (tmp_path / "mock-web-1.json").write_text(json.dumps({"fail": {"drain": "LB is busy"}}))
    with pytest.raises(TransientAdapterError, match="LB is busy"):
        remote("web-1", retries=1).drain()


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"listen": "0.0.0.0:9470"}, "not a loopback address: configure tls"),
        ({"load_balancers": {"app": {"type": "haproxy-x"}}}, "unknown type 'haproxy-x'"),
        ({"nodes": {"web-1": {"token_env": "X", "servers": {"db": {}}}}}, "no load balancer 'db'"),
        ({"nodes": {"web-1": {"servers": {"app": {}}}}}, "exactly one of token_file or token_env"),
        (
            {"nodes": {n: {"token_env": n, "servers": {"app": {}}} for n in TOKENS}},
            "nodes.web-2.servers.app: the same server as nodes.web-1.servers.app",
        ),
        (
            {
                "load_balancers": {"app": {"type": "nginx", "file": "/f", "upstream": "app"}},
                "nodes": {"web-1": {"token_env": "X", "servers": {"app": {"server": "a b"}}}},
            },
            "nodes.web-1.servers.app.server: ",
        ),
    ],
)
def test_configuration_problems_name_their_key(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_serve_config(serve_config(tmp_path, **change), plugins=PLUGINS)


HAPROXY = {"type": "haproxy", "instances": ["unix:///run/haproxy/admin.sock"]}


def _two_nodes(tmp_path: Path, base: dict[str, Any], web1: Any, web2: Any) -> dict[str, Any]:
    return serve_config(
        tmp_path,
        load_balancers={"app": base},
        nodes={
            node: {"token_env": node, "servers": {"app": keys}}
            for node, keys in (("web-1", web1), ("web-2", web2))
        },
    )


@pytest.mark.parametrize(
    ("base", "web1", "web2", "message"),
    [
        (
            {**HAPROXY, "backend": "app"},
            {"server": "s1"},
            {"server": "s1", "timeout": 6},
            "nodes.web-2.servers.app.timeout: a node entry may set only backend, server, "
            "address (what names its server); set timeout in load_balancers.app",
        ),
        (
            {**HAPROXY, "backend": "app", "timeout": 6},
            {"server": "s1"},
            {"server": "s1"},
            "nodes.web-2.servers.app: the same server as nodes.web-1.servers.app",
        ),
        (
            HAPROXY,
            {"backend": "app", "server": "s1"},
            {"backend": "app", "server": "s1", "instances": ["unix:///other.sock"]},
            "nodes.web-2.servers.app.instances: a node entry may set only",
        ),
        (
            {**HAPROXY, "backend": "app"},
            {"server": "s1"},
            {"type": "mock", "path": "/x"},
            "nodes.web-2.servers.app.type: a node entry may set only",
        ),
        (
            {"type": "mock", "sessions": 0},
            {"path": "/a"},
            {"path": "/b", "name": "other"},
            "nodes.web-2.servers.app.name: a node entry may set only path",
        ),
        (
            HAPROXY,
            {"address": "10.0.0.4"},
            {"address": "10.0.0.4:8080"},
            "nodes.web-2.servers.app: the same server as nodes.web-1.servers.app",
        ),
        (
            HAPROXY,
            {"address": "[::1]:80"},
            {"address": "[0::1]:80"},
            "nodes.web-2.servers.app: the same server as nodes.web-1.servers.app",
        ),
        (
            HAPROXY,
            {"backend": "app", "server": "s1"},
            {"address": "10.0.0.4"},
            "nodes.web-2.servers.app: names its server by address and nodes.web-1.servers.app "
            "by backend + server: name every node's server the same way",
        ),
        (
            {"type": "remote", "url": "https://x", "load_balancer": "app", "token_env": "T"},
            {},
            {},
            "load_balancers.app.type: drainer serve cannot serve type 'remote'",
        ),
    ],
)
def test_a_node_entry_names_its_server_and_nothing_else(
    tmp_path: Path, base: dict[str, Any], web1: Any, web2: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_serve_config(_two_nodes(tmp_path, base, web1, web2), plugins=PLUGINS)


class _ThirdPartyConfig(AdapterConfig):
    type: Literal["acme"] = "acme"
    pool: str
    member: str | None = None


def test_a_third_party_adapter_is_served_by_the_keys_its_plugin_declares(
    tmp_path: Path,
) -> None:
    plugin = AdapterPlugin(
        config_model=_ThirdPartyConfig, create=lambda config, context: [], node_keys=("member",)
    )
    plugins = {**PLUGINS, "acme": plugin}
    base = {"type": "acme", "pool": "web"}
    setup = parse_serve_config(
        _two_nodes(tmp_path, base, {"member": "a"}, {"member": "b"}), plugins=plugins
    )
    assert setup.entries["web-2"]["app"] == _ThirdPartyConfig(name="app", pool="web", member="b")
    for web2, message in [
        ({"member": "a"}, "nodes.web-2.servers.app: the same server as nodes.web-1.servers.app"),
        ({"pool": "db"}, "nodes.web-2.servers.app.pool: a node entry may set only member"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_serve_config(_two_nodes(tmp_path, base, {"member": "a"}, web2), plugins=plugins)


@pytest.mark.parametrize(
    ("base", "web1", "web2"),
    [
        ({**HAPROXY, "backend": "app", "timeout": 6}, {"server": "s1"}, {"server": "s2"}),
        (HAPROXY, {"backend": "a", "server": "s1"}, {"backend": "b", "server": "s1"}),
        (HAPROXY, {"address": "10.0.0.4:8080"}, {"address": "10.0.0.4:8081"}),
        (HAPROXY, {"address": "10.0.0.4"}, {"address": "10.0.0.5"}),
    ],
)
def test_nodes_with_servers_of_their_own_are_accepted(
    tmp_path: Path, base: dict[str, Any], web1: Any, web2: Any
) -> None:
    setup = parse_serve_config(_two_nodes(tmp_path, base, web1, web2), plugins=PLUGINS)
    assert setup.entries["web-1"]["app"] != setup.entries["web-2"]["app"]


def test_the_adapter_sends_its_token_in_clear_only_to_loopback(tmp_path: Path) -> None:
    entry = {"type": "remote", "load_balancer": "app", "token_env": "T"}
    with pytest.raises(ValidationError, match=r"url: 10\.0\.0\.9 is not a loopback .*allow_plaint"):
        RemoteConfig.model_validate({**entry, "url": "http://10.0.0.9:9470"})
    with pytest.raises(ValidationError, match=r"url: lb-1\.internal is not a loopback"):
        RemoteConfig.model_validate({**entry, "url": "http://lb-1.internal:9470"})
    with pytest.raises(ValidationError, match=r"url: expected https://host:port"):
        RemoteConfig.model_validate({**entry, "url": "lb-1.internal:9470"})
    for url in (
        "https://lb-1.internal:9470",
        "http://127.0.0.1:9470",
        "http://127.0.0.2:9470",
        "http://[::1]:9470",
        "http://localhost:9470",
    ):
        RemoteConfig.model_validate({**entry, "url": url})
    RemoteConfig.model_validate({**entry, "url": "http://10.0.0.9:9470", "allow_plaintext": True})


def test_missing_or_short_tokens_stop_the_server_from_starting(tmp_path: Path) -> None:
    config = serve_config(tmp_path)
    (tmp_path / "web-2.token").write_text("short\n")
    with pytest.raises(ConfigError, match=r"nodes\.web-2: the token in .* is missing or shorter"):
        RemoteServer(parse_serve_config(config, plugins=PLUGINS))
    config["nodes"]["web-2"] = {"token_env": "NOPE_TOKEN", "servers": {"app": {"path": "/x"}}}
    with pytest.raises(ConfigError, match=r"\$NOPE_TOKEN is missing"):
        RemoteServer(parse_serve_config(config, plugins=PLUGINS), environ={})


# -- the entry point, TLS and a real nginx -----------------------------------------------


def test_serve_runs_from_a_file_until_stopped(tmp_path: Path) -> None:
    config = serve_config(tmp_path)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    stopping = threading.Event()
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(serve(path, stopping=stopping, plugins=PLUGINS))
    )
    thread.start()
    try:
        url = f"http://{config['listen']}"
        deadline = time.monotonic() + 5
        while True:
            try:
                reply = httpx.get(
                    f"{url}/v1/load-balancers",
                    headers={NODE_HEADER: "web-2", "Authorization": f"Bearer {TOKENS['web-2']}"},
                )
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert reply.json()["node"] == "web-2"
    finally:
        stopping.set()
        thread.join(timeout=10)
    assert codes == [0]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if not openssl_available():
        pytest.skip("openssl is not installed")
    return self_signed_certificate(tmp_path)


def test_tls_when_a_certificate_is_configured(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    config = serve_config(tmp_path, listen="127.0.0.1:0", tls={"cert": str(cert), "key": str(key)})
    with RemoteServer(parse_serve_config(config, plugins=PLUGINS)) as running:
        assert running.url.startswith("https://127.0.0.1:")
        entry = {
            "type": "remote",
            "url": running.url,
            "load_balancer": "app",
            "token_file": str(tmp_path / "web-1.token"),
            "retries": 0,
        }
        trusting = RemoteConfig.model_validate({**entry, "ca_file": str(cert)})
        RemoteLoadBalancer(trusting, name="r", node="web-1").drain()
        assert mock_status(tmp_path, "web-1") == "draining"
        stranger = RemoteLoadBalancer(RemoteConfig.model_validate(entry), name="r", node="web-1")
        with pytest.raises(TransientAdapterError, match="CERTIFICATE_VERIFY_FAILED"):
            stranger.state()
        with pytest.raises(httpx.TransportError):  # plain HTTP gets no answer
            httpx.get(running.url.replace("https", "http") + "/v1/load-balancers")


def test_sidecars_drain_a_real_nginx_through_serve(tmp_path: Path) -> None:
    if not nginx_available():
        pytest.skip("nginx is not installed")
    backends = [Backend("a"), Backend("b")]
    instance = Nginx(tmp_path / "nginx", servers=[b.address for b in backends])
    try:
        instance.start()
        entry = instance.adapter("unused")
        del entry["server"]
        config = serve_config(
            tmp_path,
            load_balancers={"app": entry},
            nodes={
                node: {
                    "token_file": str(tmp_path / f"{node}.token"),
                    "servers": {"app": {"server": backend.address}},
                }
                for node, backend in zip(TOKENS, backends, strict=True)
            },
        )
        with RemoteServer(parse_serve_config(config, plugins=PLUGINS)) as running:
            make = RemoteConfig.model_validate
            web1 = RemoteLoadBalancer(
                make(
                    {
                        "type": "remote",
                        "url": running.url,
                        "load_balancer": "app",
                        "token_file": str(tmp_path / "web-1.token"),
                    }
                ),
                name="r",
                node="web-1",
            )
            web1.drain()
            text = instance.include.read_text()
            assert f"server {backends[0].address} down;" in text
            assert f"server {backends[1].address};" in text
            view = web1.state()
            assert view.status is not LBStatus.IN_SERVICE
            assert f"server {backends[0].address} down;" in view.detail
            assert {httpx.get(instance.url).text for _ in range(6)} == {"b"}
            assert web1.put_back() is True
            assert "down" not in instance.include.read_text()
    finally:
        instance.stop()
        for backend in backends:
            backend.stop()


# -- a fleet: connections kept, refusals a TLS client can read, reads shared --------------


def _server_sockets(port: int) -> dict[str, int]:
    """The server side's TCP sockets on ``port`` by state, from /proc/net/tcp."""
    states = {"01": "established", "06": "time_wait"}
    found: dict[str, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in states:
            found[states[fields[3]]] = found.get(states[fields[3]], 0) + 1
    return found


def test_connections_are_kept_between_requests(server: RemoteServer, remote: RemoteFactory) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    request = (
        f"GET /v1/load-balancers/app HTTP/1.1\r\nHost: x\r\n{NODE_HEADER}: web-1\r\n"
        f"Authorization: Bearer {TOKENS['web-1']}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        replies = []
        for _ in range(3):  # one after another on one connection
            sock.sendall(request)
            replies.append(sock.recv(4096))
        sock.sendall(request + request)  # two at once (pipelined): answered in turn
        both = b""
        while both.count(b"HTTP/1.1 200") < 2:
            both += sock.recv(4096)
    assert all(r.startswith(b"HTTP/1.1 200") and b"Connection: close" not in r for r in replies)
    # the adapter keeps its one connection: no connection closed behind it (TIME_WAIT)
    lb = remote("web-1")
    before = _server_sockets(port).get("time_wait", 0)
    for _ in range(4):
        lb.state()
    lb.drain()
    after = _server_sockets(port)
    assert (after.get("established"), after.get("time_wait", 0)) == (1, before)
    lb.close()


def test_a_malformed_head_is_refused_and_closed(server: RemoteServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    for head in (
        b"Content-Length: \xb2\r\n",  # a digit to str.isdigit(), not to int()
        b"Content-Length: 1\r\nContent-Length: 2\r\n",
        b" folded\r\n",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /v1/load-balancers HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 400") and b"Connection: close" in reply, head


def test_a_client_asking_to_close_is_closed(server: RemoteServer) -> None:
    reply = _raw_socket(server, f"{NODE_HEADER}: web-1\r\nConnection: close\r\n")
    assert reply.startswith(b"HTTP/1.1 401") and b"Connection: close" in reply


def test_an_idle_connection_is_closed_after_limits_idle(tmp_path: Path) -> None:
    config = serve_config(tmp_path, limits={"idle": "300ms"})
    with RemoteServer(parse_serve_config(config, plugins=PLUGINS)) as running:
        port = int(running.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                f"GET /v1/load-balancers HTTP/1.1\r\nHost: x\r\n{NODE_HEADER}: web-1\r\n"
                f"Authorization: Bearer {TOKENS['web-1']}\r\n\r\n".encode()
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            assert sock.recv(4096) == b"", "an idle connection is closed by the server"


def test_over_the_limit_a_tls_client_reads_the_refusal_and_its_retry_after(
    tmp_path: Path, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    config = serve_config(
        tmp_path,
        listen="127.0.0.1:0",
        tls={"cert": str(cert), "key": str(key)},
        limits={"max_connections": 1},
    )
    trusting = ssl.create_default_context(cafile=str(cert))
    with RemoteServer(parse_serve_config(config, plugins=PLUGINS)) as running:
        port = int(running.url.rsplit(":", 1)[1])

        def connect() -> ssl.SSLSocket:
            plain = socket.create_connection(("127.0.0.1", port), timeout=5)
            return trusting.wrap_socket(plain, server_hostname="127.0.0.1")

        holder = connect()  # takes the one slot
        with connect() as second:  # the handshake succeeds; the refusal is inside TLS
            refusal = second.recv(4096)
        assert refusal.startswith(b"HTTP/1.1 503") and b"Retry-After: 1\r\n" in refusal
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:  # the slot is given back during the wait
            sleeps.append(seconds)
            holder.close()
            time.sleep(0.3)

        entry = {
            "type": "remote",
            "url": running.url,
            "load_balancer": "app",
            "token_file": str(tmp_path / "web-1.token"),
            "ca_file": str(cert),
            "retry_delay": "100ms",
        }
        lb = RemoteLoadBalancer(
            RemoteConfig.model_validate(entry), name="r", node="web-1", sleep=sleep
        )
        lb.drain()
        lb.close()
    assert sleeps[0] == 1.0, "the adapter waits as long as Retry-After says"
    assert mock_status(tmp_path, "web-1") == "draining"


def test_reading_the_state_writes_nothing(tmp_path: Path, remote: RemoteFactory) -> None:
    lb = remote("web-1")
    lb.drain()
    path = tmp_path / "mock-web-1.json"
    before = path.stat()
    for _ in range(3):
        assert lb.state().status is LBStatus.DRAINING
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    lb.close()


def _haproxy_nodes(tmp_path: Path, admin: str, shared_read: str) -> dict[str, Any]:
    return serve_config(
        tmp_path,
        load_balancers={"app": {"type": "haproxy", "instances": [admin]}},
        nodes={
            node: {
                "token_file": str(tmp_path / f"{node}.token"),
                "servers": {"app": {"backend": "app", "server": f"s{i}"}},
            }
            for i, node in enumerate(TOKENS, start=1)
        },
        shared_read=shared_read,
    )


@pytest.mark.skipif(not haproxy_available(), reason="needs /usr/sbin/haproxy")
def test_nodes_share_one_read_of_haproxy_and_a_write_is_never_answered_from_it(
    tmp_path: Path,
) -> None:
    servers = "".join(f"  server s{i} 10.0.0.{i}:80\n" for i in range(1, 4))
    proxy = start_haproxy(f"backend app\n{servers}")
    try:
        config = _haproxy_nodes(tmp_path, proxy.admin, "1h")
        with RemoteServer(parse_serve_config(config, plugins=PLUGINS)) as running:

            def adapter(node: str) -> RemoteLoadBalancer:
                entry = {
                    "type": "remote",
                    "url": running.url,
                    "load_balancer": "app",
                    "token_file": str(tmp_path / f"{node}.token"),
                }
                return RemoteLoadBalancer(RemoteConfig.model_validate(entry), name="r", node=node)

            web1, web2 = adapter("web-1"), adapter("web-2")
            assert web1.state().status is LBStatus.IN_SERVICE
            # a change behind drainer's back is not seen within the interval: web-2's
            # state comes from the read web-1's made
            haproxy_cli(proxy.admin_socket, "set server app/s2 state maint")
            assert web2.state().status is LBStatus.IN_SERVICE
            # a write through drainer serve ends the shared read: the next answers see it,
            # and the change behind its back too
            web1.drain()
            assert web1.state().status is LBStatus.DRAINING
            assert web2.state().status is LBStatus.OUT
            web2.put_back()
            assert web2.state().status is LBStatus.IN_SERVICE
            web1.close()
            web2.close()
        # shared_read: 0 reads every time
        haproxy_cli(proxy.admin_socket, "set server app/s2 state maint")
        config = _haproxy_nodes(tmp_path, proxy.admin, "0s")
        with RemoteServer(parse_serve_config(config, plugins=PLUGINS)) as running:
            entry = {
                "type": "remote",
                "url": running.url,
                "load_balancer": "app",
                "token_file": str(tmp_path / "web-2.token"),
            }
            web2 = RemoteLoadBalancer(RemoteConfig.model_validate(entry), name="r", node="web-2")
            assert web2.state().status is LBStatus.OUT
            haproxy_cli(proxy.admin_socket, "set server app/s2 state ready")
            assert web2.state().status is LBStatus.IN_SERVICE
            web2.close()
    finally:
        proxy.stop()


class _SlowCli:
    """A stand-in for HAProxy's CLI on tcp://: ``show stat`` of one server, whose reply
    (the state when asked) waits while ``hold`` is clear; ``set server`` changes it."""

    def __init__(self) -> None:
        self.status = "UP"
        self.hold = threading.Event()
        self.hold.set()
        self.asked = threading.Event()  # a show stat arrived
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            command = b""
            while chunk := conn.recv(4096):
                command += chunk
            if command.startswith(b"show stat"):
                reply = f"# pxname,svname,status,scur,check_status,sid\napp,s1,{self.status},0,,1\n"
                self.asked.set()
                self.hold.wait(10)
            elif command.startswith(b"show info"):
                reply = "Name: HAProxy\nPid: 42\n"
            else:  # set server app/s1 state drain
                self.status = "DRAIN" if b"drain" in command else self.status
                reply = "\n"
            conn.sendall(reply.encode())

    def close(self) -> None:
        self.hold.set()
        self._listener.close()


def test_a_shared_read_under_way_during_a_write_is_not_kept() -> None:
    cli = _SlowCli()
    shared = SharedReads(cli.address, max_age=3600)
    try:
        cli.hold.clear()
        before: list[list[StatRow]] = []
        reading = threading.Thread(target=lambda: before.append(shared.stat("app", server_id=1)))
        reading.start()
        assert cli.asked.wait(5)  # the read has its reply (UP) and waits to send it
        shared.set_state("app", "s1", "drain")  # the write, meanwhile
        cli.hold.set()
        reading.join(5)
        assert [r.status for r in before[0]] == ["UP"]  # concurrent with the write: either
        assert [r.status for r in shared.stat("app", server_id=1)] == ["DRAIN"]
    finally:
        cli.close()
