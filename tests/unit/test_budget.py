"""The budget's pure parts: how many of a pool may be out, and holders read liberally."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from drainer.adapters.base import LoadBalancer
from drainer.budget import BudgetError, Pool, PoolCount, max_out
from drainer.budget.etcd import EtcdBudget, EtcdConfig, EtcdSlots, _holder, lease_id
from drainer.budget.local import LocalSlots
from drainer.config import Config
from drainer.errors import ConfigError
from drainer.model import PoolView
from drainer.testing import MemoryLoadBalancer


@pytest.mark.parametrize(
    ("spec", "size", "count"),
    [(5, 100, 5), ("20%", 10, 2), ("20%", 4, 1), ("10%", 5, 1), ("50 %", 9, 4), ("3", 10, 3)],
)
def test_max_out_is_a_count_or_a_share_of_the_pool_never_zero(
    spec: int | str, size: int, count: int
) -> None:
    assert max_out(spec, size) == count


def test_a_holder_written_by_hand_still_holds_its_slot() -> None:
    odd = _holder("app", "vm1", "not json")
    assert (odd.node, odd.pool, odd.kind) == ("vm1", "app", "unknown")
    good = _holder("app", "vm2", '{"kind": "manual", "over_budget": true, "since": 5}')
    assert (good.kind, good.over_budget, good.since) == ("manual", True, 5.0)


def test_lease_ids_are_stable_positive_and_63_bits() -> None:
    first = lease_id("vm1", "e1")
    assert first == lease_id("vm1", "e1") != lease_id("vm2", "e1")
    assert 0 < int(first) < 2**63


def test_the_prefix_is_a_folder() -> None:
    assert EtcdConfig(endpoints=["http://127.0.0.1:2379"], prefix="/x").prefix == "/x/"
    with pytest.raises(ValueError, match="must start with /"):
        EtcdConfig(endpoints=["http://127.0.0.1:2379"], prefix="x/")
    with pytest.raises(ValueError):
        EtcdConfig(endpoints=[])


# -- answers that are not what etcd sends: BudgetError, never a crash ----------------------
# A proxy, a half-upgraded member or a corrupted value must read as "the budget cannot
# answer" (a voluntary step waits), not as an exception the daemon does not expect.

BAD_ANSWERS = {
    "a list": b"[1, 2]",
    "a result that is null": b'{"result": null, "header": {"revision": "3"}}',
    "a TTL that is not a number": b'{"result": {"TTL": "soon"}, "TTL": "soon"}',
    "a key that is not base64, or not UTF-8": b'{"header": {"revision": "3"},'
    b' "kvs": [{"key": "abc"}],'
    b' "responses": [{"response_range": {"kvs": [{"key": "/w=="}]}}]}',
    "a kv without its key": b'{"header": {"revision": "3"}, "kvs": [{"value": ""}],'
    b' "responses": [{"response_range": {"kvs": [{"value": ""}]}}]}',
    "a revision that is not a number": b'{"header": {"revision": "x"}, "responses":'
    b' [{"response_range": {}}]}',
}


def _budget_answering(body: bytes) -> EtcdBudget:
    config = EtcdConfig(endpoints=["http://127.0.0.1:2379"])
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    return EtcdBudget(config, transport=transport)


@pytest.mark.parametrize("body", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
def test_a_malformed_answer_is_a_budget_error(body: bytes) -> None:
    budget = _budget_answering(body)
    slots = EtcdSlots(budget, "vm1", [Pool("app", 1)])
    calls: list[Callable[[], object]] = [
        lambda: slots.keepalive("7"),
        lambda: budget.ttl("7"),
        lambda: slots.take("e1", "Reboot", force=False),
        lambda: slots.holds(),
        lambda: slots.release("7"),
        lambda: budget.pools(),
        lambda: budget.holders(["app"], stale_ok=True),
    ]
    for call in calls:
        with contextlib.suppress(BudgetError):
            call()


# -- the local engine counts what its load balancers report, or cannot answer --------------


class _Reporting(MemoryLoadBalancer):
    def __init__(self, *views: PoolView) -> None:
        super().__init__("haproxy")
        self.views = list(views)

    def pools(self) -> list[PoolView]:
        return self.views


def test_local_counts_the_others_out() -> None:
    lbs: dict[str, LoadBalancer] = {"haproxy": _Reporting(PoolView("app", 5, 3))}
    assert not LocalSlots(lbs, 1).take("e1", "Reboot", force=False).admitted
    assert LocalSlots(lbs, 2).take("e1", "Reboot", force=False).admitted


def test_local_counts_each_pool_out_for_the_metrics_at_its_worst_load_balancer() -> None:
    lbs: dict[str, LoadBalancer] = {
        "haproxy-a": _Reporting(PoolView("app", 5, 3), PoolView("api", 3, 2)),
        "haproxy-b": _Reporting(PoolView("app", 5, 2)),  # b sees one more of app out
    }
    admission = LocalSlots(lbs, 2).take("e1", "Reboot", force=False)
    assert not admission.admitted and admission.full == ("app",)
    assert admission.counts == (PoolCount("api", 0, 2), PoolCount("app", 2, 2))


def test_local_looks_again_after_a_random_pause_before_admitting() -> None:
    # Nodes whose events came in the same second all see room: each pauses a random part
    # of `settle` and looks again, so the first to go shows as out to those that follow.
    lb = _Reporting(PoolView("app", 5, 4))
    pauses: list[float] = []

    def another_node_drains(seconds: float) -> None:
        pauses.append(seconds)
        lb.views = [PoolView("app", 5, 3)]

    slots = LocalSlots({"haproxy": lb}, 1, settle=2.0, sleep=another_node_drains)
    slots.random = lambda: 0.25
    refused = slots.take("e1", "Reboot", force=False)
    assert not refused.admitted and refused.full == ("app",) and pauses == [0.5]
    assert slots.take("e1", "Reboot", force=True).admitted and pauses == [0.5]  # never waits
    lb.views = [PoolView("app", 5, 4)]
    slots.sleep = pauses.append  # nobody else goes meanwhile
    assert slots.take("e1", "Reboot", force=False).admitted and pauses == [0.5, 0.5]


@pytest.mark.parametrize(
    ("lb", "pools"),
    [
        (MemoryLoadBalancer("nginx"), ()),  # an adapter that cannot count its pool
        (_Reporting(PoolView("app", 5, 4)), ("ap",)),  # a pool no load balancer reports
    ],
    ids=["nothing reported", "a named pool not reported"],
)
def test_local_that_sees_no_pool_cannot_answer_rather_than_admit(
    lb: LoadBalancer, pools: tuple[str, ...]
) -> None:
    slots = LocalSlots({"lb": lb}, 1, pools)
    with pytest.raises(BudgetError, match="engine etcd"):
        slots.take("e1", "Reboot", force=False)
    with pytest.raises(BudgetError):
        slots.holds()


def test_tls_files_that_cannot_be_loaded_are_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    config = EtcdConfig(endpoints=["https://127.0.0.1:2379"], ca_file=missing)
    with pytest.raises(ConfigError, match=r"budget\.etcd: cannot load"):
        EtcdBudget(config)
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        EtcdConfig(endpoints=["https://127.0.0.1:2379"], cert_file=missing)


def test_a_lease_renewed_less_often_than_it_lives_is_refused() -> None:
    # Renewed every 10 s, a 5 s lease lapses between renewals: the slot looks free to
    # everyone else, and the node registers again, over and over.
    with pytest.raises(ValueError, match="keepalive_interval"):
        EtcdConfig(endpoints=["http://127.0.0.1:2379"], lease_ttl=5, keepalive_interval=10)
    EtcdConfig(endpoints=["http://127.0.0.1:2379"], lease_ttl=30, keepalive_interval=10)


def test_authentication_refused_by_a_member_without_quorum_moves_on_to_the_next() -> None:
    # A member cut off from the others answers 503 to everything, authentication too;
    # the next endpoint has a leader and must be asked.
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.port == 2379:
            return httpx.Response(503, json={"error": "etcdserver: no leader"})
        if request.url.path == "/v3/auth/authenticate":
            return httpx.Response(200, json={"token": "t"})
        assert request.headers["Authorization"] == "t"
        return httpx.Response(200, json={"header": {"revision": "3"}, "result": {"TTL": "30"}})

    config = EtcdConfig(
        endpoints=["http://127.0.0.1:2379", "http://127.0.0.1:22379"], username="drainer"
    )
    budget = EtcdBudget(config, transport=httpx.MockTransport(answer))
    assert budget.keepalive("7") == 30


def _config_with(budget: dict[str, object]) -> Config:
    from drainer.config import parse_config

    return parse_config(
        {
            "health": {"http": {"url": "http://127.0.0.1:9/"}},
            "load_balancers": [{"type": "mock", "name": "lb"}],
            "budget": budget,
        }
    )


ETCD = {"engine": "etcd", "max_out": 1, "etcd": {"endpoints": ["http://127.0.0.1:2379"]}}


@pytest.mark.parametrize(
    ("node_id", "problem"),
    [
        ("/subscriptions/s1/resourceGroups/rg/providers/x/virtualMachines/web-1", "vmId"),
        ("web 1", "letters, digits"),
        ("", "1 to 200"),
    ],
)
def test_a_node_id_that_cannot_name_an_etcd_key_is_refused(node_id: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"budget.node_id: .*{problem}"):
        _config_with({**ETCD, "node_id": node_id})


def test_a_node_id_needs_engine_etcd() -> None:
    with pytest.raises(ConfigError, match="node_id names the node's keys in etcd"):
        _config_with({"max_out": 1, "node_id": "rg-blue.web-1"})
    assert _config_with({**ETCD, "node_id": "0b5e1b4e-7d2a-4c1e-9f6e-2f3c1e0a9b8d"})


def test_settle_is_for_engine_local_and_short() -> None:
    with pytest.raises(ConfigError, match="settle is for engine local"):
        _config_with({**ETCD, "settle": "1s"})
    with pytest.raises(ConfigError, match="settle must be at most 5s"):
        _config_with({"max_out": 1, "settle": "1m"})
    assert _config_with({"max_out": 1, "settle": "0s"})


def test_the_local_engine_settles_one_second_unless_told() -> None:
    from drainer.node import build_slots

    default = build_slots(_config_with({"max_out": 1}), "web-1", {})
    told = build_slots(_config_with({"max_out": 1, "settle": "3s"}), "web-1", {})
    assert isinstance(default, LocalSlots) and isinstance(told, LocalSlots)
    assert (default.settle, told.settle) == (1.0, 3.0)
