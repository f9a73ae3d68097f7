"""The `local` budget against a real HAProxy: a scheduled Reboot waits while the backend
already has max_out other servers out, drains once one is back, and is approved only
while the count still allows it; a removal never waits."""

from __future__ import annotations

import pytest
from harness import NODE, World
from lbprocs import Lab
from test_haproxy_e2e import server, use_haproxy

from drainer.testing import free_port, haproxy_available, haproxy_cli, wait_until

pytestmark = pytest.mark.skipif(not haproxy_available(), reason="needs /usr/sbin/haproxy")


def three_servers(lab: Lab) -> str:
    web1, web2, web3 = lab.backend(), lab.backend(), lab.backend()
    return (
        "backend app\n"
        f"  server web1 127.0.0.1:{web1.port} check inter 200ms\n"
        f"  server web2 127.0.0.1:{web2.port} check inter 200ms\n"
        f"  server web3 127.0.0.1:{web3.port} check inter 200ms\n"
    )


def test_a_reboot_waits_while_the_backend_has_max_out_servers_out(world: World, lab: Lab) -> None:
    haproxy = lab.haproxy(three_servers(lab))
    use_haproxy(world, haproxy)
    world.configure(budget={"max_out": 1})  # engine local: the embedded default
    haproxy_cli(haproxy.admin_socket, "set server app/web2 state maint")  # an operator's, elsewhere
    world.start()
    world.wait_polls(2)
    event = world.fake.schedule("Reboot", [NODE], not_before_in=900, end_after=0.5)
    world.wait_record(
        lambda r: "no free slot in app" in r.get("slot_wait", ""), "waiting for a slot"
    )
    world.wait_polls(3)
    assert world.phase() == "in_service" and server(haproxy).in_service
    assert world.approvals() == []
    # the operator's first look says why the node has not gone yet
    assert "budget: waiting for a slot: no free slot in app" in world.cli("status").stdout

    haproxy_cli(haproxy.admin_socket, "set server app/web2 state ready")
    world.wait(lambda: event in world.approvals(), "drained and approved once web2 is back")
    world.wait_phase("in_service", timeout=20)
    wait_until(lambda: server(haproxy).in_service, what="web1 back in service")


def test_a_removal_drains_at_once_even_over_the_budget(world: World, lab: Lab) -> None:
    haproxy = lab.haproxy(three_servers(lab))
    use_haproxy(world, haproxy)
    world.configure(budget={"max_out": "34%"})  # one server of three
    haproxy_cli(haproxy.admin_socket, "set server app/web3 state maint")
    world.start()
    world.wait_polls(2)
    world.fake.schedule("Preempt", [NODE], not_before_in=30)
    world.wait_phase("removed", "draining")
    world.wait(lambda: server(haproxy).forced_maint or server(haproxy).forced_drain, "out")
    world.wait(lambda: "over budget" in world.log_path.read_text(), "said over budget")


def test_a_down_server_counts_as_out(world: World, lab: Lab) -> None:
    body = three_servers(lab).replace(
        "server web3 127.0.0.1:", f"server web3 127.0.0.1:{free_port()} check inter 200ms #"
    )
    haproxy = lab.haproxy(body)
    wait_until(lambda: server(haproxy, "web3").status == "DOWN", what="web3 DOWN")
    use_haproxy(world, haproxy)
    world.configure(budget={"max_out": 1})
    refused = world.cli("drain", "--timeout", "1")
    assert refused.returncode == 1 and "no free slot in app" in refused.stderr
    assert server(haproxy).in_service
