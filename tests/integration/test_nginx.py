"""The ``nginx`` adapter: the file edits as pure functions, then against a real nginx 1.22.

Every nginx here is our own (tests/nginxprocs.py): its own prefix, config, pid file and
error log under tmp_path, stopped by PID at the end of the test.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nginxprocs import Backend, Traffic
from pydantic import ValidationError

from drainer.adapters.base import AdapterContext, LBStatus
from drainer.adapters.nginx import NginxConfig, NginxLoadBalancer, create, find_servers, set_down
from drainer.errors import PermanentAdapterError, TransientAdapterError
from drainer.testing import Nginx, nginx_available, wait_until

# -- the file, pure --------------------------------------------------------------------

CONF = """\
# operator's comment: server 10.0.0.9:80; (not in an upstream)
upstream app {
    hash $remote_addr consistent;
    server 10.0.0.4:8080 weight=5 max_fails=3;   # web-1
\tserver 10.0.0.5:8080;
    server 10.0.0.6:8080 backup down;
}

upstream other {
    server 10.0.0.4:8080;
}
"""


def test_drain_adds_down_and_keeps_every_other_byte() -> None:
    out = set_down(CONF, upstream="app", address="10.0.0.4:8080", down=True)
    assert out == CONF.replace(
        "server 10.0.0.4:8080 weight=5 max_fails=3;   # web-1",
        "server 10.0.0.4:8080 weight=5 max_fails=3 down;   # web-1",
    )
    assert set_down(out, upstream="app", address="10.0.0.4:8080", down=False) == CONF


def test_edit_is_idempotent_and_scoped_to_the_upstream() -> None:
    assert set_down(CONF, upstream="app", address="10.0.0.6:8080", down=True) == CONF
    out = set_down(CONF, upstream="other", address="10.0.0.4:8080", down=True)
    assert "upstream other {\n    server 10.0.0.4:8080 down;\n}" in out
    assert "server 10.0.0.4:8080 weight=5 max_fails=3;" in out
    assert (
        set_down(CONF, upstream="app", address="10.0.0.5:8080", down=True).count(
            "\tserver 10.0.0.5:8080 down;\n"
        )
        == 1
    )


def test_region_limits_what_drainer_reads_and_edits() -> None:
    text = (
        "upstream app {\n    server 10.0.0.4:8080;\n}\n"
        "# drainer:begin web\nupstream web {\n    server 10.0.0.4:8080;\n}\n# drainer:end web\n"
    )
    assert [(s.upstream, s.address) for s in find_servers(text, "web")] == [
        ("web", "10.0.0.4:8080")
    ]
    with pytest.raises(ValueError, match=r"no line 'server 10\.0\.0\.4:8080"):
        set_down(text, upstream="app", address="10.0.0.4:8080", down=True, region="web")
    with pytest.raises(ValueError, match="drainer:begin nope"):
        find_servers(text, "nope")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("upstream app {\n    server 10.0.0.5:80;\n}\n", r"no line 'server 10\.0\.0\.4:8080"),
        ("upstream app {\n server 10.0.0.4:8080;\n server 10.0.0.4:8080;\n}\n", "2 lines"),
        ("upstream app {\n    server 10.0.0.4:8080\n        weight=2;\n}\n", "on one line"),
        ("upstream app {\n    server 10.0.0.4:8080;\n", "not closed"),
    ],
)
def test_shapes_drainer_will_not_edit(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        set_down(text, upstream="app", address="10.0.0.4:8080", down=True)


def test_config_refuses_what_could_inject_into_the_file() -> None:
    base = {"type": "nginx", "file": "/x", "upstream": "app"}
    with pytest.raises(ValidationError, match="not an address"):
        NginxConfig.model_validate({**base, "server": "10.0.0.4:80; down"})
    with pytest.raises(ValidationError, match="plain nginx name"):
        NginxConfig.model_validate({**base, "server": "10.0.0.4:80", "upstream": "a {"})


# -- against a real nginx ----------------------------------------------------------------


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started = [Backend(name) for name in ("a", "b", "c")]
    yield started
    for backend in started:
        backend.stop()


@pytest.fixture
def nginx(tmp_path: Path, backends: list[Backend]) -> Iterator[Nginx]:
    if not nginx_available():
        pytest.skip("nginx is not installed")
    instance = Nginx(tmp_path / "nginx", servers=[b.address for b in backends])
    instance.start()
    yield instance
    instance.stop()


LBFactory = Callable[..., NginxLoadBalancer]


@pytest.fixture
def make_lb(tmp_path: Path, nginx: Nginx) -> LBFactory:
    def make(server: str, **overrides: Any) -> NginxLoadBalancer:
        config = NginxConfig.model_validate(nginx.adapter(server, **overrides))
        [lb] = create(config, AdapterContext(node="web-1", state_dir=tmp_path / "state"))
        assert isinstance(lb, NginxLoadBalancer)
        return lb

    return make


def _reloads(nginx: Nginx) -> int:
    return nginx.error_log.read_text().count("(SIGHUP) received")


def _slow_request(url: str, seconds: float) -> tuple[threading.Thread, list[int | str]]:
    result: list[int | str] = []

    def run() -> None:
        try:
            result.append(httpx.get(f"{url}/slow?s={seconds}", timeout=seconds + 10).status_code)
        except httpx.HTTPError as exc:
            result.append(type(exc).__name__)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_drain_and_put_back_under_traffic(
    nginx: Nginx, backends: list[Backend], make_lb: LBFactory
) -> None:
    a = backends[0]
    lb = make_lb(a.address)
    traffic = Traffic(nginx.url, clients=3)
    try:
        wait_until(lambda: traffic.answers["a"] > 10)
        assert lb.state().status is LBStatus.IN_SERVICE
        slow, slow_result = _slow_request(nginx.url, 1.5)  # holds one worker of before
        wait_until(lambda: sum(b.paths["/slow"] for b in backends) == 1)
        workers_before = nginx.workers()

        lb.drain()

        view = lb.state()
        assert view.status is LBStatus.DRAINING and view.sessions >= 1, view
        assert "server " + a.address + " down;" in view.detail
        assert _current(nginx, workers_before), "no new workers after the drain's reload"
        hits = a.hits
        seen = traffic.total()
        wait_until(lambda: traffic.total() > seen + 60)
        assert a.hits == hits, "the drained server still got new requests"
        slow.join(timeout=10)
        assert slow_result == [200], "an in-flight request was cut by the drain"
        wait_until(lambda: lb.state().status is LBStatus.OUT)
        assert lb.state().sessions == 0

        assert lb.put_back() is True
        assert lb.state().status is LBStatus.IN_SERVICE
        hits = a.hits
        wait_until(lambda: a.hits > hits + 5)
    finally:
        traffic.stop()
    assert traffic.failures == [], "clients with a connection per request saw failures"
    assert traffic.total() > 100


def _current(nginx: Nginx, before: list[int]) -> list[int]:
    """The workers that started after ``before`` was taken."""
    return [pid for pid in nginx.workers() if pid not in before]


def test_repeated_calls_do_not_reload_again(nginx: Nginx, make_lb: LBFactory) -> None:
    lb = make_lb(nginx_server(nginx, 0))
    lb.put_back()  # already in service: nothing to do
    assert _reloads(nginx) == 0
    lb.drain()
    lb.drain()
    lb.take_out(kill=False)
    assert _reloads(nginx) == 1
    lb.put_back()
    lb.put_back()
    assert _reloads(nginx) == 2


def nginx_server(nginx: Nginx, index: int) -> str:
    return find_servers(nginx.include.read_text())[index].address


def test_broken_configuration_is_rejected_by_nginx_t_and_rolled_back(
    nginx: Nginx, make_lb: LBFactory
) -> None:
    lb = make_lb(nginx_server(nginx, 0))
    before = nginx.include.read_bytes()
    workers = nginx.workers()
    nginx.write_main(extra_http="    bogus_directive on;")  # someone else broke nginx.conf

    with pytest.raises(PermanentAdapterError) as caught:
        lb.drain()

    message = str(caught.value)
    assert "nginx -t rejected the configuration" in message
    assert 'unknown directive "bogus_directive"' in message
    assert "rolled back" in message
    assert nginx.include.read_bytes() == before
    assert nginx.workers() == workers, "nginx was reloaded although -t failed"
    assert lb.state().status is LBStatus.IN_SERVICE


def test_reload_that_does_not_take_effect_is_detected_and_rolled_back(
    nginx: Nginx, make_lb: LBFactory
) -> None:
    lb = make_lb(nginx_server(nginx, 0), reload_timeout="1s")
    before = nginx.include.read_bytes()
    workers = nginx.workers()
    with socket.socket() as taken:  # nginx -t does not bind; the reload does, and fails
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        nginx.write_main(extra_http=f"    server {{ listen 127.0.0.1:{port}; }}")

        with pytest.raises(TransientAdapterError) as caught:
            lb.drain()
        assert set(workers) <= set(nginx.workers()), "the old workers should still serve"

    message = str(caught.value)
    assert "did not apply it" in message
    assert "bind() to 127.0.0.1:" in message and "Address already in use" in message
    assert "rolled back" in message
    assert nginx.include.read_bytes() == before
    assert lb.state().status is LBStatus.IN_SERVICE


def test_two_drains_at_once_are_serialized(
    nginx: Nginx, backends: list[Backend], make_lb: LBFactory
) -> None:
    lbs = [make_lb(backends[0].address), make_lb(backends[1].address)]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def drain(lb: NginxLoadBalancer) -> None:
        start.wait()
        try:
            lb.drain()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(lb,)) for lb in lbs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert errors == []
    text = nginx.include.read_text()
    assert f"server {backends[0].address} down;" in text
    assert f"server {backends[1].address} down;" in text
    assert f"server {backends[2].address};" in text
    assert _reloads(nginx) == 2, "each drain must run its own whole transaction"
    for lb in lbs:
        assert lb.state().status is not LBStatus.IN_SERVICE
    assert httpx.get(nginx.url).text == "c"


def test_an_edit_waits_for_the_lock_and_gives_up_at_its_timeout(
    nginx: Nginx, make_lb: LBFactory
) -> None:
    lb = make_lb(nginx_server(nginx, 0), lock_timeout="300ms")
    lock_path = nginx.include.parent / f".{nginx.include.name}.drainer.lock"
    with open(lock_path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        began = time.monotonic()
        with pytest.raises(TransientAdapterError, match="held its lock"):
            lb.drain()
        assert time.monotonic() - began >= 0.3
    assert "down" not in nginx.include.read_text()
    lb.drain()
    assert lb.state().status is not LBStatus.IN_SERVICE


_CHILD = """\
import json, sys
from pathlib import Path
from drainer.adapters.base import AdapterContext
from drainer.adapters.nginx import NginxConfig, create
config = NginxConfig.model_validate(json.loads(sys.argv[1]))
[lb] = create(config, AdapterContext('web-1', Path(sys.argv[2])))
if sys.argv[3] == 'state':
    view = lb.state()
    print(json.dumps([view.status.value, view.detail]))
