"""The fleet budget with real parts: `drainer run` processes sharing one fake metadata
service and a real 3-member etcd cluster, max_out 1. Two VMs get their Reboot at once:
one drains, approves early and comes back; only then does the other leave."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Daemon, World

from drainer.testing.etcd import EtcdCluster, etcd_available

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd is not installed")

OUT = {"draining", "drained", "in_maintenance", "recovering", "held", "removed"}


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as running:
        yield running


def fleet(tmp_path: Path, cluster: EtcdCluster, names: list[str]) -> list[World]:
    worlds = []
    for name in names:
        (tmp_path / name).mkdir()
        world = World(tmp_path / name)
        if worlds:  # one metadata service lists every VM's events, as one scale set
            world.fake.stop()
            world.fake = worlds[0].fake
        world.configure(
            node={"name": name},
            source={"endpoint": world.fake.url},
            budget={
                "engine": "etcd",
                "max_out": 1,
                "pools": ["app"],
                "etcd": {"endpoints": cluster.endpoints, "timeout": "1s", "retry_after": "200ms"},
            },
        )
        worlds.append(world)
    return worlds


def test_two_reboots_at_once_take_turns_within_a_budget_of_one(
    tmp_path: Path, cluster: EtcdCluster
) -> None:
    worlds = fleet(tmp_path, cluster, ["web-1", "web-2"])
    fake = worlds[0].fake
    most_out = 0
    watching = True

    def watch() -> None:
        nonlocal most_out
        while watching:
            most_out = max(most_out, sum(w.phase() in OUT for w in worlds))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    try:
        for world in worlds:
            world.start()
        for world in worlds:
            world.wait_polls(2)
        watcher.start()
        ids = {
            name: fake.schedule("Reboot", [name], not_before_in=900, end_after=1.0)
            for name in ("web-1", "web-2")
        }
        first = worlds[0].wait(
            lambda: next((w for w in worlds if w.phase() in OUT), None), "one VM leaves"
        )
        second = worlds[1] if first is worlds[0] else worlds[0]
        second.wait_record(lambda r: bool(r.get("slot_wait")), "the other waits for a slot")
        assert second.phase() == "in_service"
        first.wait(lambda: len(first.approvals()) >= 1, "the first approves early")
        first.wait_phase("in_service", timeout=30)
        second.wait_phase("draining", "drained", "in_maintenance", "recovering", timeout=30)
        second.wait(lambda: len(fake.snapshot()["approvals"]) == 2, "the second approves")
        second.wait_phase("in_service", timeout=30)
        assert sorted(fake.snapshot()["approvals"]) == sorted(ids.values())
        assert most_out == 1
        assert not first.record().get("slot") and not second.record().get("slot")
    finally:
        watching = False
        if watcher.is_alive():
            watcher.join()
        for world in worlds:
            world.close()


def test_a_dead_etcd_never_blocks_the_drain_the_platform_forces(
    tmp_path: Path, cluster: EtcdCluster
) -> None:
    (world,) = fleet(tmp_path, cluster, ["web-1"])
    for i in range(3):
        cluster.kill(i)
    try:
        world.start()
        world.wait_polls(2)
        # NotBefore 8 s away, drain timeout 5 s + margin 1 s: the latest start is 2 s away
        event = world.fake.schedule("Reboot", ["web-1"], not_before_in=8, start_on_approval=True)
        world.wait_record(lambda r: bool(r.get("slot_wait")), "waiting: etcd cannot answer")
        assert world.phase() == "in_service"
        world.wait_phase("draining", "drained", timeout=15)
        world.wait(lambda: "drained anyway" in world.log_path.read_text(), "the log says why")
        time.sleep(1.0)
        assert event not in world.approvals()  # never approved without a slot
    finally:
        world.close()


def test_operators_drain_within_the_budget_see_holders_and_release(
    tmp_path: Path, cluster: EtcdCluster
) -> None:
    one, two = fleet(tmp_path, cluster, ["web-1", "web-2"])
    try:
        done = one.cli("drain")
        assert done.returncode == 0, done.stderr
        refused = two.cli("drain", "--timeout", "1")
        assert refused.returncode == 1
        assert "no free slot in app (held by web-1)" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert two.phase() == "in_service"
        forced = two.cli("drain", "--force")
        assert forced.returncode == 0, forced.stderr
        assert "over budget in app" in forced.stderr

        shown = one.cli("budget", "status", "--json")
        assert shown.returncode == 0, shown.stderr
        (pool,) = json.loads(shown.stdout)["pools"]
        holders = {h["node"]: h for h in pool["holders"]}
        assert pool["pool"] == "app" and pool["free"] == 0
        assert holders["web-1"]["kind"] == "manual" and not holders["web-1"]["over_budget"]
        assert holders["web-2"]["over_budget"]
        assert "web-2  manual" in one.cli("budget", "status").stdout

        undrained = one.cli("undrain")
        assert undrained.returncode == 0, undrained.stderr
        after = json.loads(one.cli("budget", "status", "--json").stdout)["pools"][0]
        assert [h["node"] for h in after["holders"]] == ["web-2"]  # given back in service

        freed = one.cli("budget", "release", "web-2")
        assert freed.returncode == 0 and "web-2: 1 slot(s) released" in freed.stdout
        again = one.cli("budget", "release", "web-2")
        assert again.returncode == 1 and "web-2 holds no slot (holders: none)" in again.stderr
        assert one.cli("drain").returncode == 0  # a slot again, for the stale read below

        back = two.cli("undrain")
        assert back.returncode == 0, back.stderr
        assert two.phase() == "in_service"

        cluster.kill(1)
        cluster.kill(2)
        stale = one.cli("budget", "status")
        assert stale.returncode == 1 and stale.stdout.startswith("STALE")
        assert "web-1  manual" in stale.stdout
    finally:
        for world in (one, two):
            world.close()


def holders_under(cluster: EtcdCluster, prefix: str) -> list[str]:
    from drainer.budget.etcd import EtcdBudget, EtcdConfig

    budget = EtcdBudget(EtcdConfig(endpoints=cluster.endpoints, prefix=prefix))
    try:
        held, _ = budget.holders(["app"])
    finally:
        budget.close()
    return [h.node for h in held["app"]]


def drained_by_hand(world: World) -> Daemon:
    """Start the daemon and `drainer drain` the node: held, with a slot."""
    daemon = world.start()
    world.wait_phase("in_service")
    assert world.cli("drain").returncode == 0
    world.wait_phase("held")
    return daemon


def test_a_reload_that_moves_the_budget_hands_the_slot_over(
    tmp_path: Path, cluster: EtcdCluster
) -> None:
    (world,) = fleet(tmp_path, cluster, ["web-1"])
    try:
        daemon = world.start()
        world.wait_phase("in_service")
        assert world.cli("drain").returncode == 0
        world.wait(lambda: holders_under(cluster, "/drainer/v1/") == ["web-1"], "the slot")

        # out of service, the budget moves to another prefix: the old key is given back
        # at once (not kept until its lease ends) and the node registers with the new one
        world.configure(budget={"etcd": {"prefix": "/moved/"}})
        daemon.signal(signal.SIGHUP)
        world.wait(lambda: holders_under(cluster, "/moved/") == ["web-1"], "the new slot")
        assert holders_under(cluster, "/drainer/v1/") == []
        world.wait(
            lambda: "budget: moved by the reload" in world.log_path.read_text(),
            "the handover logged",
        )

        # no budget any more: what etcd holds for the node is given back too
        world.configure(budget=None)
        daemon.signal(signal.SIGHUP)
        world.wait(lambda: holders_under(cluster, "/moved/") == [], "the slot given back")
        world.wait(lambda: world.record()["slot"] == "", "the slot dropped from the record")
        world.wait_phase("held")  # the drain (300 ms) may outlast the two reloads
        assert daemon.alive()
    finally:
        world.close()


def holder_revisions(cluster: EtcdCluster, prefix: str = "/drainer/v1/") -> dict[str, str]:
    """Each holder key under ``prefix`` with its create revision: a key given back and
    taken again has a new one (a moment when its slot was free)."""
    from drainer.budget.etcd import EtcdBudget, EtcdConfig, _b64, _range_end, _unb64

    budget = EtcdBudget(EtcdConfig(endpoints=cluster.endpoints, prefix=prefix))
    everything = f"{prefix}budget/"
    try:
        answer = budget.call(
            "kv/range", {"key": _b64(everything), "range_end": _range_end(everything)}
        )
    finally:
        budget.close()
    return {_unb64(kv["key"]): kv["create_revision"] for kv in answer.get("kvs", [])}


def test_a_reload_that_lists_the_same_cluster_otherwise_keeps_the_slot_of_a_node_out(
    tmp_path: Path, cluster: EtcdCluster
) -> None:
    (world,) = fleet(tmp_path, cluster, ["web-1"])
    try:
        daemon = drained_by_hand(world)
        held = holder_revisions(cluster)
        assert list(held) == ["/drainer/v1/budget/app/holders/web-1"]

        # the same cluster, its members listed in another order (or one more member):
        # the slot of a node out must never be free, not even for a moment
        world.configure(budget={"etcd": {"endpoints": cluster.endpoints[::-1]}})
        daemon.signal(signal.SIGHUP)
        world.wait(lambda: "configuration reloaded" in world.log_path.read_text(), "the reload")
        world.configure(budget={"etcd": {"endpoints": cluster.endpoints[1:]}})
        daemon.signal(signal.SIGHUP)
        world.wait(
            lambda: world.log_path.read_text().count("configuration reloaded") == 2, "the reload"
        )
        assert holder_revisions(cluster) == held
        assert "budget: moved by the reload" not in world.log_path.read_text()
        assert world.phase() == "held" and world.record()["slot"]
        assert not world.record()["over_budget"]
    finally:
        world.close()


def test_a_reload_rolled_back_never_gives_back_the_slot_of_a_node_out(
    tmp_path: Path, cluster: EtcdCluster
) -> None:
    (world,) = fleet(tmp_path, cluster, ["web-1"])
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))  # another program holds the new agent's port
    taken.listen(1)
    try:
        daemon = drained_by_hand(world)
        held = holder_revisions(cluster)
        assert list(held) == ["/drainer/v1/budget/app/holders/web-1"]

        # the new configuration moves the budget but cannot serve (its agent's port is
        # taken): the one in use stays, and with it the slot, never given back
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        agent = {"type": "haproxy-agent", "name": "agent", "listen": listen, "service_port": 80}
        world.configure(
            budget={"etcd": {"prefix": "/moved/"}},
            load_balancers=[*world.settings["load_balancers"], agent],
        )
        daemon.signal(signal.SIGHUP)
        world.wait(
            lambda: "configuration not reloaded" in world.log_path.read_text(), "the rollback"
        )
        world.wait_polls(2)
        assert holder_revisions(cluster) == held
        assert holder_revisions(cluster, "/moved/") == {}
        assert "budget: moved by the reload" not in world.log_path.read_text()
        assert world.phase() == "held" and not world.record()["over_budget"]
        assert daemon.alive()
    finally:
        taken.close()
        world.close()


def test_a_budget_move_while_etcd_hangs_neither_blocks_the_daemon_nor_loses_the_node(
    tmp_path: Path, cluster: EtcdCluster
) -> None:
    (world,) = fleet(tmp_path, cluster, ["web-1"])
    stopped: list[int] = []
    try:
        daemon = drained_by_hand(world)
        for proc in cluster.procs:  # every member hangs: each call times out (1 s each)
            assert proc is not None
            os.kill(proc.pid, signal.SIGSTOP)
            stopped.append(proc.pid)
        world.configure(budget={"etcd": {"prefix": "/moved/"}})
        daemon.signal(signal.SIGHUP)
        world.wait(
            lambda: "cannot give back the old budget's slot" in world.log_path.read_text(),
            "the failed hand-over logged",
        )
        world.wait_polls(3)  # the loop goes on meanwhile
        assert world.phase() == "held" and daemon.alive()
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        stopped.clear()
        # the node out registers with the new budget once etcd answers; the old key is
        # left to its lease (said in the log)
        world.wait(lambda: holders_under(cluster, "/moved/") == ["web-1"], "the new slot")
        assert world.phase() == "held"
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        world.close()
