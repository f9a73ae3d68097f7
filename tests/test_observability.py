"""Logs (text and JSON, one line per transition) and Prometheus metrics."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from drainer.core import Phase
from drainer.lab import free_port
from drainer.logs import JsonFormatter
from drainer.metrics import Metrics


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
