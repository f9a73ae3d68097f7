"""Finding 7: nothing checked the setup before it mattered.

An HAProxy stats socket at ``level user`` passed ``config check``; ``drainer drain`` then
printed ``draining`` and exited 0 while HAProxy still showed the server UP. Now
``drainer check`` runs a live preflight (one line per check, exit 1 on a failure), the
daemon logs what fails at start, and ``drainer drain`` says when a load balancer refused.
Real processes: ``drainer`` as a subprocess, a real HAProxy, the fake metadata service
and the fake nginx Plus API over real HTTP.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import World
from nginxprocs import Backend

from drainer.adapters.base import AdapterContext, Check, LoadBalancer, preflight
from drainer.adapters.haproxy.agent import AgentConfig
from drainer.adapters.haproxy.agent import create as create_agent
from drainer.adapters.nginx import NginxConfig, find_servers
from drainer.adapters.nginx import create as create_nginx
from drainer.adapters.remote import RemoteConfig
from drainer.adapters.remote import create as create_remote
from drainer.errors import TransientAdapterError
from drainer.model import LBStatus, LBView
from drainer.serve.config import parse_serve_config
from drainer.serve.http import RemoteServer
from drainer.testing import (
    HAProxy,
    Nginx,
    free_port,
    haproxy_available,
    haproxy_cli,
    nginx_available,
    start_haproxy,
)
from drainer.testing.fake_nginx_plus import FakeNginxPlus

needs_haproxy = pytest.mark.skipif(not haproxy_available(), reason="haproxy is not installed")

BODY = """\
backend app
  server web1 127.0.0.1:9 check inter 200ms
  server web2 127.0.0.1:10
"""


@pytest.fixture
def haproxy() -> Iterator[HAProxy]:
    """An HAProxy with an admin socket and a second one at ``level user``."""
    proxy = start_haproxy(BODY, global_lines=["stats socket {dir}/user.sock mode 600 level user"])
    try:
        yield proxy
    finally:
        proxy.stop()


def use_haproxy(world: World, socket: Path) -> None:
    world.configure(
        load_balancers=[
            {
                "type": "haproxy",
                "name": "edge",
                "instances": [f"unix://{socket}"],
                "backend": "app",
                "server": "web1",
                "min_in_service": 0,
            }
        ]
    )


def admin_state(haproxy: HAProxy, server: str = "web1") -> str:
    """The server's srv_admin_state, read on the admin socket (independent of drainer)."""
    for line in haproxy_cli(haproxy.admin_socket, "show servers state app").splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[3] == server:
            return fields[6]
    raise AssertionError(f"no server {server}")


def test_check_passes_on_a_working_setup(world: World) -> None:
    done = world.cli("check")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = done.stdout.splitlines()
    assert rows and all(row.startswith("ok ") for row in rows), done.stdout
    names = " ".join(rows)
    for what in ("metadata: this VM", "lb1: file", "health check", "state directory"):
        assert what in names, done.stdout


def test_check_fails_naming_what_is_wrong(world: World) -> None:
    world.health.status = 503
    world.configure(node={"name": "web-9"})
    done = world.cli("check")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  health check: GET" in done.stdout
    assert "FAIL  metadata: this VM: the metadata service calls this VM web-1, not web-9" in (
        done.stdout
    )
    assert "ok    state directory" in done.stdout


def test_check_exits_2_on_a_bad_configuration(world: World) -> None:
    world.configure(drain={"timeout": "soon"})
    done = world.cli("check")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@needs_haproxy
def test_check_fails_on_a_level_user_socket(world: World, haproxy: HAProxy) -> None:
    use_haproxy(world, haproxy.dir / "user.sock")
    done = world.cli("check")
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [row for row in done.stdout.splitlines() if row.startswith("FAIL")]
    assert len(failed) == 1, done.stdout
    assert "level admin" in failed[0] and "Permission denied" in failed[0], failed
    assert "ok    edge@unix://" in done.stdout  # it answers, the server is found