else:
    getattr(lb, sys.argv[3])()
"""


def _in_another_process(
    entry: dict[str, Any], state_dir: Path, *, call: str
) -> subprocess.CompletedProcess[str]:
    """``call`` ('state', 'drain' or 'put_back') on an adapter built in another process."""
    return subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(entry), str(state_dir), call],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_another_process_sees_the_same_state(
    tmp_path: Path, nginx: Nginx, make_lb: LBFactory
) -> None:
    server = nginx_server(nginx, 0)
    make_lb(server).drain()
    done = _in_another_process(nginx.adapter(server), tmp_path / "state", call="state")
    assert done.returncode == 0, done.stderr
    status, detail = json.loads(done.stdout)
    assert status in ("draining", "out")
    assert f"server {server} down;" in detail


def test_a_transaction_cut_short_after_the_rename_is_finished_by_the_next_drain(
    nginx: Nginx, make_lb: LBFactory
) -> None:
    server = nginx_server(nginx, 0)
    lb = make_lb(server)
    lb.put_back()  # in service already: only the record is written, as nginx runs now
    reloads = _reloads(nginx)
    # as if drainer died right after renaming the edited file into place
    text = nginx.include.read_text()
    nginx.include.write_text(text.replace(f"server {server};", f"server {server} down;"))

    view = lb.state()
    assert view.status is LBStatus.IN_SERVICE, "nginx still runs the line without down"
    assert "not yet applied" in view.detail
    lb.drain()
    assert _reloads(nginx) == reloads + 1
    assert lb.state().status is not LBStatus.IN_SERVICE
    assert "not yet applied" not in lb.state().detail


def _crash_after_the_rename(tmp_path: Path, nginx: Nginx, *, server: str, call: str) -> None:
    """``call`` in another process that is killed -9 after the rename, before the reload.

    Its ``nginx -t`` is a script that SIGKILLs its parent: no rollback, no record saved.
    """
    killer = tmp_path / "nginx-killing-its-caller"
    killer.write_text('#!/bin/sh\nkill -KILL "$PPID"\nexit 1\n')
    killer.chmod(0o755)
    before = nginx.include.read_text()
    entry = nginx.adapter(server, nginx=str(killer))
    done = _in_another_process(entry, tmp_path / "state", call=call)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert nginx.include.read_text() != before, "killed before the rename"


def _respawn_a_worker(nginx: Nginx) -> None:
    """SIGKILL one worker: the master forks another with the same configuration."""
    wait_until(lambda: len(nginx.workers()) == 2)  # no worker of before still shutting down
    workers = nginx.workers()
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: len(nginx.workers()) == 2 and workers[0] not in nginx.workers())


def _share(nginx: Nginx, backend: Backend, requests: int = 30) -> int:
    """How many of ``requests`` sent one after the other reach ``backend``."""
    hits = backend.hits
    for _ in range(requests):
        assert httpx.get(nginx.url, timeout=5).status_code == 200
    return backend.hits - hits


def test_a_drain_cut_short_still_reads_in_service_after_a_worker_respawns(
    tmp_path: Path, nginx: Nginx, backends: list[Backend], make_lb: LBFactory
) -> None:
    a = backends[0]
    lb = make_lb(a.address)
    lb.put_back()  # in service already: only the record is written
    _crash_after_the_rename(tmp_path, nginx, server=a.address, call="drain")
    assert f"server {a.address} down;" in nginx.include.read_text()
    reloads = _reloads(nginx)

    _respawn_a_worker(nginx)  # new workers, and still no reload

    view = lb.state()
    assert view.status is LBStatus.IN_SERVICE, view
    assert "not yet applied" in view.detail
    assert _share(nginx, a) > 0, "nginx still sends requests to the node"
    lb.drain()  # what the core does for a node that reads in service
    lb.take_out(kill=False)
    assert _reloads(nginx) == reloads + 1, "the drain must run its transaction again"
    assert lb.state().status is not LBStatus.IN_SERVICE
    assert "not yet applied" not in lb.state().detail
    assert _share(nginx, a) == 0


def test_a_put_back_cut_short_still_reads_out_after_a_worker_respawns(
    tmp_path: Path, nginx: Nginx, backends: list[Backend], make_lb: LBFactory
) -> None:
    a = backends[0]
    lb = make_lb(a.address)
    lb.drain()
    _crash_after_the_rename(tmp_path, nginx, server=a.address, call="put_back")
    assert f"server {a.address};" in nginx.include.read_text()
    reloads = _reloads(nginx)

    _respawn_a_worker(nginx)

    view = lb.state()
    assert view.status is LBStatus.OUT, view
    assert "not yet applied" in view.detail
    assert _share(nginx, a) == 0, "nginx still has the node down"
    assert lb.put_back() is True  # what the core does for a node that reads out
    assert _reloads(nginx) == reloads + 1, "the put-back must run its transaction again"
    assert lb.state().status is LBStatus.IN_SERVICE
    assert "not yet applied" not in lb.state().detail
    assert _share(nginx, a) > 0


def test_a_symlinked_file_is_edited_through_the_link_and_stays_a_link(
    nginx: Nginx, backends: list[Backend], make_lb: LBFactory
) -> None:
    a = backends[0]
    available = nginx.root / "sites-available"  # the operator's layout: enabled -> available
    available.mkdir()
    real = available / "app.conf"
    os.replace(nginx.include, real)
    nginx.include.symlink_to(real)
    original = real.read_bytes()

    with pytest.raises(TransientAdapterError, match="rolled back"):
        make_lb(a.address, reload_command=["false"]).drain()
    assert nginx.include.is_symlink() and nginx.include.resolve() == real
    assert real.read_bytes() == original

    lb = make_lb(a.address)
    lb.drain()
    assert nginx.include.is_symlink() and nginx.include.resolve() == real
    assert real.read_bytes() == original.replace(
        f"server {a.address};".encode(), f"server {a.address} down;".encode()
    )
    assert (available / ".app.conf.drainer.lock").exists(), "the lock is beside the real file"
    assert sorted(p.name for p in available.iterdir()) == [".app.conf.drainer.lock", "app.conf"]
    assert lb.state().status is not LBStatus.IN_SERVICE
    assert _share(nginx, a) == 0, "nginx reads the edit through the link"
    lb.put_back()
    assert real.read_bytes() == original and nginx.include.is_symlink()


def test_a_drain_undone_by_someone_elses_edit_and_reload_reads_in_service(
    nginx: Nginx, make_lb: LBFactory
) -> None:
    server = nginx_server(nginx, 0)
    lb = make_lb(server)
    original = nginx.include.read_text()
    lb.drain()
    nginx.include.write_text(original)  # configuration management puts its file back
    assert lb.state().status is not LBStatus.IN_SERVICE, "not reloaded yet: still down"
    workers = nginx.workers()
    os.kill(nginx.master, signal.SIGHUP)  # ... and reloads nginx
    wait_until(lambda: not set(workers) & set(nginx.workers()))

    assert lb.state().status is LBStatus.IN_SERVICE
    lb.drain()  # what the core does when a drained node reads in service
    assert f"server {server} down;" in nginx.include.read_text()
    assert lb.state().status is not LBStatus.IN_SERVICE


def test_take_out_with_kill_ends_the_old_workers(nginx: Nginx, make_lb: LBFactory) -> None:
    lb = make_lb(nginx_server(nginx, 0))
    slow, slow_result = _slow_request(nginx.url, 30)
    wait_until(lambda: len(nginx.workers()) == 2)
    time.sleep(0.2)  # the slow request has reached a backend
    lb.drain()
    view = lb.state()
    assert view.status is LBStatus.DRAINING and view.sessions == 1, view

    lb.take_out(kill=True)

    wait_until(lambda: lb.state().status is LBStatus.OUT)
    slow.join(timeout=5)
    assert slow_result and slow_result != [200], "the cut request cannot have succeeded"


def test_nginx_not_running_is_a_transient_error(
    tmp_path: Path, nginx: Nginx, make_lb: LBFactory
) -> None:
    lb = make_lb(nginx_server(nginx, 0), pid_file=str(tmp_path / "nope.pid"))
    with pytest.raises(TransientAdapterError, match="nginx is not running"):
        lb.drain()
    assert "down" not in nginx.include.read_text()


def test_keepalive_clients_on_reloads(nginx: Nginx, make_lb: LBFactory) -> None:
    """nginx 1.22 closes idle client keep-alive connections on every reload.

    Measured here and reported, not asserted to be zero: it is not (see the notes in
    deploy/nginx/). What is asserted: clients with a connection per request never fail.
    """
    lbs = [make_lb(nginx_server(nginx, i)) for i in (0, 1)]
    keepalive = Traffic(nginx.url, clients=3, keepalive=True)
    fresh = Traffic(nginx.url, clients=1, keepalive=False)
    try:
        for _ in range(4):
            for lb in lbs:
                lb.drain()
                lb.put_back()
    finally:
        keepalive.stop()
        fresh.stop()
    print(
        f"\nkeep-alive clients: {len(keepalive.failures)} failures in {keepalive.total()} "
        f"requests over 16 reloads; per-request connections: {len(fresh.failures)} failures"
    )
    assert fresh.failures == []
    assert keepalive.total() > 100
    assert all("HTTP" not in f for f in keepalive.failures), "only dropped connections"


def test_state_names_the_file_problem(tmp_path: Path, nginx: Nginx, make_lb: LBFactory) -> None:
    lb = make_lb("127.0.0.1:1")
    with pytest.raises(PermanentAdapterError, match=r"no line 'server 127\.0\.0\.1:1"):
        lb.state()
    assert os.path.exists(nginx.include)


def test_a_stale_pid_file_never_signals_another_process(tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "30"])
    try:
        pid_file = tmp_path / "nginx.pid"
        pid_file.write_text(f"{victim.pid}\n")
        upstreams = tmp_path / "upstreams.conf"
        upstreams.write_text("upstream app {\n    server 127.0.0.1:8081;\n}\n")
        config = NginxConfig(
            file=upstreams,
            upstream="app",
            server="127.0.0.1:8081",
            pid_file=pid_file,
        )
        (lb,) = create(config, AdapterContext(node="web-1", state_dir=tmp_path / "state"))
        with pytest.raises(TransientAdapterError, match="is another process"):
            lb.drain()
        assert victim.poll() is None  # not signalled
        assert "down" not in upstreams.read_text()  # nothing half-done
    finally:
        victim.kill()
        victim.wait()
