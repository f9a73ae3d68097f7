"""Logs (text and JSON, one line per transition) and Prometheus metrics."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from drainer.core import Phase
from drainer.logs import JsonFormatter
from drainer.metrics import Metrics
from drainer.testing import free_port


def test_json_log_lines_carry_the_transition_fields() -> None:
    record = logging.LogRecord(
        "drainer", logging.INFO, __file__, 1, "%s: %s", ("draining", "x"), None
    )
    record.phase = "draining"
    record.event_id = "E1"
    record.event_type = "Reboot"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "draining: x"
    assert (line["phase"], line["event_id"], line["event_type"]) == ("draining", "E1", "Reboot")
    assert line["level"] == "info" and line["time"].endswith("Z")


def test_metrics_are_served_with_low_cardinality_labels() -> None:
    metrics = Metrics()
    port = free_port()
    metrics.serve(f"127.0.0.1:{port}")
    metrics.set_phase(Phase.DRAINED)
    metrics.events.labels("Reboot").inc()
    metrics.drains.labels("drained").inc()
    metrics.errors.labels("source").inc()
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", trust_env=False).text
    assert 'drainer_phase{phase="drained"} 1.0' in text
    assert 'drainer_phase{phase="in_service"} 0.0' in text
    assert 'drainer_events_total{type="Reboot"} 1.0' in text
    assert 'drainer_drains_total{result="drained"} 1.0' in text
    assert 'drainer_errors_total{kind="source"} 1.0' in text


def test_metrics_port_in_use_is_a_config_error() -> None:
    from drainer.errors import ConfigError

    port = free_port()
    Metrics().serve(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        Metrics().serve(f"127.0.0.1:{port}")


def test_probes_and_new_metrics_on_the_listener_ipv6_too() -> None:
    from drainer.model import LBStatus, LBView

    metrics = Metrics()
    port = free_port()
    assert metrics.serve(f"[::1]:{port}") == port
    base = f"http://[::1]:{port}"
    try:

        def fetch(path: str) -> httpx.Response:
            return httpx.get(base + path, trust_env=False, timeout=2)

        assert (fetch("/healthz").status_code, fetch("/healthz").text) == (200, "ok\n")
        assert fetch("/readyz").status_code == 200
        assert fetch("/").status_code == 404 and fetch("/metricsx").status_code == 404

        metrics.set_phase(Phase.DRAINING, since=1234.5)
        ready = fetch("/readyz")
        assert (ready.status_code, ready.text) == (503, "not in service: draining\n")
        metrics.probes.state_error("cannot write the heartbeat: No space left on device")
        health = fetch("/healthz")
        assert health.status_code == 503
        assert health.text == "state: cannot write the heartbeat: No space left on device\n"
        metrics.probes.state_error("")
        metrics.probes.limit = 0.0  # no turn within the limit
        assert fetch("/healthz").text.startswith("no completed turn for ")
        metrics.probes.limit = 60.0
        metrics.probes.turned()
        assert fetch("/healthz").status_code == 200

        metrics.set_lb("edge@a", LBView(LBStatus.DRAINING, 7))
        metrics.set_lb("edge@b", None)
        text = fetch("/metrics").text
        assert "drainer_phase_since_timestamp_seconds 1234.5" in text
        assert 'drainer_lb_up{lb="edge@a"} 1.0' in text
        assert 'drainer_lb_up{lb="edge@b"} 0.0' in text
        assert 'drainer_lb_sessions{lb="edge@a"} 7.0' in text
        assert 'drainer_lb_status{lb="edge@a",status="draining"} 1.0' in text
        assert 'drainer_lb_status{lb="edge@a",status="in_service"} 0.0' in text
        assert 'drainer_build_info{version="' in text

        metrics.keep_lbs(["edge@b"])  # edge@a left the configuration
        text = fetch("/metrics").text
        assert 'lb="edge@a"' not in text and 'drainer_lb_up{lb="edge@b"} 0.0' in text
    finally:
        metrics.close()


def test_metrics_listen_refuses_what_is_not_host_port() -> None:
    from drainer.errors import ConfigError

    with pytest.raises(ConfigError, match=r"metrics\.listen: cannot listen on ::1:9464"):
        Metrics().serve("::1:9464")
