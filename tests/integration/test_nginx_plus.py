"""The ``nginx-plus`` adapter against drainer.testing.fake_nginx_plus, over real HTTP.

nginx Plus cannot run here: the fake follows the documented API responses (module
docstring of drainer/testing/fake_nginx_plus.py), and the first tests pin that fake down.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from drainer.adapters.base import AdapterContext, LBStatus
from drainer.adapters.nginx_plus import NginxPlusConfig, NginxPlusLoadBalancer, create
from drainer.errors import PermanentAdapterError, TransientAdapterError
from drainer.testing.fake_nginx_plus import HREF, FakeNginxPlus

WEB1, WEB2 = "10.0.0.4:8080", "10.0.0.5:8080"
SERVERS = "/api/9/http/upstreams/app/servers"
CONF_FIELDS = {
    "id",
    "server",
    "weight",
    "max_conns",
    "max_fails",
    "fail_timeout",
    "slow_start",
    "route",
    "backup",
    "down",
}
PEER_FIELDS = {
    "id",
    "server",
    "name",
    "backup",
    "weight",
    "state",
    "active",
    "requests",
    "responses",
    "sent",
    "received",
    "fails",
    "unavail",
    "health_checks",
    "downtime",
}


@pytest.fixture
def fake() -> Iterator[FakeNginxPlus]:
    with FakeNginxPlus(upstreams={"app": [WEB1, WEB2], "legacy": [WEB1]}, static=["legacy"]) as f:
        yield f


@pytest.fixture
def api(fake: FakeNginxPlus) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{fake.url}/api/9", trust_env=False, timeout=5) as client:
        yield client


def make_lb(url: str, tmp_path: Path, **overrides: Any) -> NginxPlusLoadBalancer:
    entry = {"type": "nginx-plus", "api": f"{url}/api", "upstream": "app", "server": WEB1}
    config = NginxPlusConfig.model_validate({**entry, **overrides})
    [lb] = create(config, AdapterContext(node="web-1", state_dir=tmp_path))
    assert isinstance(lb, NginxPlusLoadBalancer)
    return lb


# -- the fake follows the documentation ------------------------------------------------


def test_fake_lists_versions_and_documented_objects(fake: FakeNginxPlus, api: httpx.Client) -> None:
    assert httpx.get(f"{fake.url}/api/").json() == list(range(1, 10))
    servers = api.get("/http/upstreams/app/servers/").json()
    assert [s["server"] for s in servers] == [WEB1, WEB2]
    assert all(set(s) == CONF_FIELDS for s in servers)
    upstream = api.get("/http/upstreams/app/").json()
    assert set(upstream) == {"peers", "keepalive", "zombies", "zone"}
    assert all(set(p) == PEER_FIELDS for p in upstream["peers"])
    assert upstream["peers"][0]["state"] == "up"
    assert set(api.get("/http/upstreams/").json()) == {"app"}, "static upstreams are not listed"


def test_fake_patch_changes_state_and_answers_the_server(api: httpx.Client) -> None:
    reply = api.patch("/http/upstreams/app/servers/0", json={"drain": True})
    assert reply.status_code == 200
    assert reply.json() == {**reply.json(), "id": 0, "server": WEB1, "drain": True, "down": False}
    assert api.get("/http/upstreams/app/").json()["peers"][0]["state"] == "draining"
    api.patch("/http/upstreams/app/servers/0", json={"down": True})
    assert api.get("/http/upstreams/app/").json()["peers"][0]["state"] == "down"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/api/10/", None, 404, "UnknownVersion"),
        ("GET", "/api/9/nope", None, 404, "PathNotFound"),
        ("GET", "/api/9/http/upstreams/nope/servers/", None, 404, "UpstreamNotFound"),
        ("GET", "/api/9/http/upstreams/legacy/servers/", None, 400, "UpstreamStatic"),
        ("PATCH", f"{SERVERS}/x", {"down": True}, 400, "UpstreamBadServerId"),
        ("PATCH", f"{SERVERS}/7", {"down": True}, 404, "UpstreamServerNotFound"),
        ("PATCH", f"{SERVERS}/0", {"dwn": True}, 400, "UpstreamConfFormatError"),
        ("PATCH", f"{SERVERS}/0", {"down": "yes"}, 400, "UpstreamConfFormatError"),
        ("PATCH", f"{SERVERS}/0", {"weight": 0}, 400, "UpstreamBadWeight"),
        ("PUT", f"{SERVERS}/0", None, 405, "MethodNotSupported"),
    ],
)  # fmt: skip
def test_fake_errors_are_documented_error_objects(
    fake: FakeNginxPlus, method: str, path: str, body: object, status: int, code: str
) -> None:
    reply = httpx.request(method, f"{fake.url}{path}", json=body)
    assert reply.status_code == status
    data = reply.json()
    assert set(data) == {"error", "request_id", "href"}
    assert data["error"]["status"] == status and data["error"]["code"] == code
    assert data["href"] == HREF
    assert fake.conf("app", WEB1)["down"] is False, "a refused change changed nothing"


def test_fake_invalid_json_is_415(fake: FakeNginxPlus) -> None:
    url = f"{fake.url}/api/9/http/upstreams/app/servers/0"
    reply = httpx.patch(url, content=b"{not json")
    assert (reply.status_code, reply.json()["error"]["code"]) == (415, "JsonError")


# -- the adapter ---------------------------------------------------------------------------


def test_drain_waits_for_active_then_down_then_back(fake: FakeNginxPlus, tmp_path: Path) -> None:
    lb = make_lb(fake.url, tmp_path)
    fake.set_active("app", WEB1, 3)
    view = lb.state()
    assert (view.status, view.sessions) == (LBStatus.IN_SERVICE, 3)

    lb.drain()
    view = lb.state()
    assert (view.status, view.sessions) == (LBStatus.DRAINING, 3)
    assert "state draining, 3 active" in view.detail
    fake.set_active("app", WEB1, 0)
    assert lb.state().sessions == 0

    lb.take_out(kill=False)
    view = lb.state()
    assert (view.status, view.sessions) == (LBStatus.OUT, 0)
    assert "state down" in view.detail

    assert lb.put_back() is True
    assert lb.state().status is LBStatus.IN_SERVICE
    assert fake.conf("app", WEB1) == {**fake.conf("app", WEB1), "down": False}
    assert "drain" not in fake.conf("app", WEB1)
    patches = [(m, p, b) for m, p, b in fake.requests if m == "PATCH"]
    assert patches == [
        ("PATCH", "/api/9/http/upstreams/app/servers/0", {"drain": True}),
        ("PATCH", "/api/9/http/upstreams/app/servers/0", {"down": True}),
        ("PATCH", "/api/9/http/upstreams/app/servers/0", {"down": False, "drain": False}),
    ]
    assert fake.conf("app", WEB2)["down"] is False, "only this node's server was touched"
    lb.close()


def test_the_server_is_looked_up_by_address_every_time(fake: FakeNginxPlus, tmp_path: Path) -> None:
    lb = make_lb(fake.url, tmp_path, server=WEB2)
    lb.drain()
    assert fake.conf("app", WEB2)["drain"] is True
    assert "drain" not in fake.conf("app", WEB1)


def test_read_only_api_is_explained(tmp_path: Path) -> None:
    with FakeNginxPlus(upstreams={"app": [WEB1]}, write=False) as fake:
        lb = make_lb(fake.url, tmp_path)
        assert lb.state().status is LBStatus.IN_SERVICE  # reading works
        with pytest.raises(PermanentAdapterError) as caught:
            lb.drain()
    assert "read-only" in str(caught.value)
    assert "api write=on;" in str(caught.value)


def test_upstream_without_zone_is_explained(fake: FakeNginxPlus, tmp_path: Path) -> None:
    lb = make_lb(fake.url, tmp_path, upstream="legacy")
    with pytest.raises(PermanentAdapterError) as caught:
        lb.drain()
    assert "no shared memory zone" in str(caught.value)
    assert "zone legacy 64k;" in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"upstream": "nope"}, "nginx has no upstream nope"),
        ({"server": "10.9.9.9:80"}, f"no server 10.9.9.9:80 in upstream app (it has: {WEB1}, "),
        ({"api_version": 10}, "does not know version 10"),
    ],
)  # fmt: skip
def test_configuration_mistakes_are_permanent_and_named(
    fake: FakeNginxPlus, tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    lb = make_lb(fake.url, tmp_path, **overrides)
    with pytest.raises(PermanentAdapterError) as caught:
        lb.state()
    assert message in str(caught.value)


def test_duplicate_address_is_refused(fake: FakeNginxPlus, tmp_path: Path) -> None:
    fake.add_server("app", WEB1)
    with pytest.raises(PermanentAdapterError, match=r"2 servers 10\.0\.0\.4:8080"):
        make_lb(fake.url, tmp_path).drain()


def test_basic_auth(tmp_path: Path) -> None:
    with FakeNginxPlus(upstreams={"app": [WEB1]}, basic_auth=("drainer", "s3cret")) as fake:
        with pytest.raises(PermanentAdapterError, match="asks for a login"):
            make_lb(fake.url, tmp_path).state()
        secret = tmp_path / "password"
        secret.write_text("s3cret\n")
        lb = make_lb(fake.url, tmp_path, username="drainer", password_file=str(secret))
        lb.drain()
        assert fake.conf("app", WEB1)["drain"] is True


def test_unreachable_api_is_transient(tmp_path: Path) -> None:
    with FakeNginxPlus(upstreams={"app": [WEB1]}) as fake:
        url = fake.url
    with pytest.raises(TransientAdapterError, match="unreachable"):
        make_lb(url, tmp_path, timeout="1s").state()


def test_server_errors_are_transient(tmp_path: Path) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    config = NginxPlusConfig.model_validate(
        {"type": "nginx-plus", "api": "http://lb/api", "upstream": "app", "server": WEB1}
    )
    lb = NginxPlusLoadBalancer(config, name="plus", transport=httpx.MockTransport(answer))
    with pytest.raises(TransientAdapterError, match="502"):
        lb.drain()
