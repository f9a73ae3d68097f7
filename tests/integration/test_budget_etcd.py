"""The drain budget on a real 3-member etcd cluster (Debian's etcd-server) on loopback:
races, a member killed, quorum lost and regained, a holder killed with -9, a holder
that reboots and keeps its slot, an operator's release."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from drainer.budget import Admission, BudgetError, Pool
from drainer.budget.etcd import EtcdBudget, EtcdConfig, EtcdSlots, lease_id
from drainer.budget.operate import release, slot_for_manual_drain
from drainer.config import Config, parse_config
from drainer.errors import DrainerError
from drainer.node import build_slots
from drainer.testing import free_port
from drainer.testing.clock import wait_until
from drainer.testing.etcd import EtcdCluster, etcd_available

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd is not installed")


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as running:
        yield running


def budget(cluster: EtcdCluster, prefix: str, **settings: object) -> EtcdBudget:
    config = EtcdConfig.model_validate(
        {"endpoints": cluster.endpoints, "prefix": prefix, "timeout": "1s", **settings}
    )
    return EtcdBudget(config)


def admit(b: EtcdBudget, node: str, pools: list[Pool], **kw: object) -> Admission:
    return b.acquire(node, pools, lease=lease_id(node, "test"), **kw)  # type: ignore[arg-type]


def test_many_contenders_never_over_admit(cluster: EtcdCluster) -> None:
    pools = [Pool("app", 5)]
    results: dict[str, bool] = {}

    def contend(node: str) -> None:
        b = budget(cluster, "/race/")
        try:
            results[node] = admit(b, node, pools).admitted
        finally:
            b.close()

    threads = [threading.Thread(target=contend, args=(f"vm{i}",)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held, stale = budget(cluster, "/race/").holders(["app"])
    assert sum(results.values()) == 5
    assert sorted(h.node for h in held["app"]) == sorted(n for n, ok in results.items() if ok)
    assert not stale


def test_admission_is_all_or_nothing_across_pools(cluster: EtcdCluster) -> None:
    b = budget(cluster, "/all/")
    assert admit(b, "vm1", [Pool("a", 1)]).admitted
    refused = admit(b, "vm2", [Pool("a", 1), Pool("b", 1)])
    assert not refused.admitted and refused.full == ("a",)
    held, _ = b.holders(["a", "b"])
    assert [h.node for h in held["a"]] == ["vm1"] and held["b"] == []
    assert not b.holds("vm2", [Pool("b", 1)])


def test_a_second_acquire_is_the_same_slot_and_force_marks_over_budget(
    cluster: EtcdCluster,
) -> None:
    b = budget(cluster, "/again/")
    first = admit(b, "vm1", [Pool("app", 1)])
    assert first.admitted and admit(b, "vm1", [Pool("app", 1)]).admitted
    assert not admit(b, "vm2", [Pool("app", 1)]).admitted
    forced = admit(b, "vm2", [Pool("app", 1)], force=True, kind="involuntary")
    assert forced.admitted and forced.full == ("app",)
    held, _ = b.holders(["app"])
    by_node = {h.node: h for h in held["app"]}
    assert set(by_node) == {"vm1", "vm2"}
    assert by_node["vm2"].over_budget and by_node["vm2"].kind == "involuntary"
    assert not by_node["vm1"].over_budget


def test_a_slot_found_held_over_budget_is_still_over_budget(cluster: EtcdCluster) -> None:
    # A forced take whose answer was lost (a timeout, a crash before the record was
    # saved) is asked again: the node finds its own key, which is over budget; so must
    # the answer be, or the node approves early over the budget.
    b = budget(cluster, "/again-over/")
    assert admit(b, "vm1", [Pool("app", 1)]).admitted
    assert admit(b, "vm2", [Pool("app", 1), Pool("api", 1)], force=True).full == ("app",)
    again = admit(b, "vm2", [Pool("app", 1), Pool("api", 1)], force=True)
    assert again.admitted and "app" in again.full
    assert admit(b, "vm1", [Pool("app", 1)]).full == ()


def test_a_pool_added_to_a_held_slot_goes_on_the_lease_the_node_keeps_alive(
    cluster: EtcdCluster,
) -> None:
    # The node holds "a" (a pool added by a reload, or a take cut short): the key it
    # adds must live on the lease it keeps alive, not on one that nobody renews.
    b = budget(cluster, "/partial/")
    first = b.acquire("vm1", [Pool("a", 1)], lease=lease_id("vm1", "first"))
    second = b.acquire("vm1", [Pool("a", 1), Pool("b", 1)], lease=lease_id("vm1", "second"))
    assert second.admitted and second.lease == first.lease
    b.revoke(first.lease)
    held, _ = b.holders(["a", "b"])
    assert held == {"a": [], "b": []}


def test_release_frees_the_slot_and_revokes_the_lease(cluster: EtcdCluster) -> None:
    b = budget(cluster, "/release/")
    lease = lease_id("vm1", "test")
    assert admit(b, "vm1", [Pool("app", 1), Pool("api", 1)]).admitted
    assert b.release("vm1", lease=lease) == 2
    assert b.ttl(lease) is None
    assert admit(b, "vm2", [Pool("app", 1), Pool("api", 1)]).admitted


def test_one_member_killed_the_budget_still_answers(cluster: EtcdCluster) -> None:
    b = budget(cluster, "/one-down/")
    cluster.kill(0)  # the first endpoint: every call must move on to the next
    try:
        assert admit(b, "vm1", [Pool("app", 1)]).admitted
        assert not admit(b, "vm2", [Pool("app", 1)]).admitted
    finally:
        cluster.start(0)
        cluster.wait_healthy()


def test_lost_quorum_is_never_a_free_slot_and_stale_reads_say_so(cluster: EtcdCluster) -> None:
    b = budget(cluster, "/quorum/")
    assert admit(b, "vm1", [Pool("app", 2)]).admitted
    cluster.kill(1)
    cluster.kill(2)
    try:
        with pytest.raises(BudgetError, match="no endpoint answered"):
            admit(b, "vm2", [Pool("app", 2)])
        with pytest.raises(BudgetError):
            b.holds("vm1", [Pool("app", 2)])
        held, stale = b.holders(["app"], stale_ok=True)
        assert stale and [h.node for h in held["app"]] == ["vm1"]
    finally:
        cluster.start(1)
        cluster.start(2)
        cluster.wait_healthy()
    assert admit(b, "vm2", [Pool("app", 2)]).admitted
    assert b.holds("vm1", [Pool("app", 2)])


HOLDER = """
import sys, time
from drainer.budget import Pool
from drainer.budget.etcd import EtcdBudget, EtcdConfig, lease_id
b = EtcdBudget(EtcdConfig(endpoints=sys.argv[1].split(","), prefix="/killed/", lease_ttl=2,
    keepalive_interval=1))
