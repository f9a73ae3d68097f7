"""Prometheus metrics, low cardinality: labels are phases, event types, results, kinds."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from drainer._net import split_host_port
from drainer.core import Phase
from drainer.errors import ConfigError


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.phase = Gauge(
            "drainer_phase",
            "1 for the phase the node is in, 0 for the others",
            ["phase"],
            registry=self.registry,
        )
        self.events = Counter(
            "drainer_events",
            "Maintenance events seen for this node",
            ["type"],
            registry=self.registry,
        )
        self.drains = Counter(
            "drainer_drains",
            "Drains that ended, by how they ended",
            ["result"],
            registry=self.registry,
        )
        self.errors = Counter(
            "drainer_errors", "Errors met, by kind", ["kind"], registry=self.registry
        )
        for phase in Phase:
            self.phase.labels(phase.value).set(0)

    def set_phase(self, phase: Phase) -> None:
        for each in Phase:
            self.phase.labels(each.value).set(1 if each is phase else 0)

    def serve(self, listen: str) -> None:
        try:
            host, port = split_host_port(listen)
            start_http_server(port, addr=host, registry=self.registry)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"metrics.listen: cannot listen on {listen}: {exc}") from exc
