"""The public test kit: what it exports, and that its in-memory parts fit the protocols."""

from __future__ import annotations

import pytest

import drainer.testing
from drainer.adapters.base import LoadBalancer
from drainer.sources.base import EventSource
from drainer.testing import FakeClock, MemoryLoadBalancer, MemorySource, wait_until


def test_the_kit_exports_exactly_its_names() -> None:
    assert sorted(drainer.testing.__all__) == [
        "BlackHole",
        "FakeAWS",
        "FakeClock",
        "FakeGCP",
        "FakeIMDS",
        "FakeNginxPlus",
        "HAProxy",
        "LoadClient",
        "MemoryLoadBalancer",
        "MemorySource",
        "Nginx",
        "NginxProcess",
        "WebProcess",
        "WebServer",
        "free_port",
        "haproxy_available",
        "haproxy_cli",
        "maintenance",
        "nginx_available",
        "openssl_available",
        "self_signed_certificate",
        "start_haproxy",
        "start_haproxy_in_front",
        "wait_until",
    ]
    for name in drainer.testing.__all__:
        assert getattr(drainer.testing, name) is not None


def test_the_in_memory_parts_are_a_source_and_a_load_balancer() -> None:
    assert isinstance(MemorySource(), EventSource)
    assert isinstance(MemoryLoadBalancer(), LoadBalancer)


def test_the_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(100.0)
    assert clock() == 100.0
    clock.advance(2.5)
    clock.sleep(0.5)
    assert clock() == 103.0


def test_wait_until_returns_the_first_truthy_value_or_fails_naming_what() -> None:
    answers = iter([0, "", "yes"])
    assert wait_until(lambda: next(answers), interval=0) == "yes"
    with pytest.raises(AssertionError, match="waiting for never"):
        wait_until(lambda: False, timeout=0.05, interval=0.01, what="never")


def test_a_web_process_turns_unhealthy_healthy_and_stops_on_its_signals() -> None:
    import signal

    import httpx

    from drainer.testing import WebProcess, free_port, wait_until

    web = WebProcess(free_port(), name="web-1").start()
    url = f"http://127.0.0.1:{web.port}/healthz"
    try:

        def answers(code: int) -> bool:
            return httpx.get(url, timeout=2).status_code == code

        assert answers(200)
        web.set_healthy(False)
        wait_until(lambda: answers(503), what="/healthz 503")
        web.set_healthy(True)
        wait_until(lambda: answers(200), what="/healthz 200 again")
        web.stop(signal.SIGTERM)
        assert web.process is not None and web.process.returncode == 0
    finally:
        web.stop()
