"""The AWS source end to end with a real HAProxy 2.6: ``drainer run`` against the fake EC2
metadata service takes the node out of HAProxy in time for a system reboot and puts it
back after the reboot, once the event completed; a Spot interruption takes it out for
good. HAProxy's view is read from its own admin socket, independent of the adapter."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import AwsWorld
from lbprocs import HttpBackend

from drainer.testing import FakeAWS, HAProxy, haproxy_available, haproxy_cli, start_haproxy

pytestmark = pytest.mark.skipif(not haproxy_available(), reason="needs /usr/sbin/haproxy")

FORCED_MAINT = 0x01
FORCED_DRAIN = 0x08  # during a recovery: drained with its check running (and health down)


def admin_state(haproxy: HAProxy, name: str = "web1") -> int:
    """``srv_admin_state`` of ``name`` in backend app, from ``show servers state``."""
    lines = haproxy_cli(haproxy.admin_socket, "show servers state app").splitlines()
    header = next(line for line in lines if line.startswith("# "))[2:].split()
    rows = [dict(zip(header, line.split(), strict=True)) for line in lines[2:] if line.strip()]
    return int(next(r for r in rows if r["srv_name"] == name)["srv_admin_state"])


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[AwsWorld, HAProxy]]:
    web1, web2 = HttpBackend(), HttpBackend()
    haproxy = start_haproxy(
        "backend app\n"
        f"  server web1 127.0.0.1:{web1.port} check inter 200ms\n"
        f"  server web2 127.0.0.1:{web2.port} check inter 200ms\n"
    )
    world = AwsWorld(tmp_path)
    world.configure(
        load_balancers=[
            {
                "type": "haproxy",
                "name": "edge",
                "instances": [haproxy.admin],
                "backend": "app",
                "server": "web1",
            }
        ]
    )
    try:
        yield world, haproxy
    finally:
        world.close()
        haproxy.stop()
        web1.stop()
        web2.stop()


def test_a_system_reboot_through_a_real_haproxy(setup: tuple[AwsWorld, HAProxy]) -> None:
    world, haproxy = setup
    fake = world.fake
    assert isinstance(fake, FakeAWS)
    world.start()
    scheduled = time.time()
    event_id = fake.schedule("system-reboot", not_before_in=8)
    world.wait(lambda: admin_state(haproxy) & FORCED_MAINT, "web1 in maint at HAProxy")
    assert world.phase() == "drained"
    # in time for NotBefore (whole seconds), not at once: AWS cannot approve
    drain_started = world.record()["drain_deadline"] - 5  # the harness's drain.timeout
    assert drain_started >= scheduled + 8 - 5 - 1 - 1

    world.kill9()  # the reboot
    world.reboot()
    world.start()
    world.wait_phase("recovering")
    world.wait_polls(5)
    # the event is still active: out (in maint, or drained while HAProxy's check runs)
    assert admin_state(haproxy) & (FORCED_MAINT | FORCED_DRAIN)
    fake.complete(event_id)
    world.wait_phase("in_service")
    world.wait(lambda: admin_state(haproxy) == 0, "web1 back at HAProxy")


def test_a_spot_interruption_through_a_real_haproxy(setup: tuple[AwsWorld, HAProxy]) -> None:
    world, haproxy = setup
    fake = world.fake
    assert isinstance(fake, FakeAWS)
    world.start()
    fake.spot("terminate", in_seconds=5)
    world.wait(lambda: admin_state(haproxy) & FORCED_MAINT, "web1 in maint at HAProxy")
    world.wait_phase("removed")
    world.wait_polls(5)
    assert admin_state(haproxy) & FORCED_MAINT and world.phase() == "removed"