@needs_haproxy
def test_check_passes_on_an_admin_socket_and_changes_nothing(
    world: World, haproxy: HAProxy
) -> None:
    use_haproxy(world, haproxy.admin_socket)
    haproxy_cli(haproxy.admin_socket, "set server app/web2 state drain")
    before = (admin_state(haproxy, "web1"), admin_state(haproxy, "web2"))
    done = world.cli("check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "level admin" in done.stdout
    assert (admin_state(haproxy, "web1"), admin_state(haproxy, "web2")) == before


@needs_haproxy
def test_drain_through_a_level_user_socket_says_it_was_refused(
    world: World, haproxy: HAProxy
) -> None:
    use_haproxy(world, haproxy.dir / "user.sock")
    done = world.cli("drain")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "draining" not in done.stdout
    assert "refused" in done.stderr and "level admin" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert admin_state(haproxy) == "0"  # still in service: nothing was drained


@needs_haproxy
def test_drain_through_an_admin_socket_still_works(world: World, haproxy: HAProxy) -> None:
    use_haproxy(world, haproxy.admin_socket)
    done = world.cli("drain")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "drain requested" in done.stdout
    assert int(admin_state(haproxy)) & (0x08 | 0x01)  # forced drain, or maint once drained


@needs_haproxy
def test_the_daemon_logs_a_failed_preflight_and_runs(world: World, haproxy: HAProxy) -> None:
    use_haproxy(world, haproxy.dir / "user.sock")
    daemon = world.start()
    world.wait(
        lambda: "preflight failed" in world.log_path.read_text(),
        "the preflight failure in the log",
    )
    log = world.log_path.read_text()
    line = next(row for row in log.splitlines() if "preflight failed" in row)
    assert "level admin" in line and "running anyway" in line and "ERROR" in line, line
    world.wait_polls(3)
    assert daemon.alive()


def test_nginx_plus_read_only_api_fails_the_check(world: World) -> None:
    with FakeNginxPlus(upstreams={"app": ["10.0.0.4:8080"]}, write=False) as fake:
        world.configure(
            load_balancers=[
                {
                    "type": "nginx-plus",
                    "name": "plus",
                    "api": f"{fake.url}/api",
                    "upstream": "app",
                    "server": "10.0.0.4:8080",
                }
            ]
        )
        done = world.cli("check")
        patched = [r for r in fake.requests if r[0] == "PATCH"]
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ok    plus: server" in done.stdout
    assert "FAIL  plus: API writable" in done.stdout and "read-only" in done.stdout
    assert patched and all(body == {} for _, _, body in patched)  # nothing to change


def test_nginx_plus_writable_api_passes_and_changes_nothing(world: World) -> None:
    with FakeNginxPlus(upstreams={"app": ["10.0.0.4:8080"]}) as fake:
        world.configure(
            load_balancers=[
                {
                    "type": "nginx-plus",
                    "name": "plus",
                    "api": f"{fake.url}/api",
                    "upstream": "app",
                    "server": "10.0.0.4:8080",
                }
            ]
        )
        done = world.cli("check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok    plus: API writable" in done.stdout


class _StateOnly:
    """A third-party adapter written before preflight() existed."""

    name = "old"

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def state(self) -> LBView:
        if self.fail:
            raise TransientAdapterError("unreachable")
        return LBView(LBStatus.IN_SERVICE, 0, "fine")


def test_an_adapter_without_preflight_is_checked_by_reading_its_state() -> None:
    assert preflight(_StateOnly(False)) == [Check("old: answers", True, "in_service: fine")]  # type: ignore[arg-type]
    assert preflight(_StateOnly(True)) == [Check("old: preflight", False, "unreachable")]  # type: ignore[arg-type]


# -- each adapter's preflight, on its own --------------------------------------------------------


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    if not nginx_available():
        pytest.skip("nginx is not installed")
    backend = Backend("a")
    instance = Nginx(tmp_path / "nginx", servers=[backend.address])
    instance.start()
    yield instance
    instance.stop()
    backend.stop()


def nginx_lb(tmp_path: Path, instance: Nginx, **overrides: Any) -> LoadBalancer:
    server = overrides.pop("server", find_servers(instance.include.read_text())[0].address)
    config = NginxConfig.model_validate(instance.adapter(server, **overrides))
    [lb] = create_nginx(config, AdapterContext(node="web-1", state_dir=tmp_path / "state"))
    return lb


def failed(checks: list[Check]) -> list[str]:
    return [f"{c.name}: {c.detail}" for c in checks if not c.ok]


def test_nginx_preflight_checks_binary_file_syntax_and_master(tmp_path: Path, nginx: Nginx) -> None:
    before = nginx.include.read_bytes()
    checks = preflight(nginx_lb(tmp_path, nginx))
    assert failed(checks) == [] and len(checks) == 4, checks
    assert nginx.include.read_bytes() == before  # nothing edited
    assert "(SIGHUP) received" not in nginx.error_log.read_text()  # nothing reloaded

    wrong = failed(preflight(nginx_lb(tmp_path, nginx, server="10.9.9.9:80")))
    assert len(wrong) == 1 and "owned file" in wrong[0] and "10.9.9.9:80" in wrong[0]
    missing = failed(preflight(nginx_lb(tmp_path, nginx, nginx=str(tmp_path / "nope"))))
    assert any("nginx binary" in f for f in missing) and any("nginx -t" in f for f in missing)
    nginx.stop()
    stopped = failed(preflight(nginx_lb(tmp_path, nginx)))
    assert len(stopped) == 1 and "nginx running" in stopped[0] and "not running" in stopped[0]


def test_remote_preflight_checks_the_token_and_the_far_end(tmp_path: Path) -> None:
    tokens = {"web-1": "a-token-of-web-1-long-enough"}
    (tmp_path / "web-1.token").write_text(tokens["web-1"] + "\n")
    (tmp_path / "wrong.token").write_text("a-token-of-nobody-long-enough\n")
    serve = {
        "listen": f"127.0.0.1:{free_port()}",
        "state_dir": str(tmp_path / "serve-state"),
        "load_balancers": {"app": {"type": "mock", "sessions": 0}},
        "nodes": {
            node: {
                "token_file": str(tmp_path / f"{node}.token"),
                "servers": {"app": {"path": str(tmp_path / f"mock-{node}.json")}},
            }
            for node in tokens
        },
    }
    with RemoteServer(parse_serve_config(serve)) as server:

        def lb(token: str, name: str = "app") -> LoadBalancer:
            entry = {
                "type": "remote",
                "url": server.url,
                "load_balancer": name,
                "token_file": str(tmp_path / f"{token}.token"),
                "retries": 0,
            }
            [made] = create_remote(
                RemoteConfig.model_validate(entry),
                AdapterContext(node="web-1", state_dir=tmp_path / "state"),
            )
            return made

        good = preflight(lb("web-1"))
        assert failed(good) == [], good
        assert any(c.name.endswith("far end: app: file") for c in good), good
        bad = failed(preflight(lb("wrong")))
        assert len(bad) == 1 and "drainer serve" in bad[0] and "wrong token" in bad[0], bad
        other = failed(preflight(lb("web-1", name="edge")))
        assert len(other) == 1 and "does not offer 'edge'" in other[0], other


def test_agent_preflight_checks_its_listen_address(tmp_path: Path) -> None:
    port = free_port()
    config = AgentConfig.model_validate(
        {"type": "haproxy-agent", "listen": f"127.0.0.1:{port}", "service_port": 80}
    )
    context = AdapterContext(node="web-1", state_dir=tmp_path)
    [agent] = create_agent(config, context)
    assert failed(preflight(agent)) == []
    with socket.socket() as other:  # another program holds the port
        other.bind(("127.0.0.1", port))
        other.listen(1)
        held = failed(preflight(agent))
    assert len(held) == 1 and "another program has the port" in held[0], held