assert b.acquire("vm1", [Pool("app", 1)], lease=lease_id("vm1", "killed")).admitted
print("held", flush=True)
while True:
    b.keepalive(lease_id("vm1", "killed"))
    time.sleep(0.5)
"""


def test_a_holder_killed_with_sigkill_frees_its_slot_when_the_lease_expires(
    cluster: EtcdCluster,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, ",".join(cluster.endpoints)],
        stdout=subprocess.PIPE,
        text=True,
    )
    b = budget(cluster, "/killed/")
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        time.sleep(3)  # longer than the TTL: kept alive, the slot stays taken
        assert not admit(b, "vm2", [Pool("app", 1)]).admitted
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        wait_until(
            lambda: admit(b, "vm2", [Pool("app", 1)]).admitted,
            timeout=15,
            interval=0.2,
            what="vm1's slot freed by its lease after SIGKILL",
        )
    finally:
        holder.kill()
        holder.wait()


def test_a_rebooted_holder_resumes_keepalives_on_its_lease_and_keeps_the_slot(
    cluster: EtcdCluster,
) -> None:
    before = budget(cluster, "/reboot/", lease_ttl="3s", keepalive_interval="1s")
    lease = lease_id("vm1", "reboot")
    assert before.acquire("vm1", [Pool("app", 1)], lease=lease).admitted
    before.close()  # the sidecar stops for the reboot; the lease id is in its record
    time.sleep(1.5)
    # a new process after boot
    after = budget(cluster, "/reboot/", lease_ttl="3s", keepalive_interval="1s")
    for _ in range(6):  # 3 s of keep-alives: longer than the TTL
        assert after.keepalive(lease) > 0
        time.sleep(0.5)
    assert after.holds("vm1", [Pool("app", 1)])
    assert not after.acquire("vm2", [Pool("app", 1)], lease=lease_id("vm2", "r")).admitted


def test_an_expired_lease_reads_as_gone(cluster: EtcdCluster) -> None:
    b = budget(cluster, "/expired/", lease_ttl="1s", keepalive_interval="0.5s")
    lease = lease_id("vm1", "expired")
    assert b.acquire("vm1", [Pool("app", 1)], lease=lease).admitted
    wait_until(lambda: b.ttl(lease) is None, timeout=10, interval=0.3, what="lease expiry")
    assert b.keepalive(lease) == 0
    assert not b.holds("vm1", [Pool("app", 1)])


def test_a_proxy_in_the_environment_is_not_the_way_to_etcd(
    cluster: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A web VM often has HTTP(S)_PROXY set for its outbound traffic; etcd is reached
    # directly, like every other client of drainer's (trust_env=False).
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    b = budget(cluster, "/proxy/")
    assert admit(b, "vm1", [Pool("app", 1)]).admitted


class LostAnswers(httpx.HTTPTransport):
    """etcd gets the transaction that writes a holder key and applies it; the answer is
    lost on the way back (a timeout, a connection reset)."""

    def __init__(self) -> None:
        super().__init__()
        self.lose = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = super().handle_request(request)
        if self.lose and request.url.path.endswith("/kv/txn") and b"request_put" in request.content:
            self.lose -= 1
            answer.read()
            answer.close()
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return answer


def one_endpoint(cluster: EtcdCluster, prefix: str, transport: httpx.BaseTransport) -> EtcdBudget:
    config = EtcdConfig.model_validate(
        {"endpoints": cluster.endpoints[:1], "prefix": prefix, "timeout": "1s"}
    )
    return EtcdBudget(config, transport=transport)


def test_a_refused_manual_drain_gives_back_the_key_its_lost_take_wrote(
    cluster: EtcdCluster,
) -> None:
    lossy = LostAnswers()
    pools = [Pool("app", 1), Pool("api", 1)]
    slots = EtcdSlots(one_endpoint(cluster, "/lost/", lossy), "vm1", pools)
    lossy.lose = 1
    said: list[str] = []
    with pytest.raises(DrainerError, match="not draining: the budget cannot answer"):
        slot_for_manual_drain(slots, timeout=0, force=False, say=said.append)
    held, _ = budget(cluster, "/lost/").holders(["app", "api"])
    assert held == {"app": [], "api": []}
    assert admit(budget(cluster, "/lost/"), "vm2", pools).admitted


def test_giving_back_a_lost_take_never_deletes_another_holder_of_the_name(
    cluster: EtcdCluster,
) -> None:
    # The same key written on another lease (another VM of that name, or this node's
    # event slot) is not what the lost take wrote: it stays.
    other = budget(cluster, "/guard/")
    assert other.acquire("vm1", [Pool("app", 1)], lease=lease_id("vm1", "e7")).admitted
    slots = EtcdSlots(budget(cluster, "/guard/"), "vm1", [Pool("app", 1)])
    assert slots.abandon("", "manual") == 0
    held, _ = other.holders(["app"])
    assert [(h.node, h.lease) for h in held["app"]] == [("vm1", lease_id("vm1", "e7"))]


def test_over_budget_is_marked_in_the_full_pools_only(cluster: EtcdCluster) -> None:
    # vm2 is in app (full) and api (room): it is over budget in app, within it in api;
    # `drainer budget status` must not show api over its budget.
    b = budget(cluster, "/over-per-pool/")
    assert admit(b, "vm1", [Pool("app", 1)]).admitted
    pools = [Pool("app", 1), Pool("api", 1)]
    assert admit(b, "vm2", pools, force=True).full == ("app",)
    held, _ = b.holders(["app", "api"])
    over = {pool: {h.node: h.over_budget for h in hs} for pool, hs in held.items()}
    assert over == {"app": {"vm1": False, "vm2": True}, "api": {"vm2": False}}
    assert admit(b, "vm2", pools).full == ("app",)  # asked again: the same answer


def config_of(cluster: EtcdCluster, tmp: str, **budget_settings: object) -> Config:
    return parse_config(
        {
            "state_dir": tmp,
            "health": {"http": {"url": "http://127.0.0.1:9/"}},
            "load_balancers": [{"type": "mock", "name": "lb"}],
            "budget": {
                "engine": "etcd",
                "max_out": 1,
                "pools": ["app"],
                "etcd": {"endpoints": cluster.endpoints, "prefix": "/same-name/"},
                **budget_settings,
            },
        }
    )


def test_two_vms_of_one_name_in_two_resource_groups_hold_two_slots(
    cluster: EtcdCluster, tmp_path: Path
) -> None:
    # Azure names a VM uniquely only within its resource group: web-1 in rg-blue and
    # web-1 in rg-green must not share a key, or the second is admitted into the first's
    # slot and both go out under a budget of one.
    blue = build_slots(config_of(cluster, str(tmp_path), node_id="rg-blue.web-1"), "web-1", {})
    green = build_slots(config_of(cluster, str(tmp_path), node_id="rg-green.web-1"), "web-1", {})
    assert blue is not None and green is not None
    assert blue.take("e1", "Reboot", force=False).admitted
    refused = green.take("e2", "Reboot", force=False)
    assert not refused.admitted and [h.node for h in refused.holders] == ["rg-blue.web-1"]
    released = release(config_of(cluster, str(tmp_path)), "rg-blue.web-1")
    assert released == 1 and green.take("e2", "Reboot", force=False).admitted
