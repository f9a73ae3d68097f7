"""drainer's test kit, shipped for your own tests (``from drainer.testing import ...``).

- ``FakeIMDS``: Azure's Scheduled Events and instance metadata over real HTTP, with a
  control API and the real service's quirks (``drainer fake-imds`` serves one).
- ``FakeAWS``: AWS EC2's instance metadata (IMDSv2 tokens, scheduled events, Spot and
  rebalance notices, the Auto Scaling lifecycle state) over real HTTP, with faults.



- ``FakeGCP``: Google Compute Engine's metadata server (maintenance-event, preempted,
  upcoming-maintenance; hanging GETs with ETags), with a control API and faults
  (``drainer fake-imds --cloud gcp`` serves one).
- ``FakeNginxPlus``: the nginx Plus API's upstream endpoints, built from its documentation.
- ``MemorySource``, ``MemoryLoadBalancer``: an event source and a load balancer held in
  memory, recording their calls, to drive ``drainer.engine.Engine`` in-process.
- ``FakeClock``, ``wait_until``, ``free_port``: time that moves when told, a bounded
  wait on real time, a free loopback port.
- ``start_haproxy``/``start_haproxy_in_front`` and ``Nginx``: a real HAProxy and a real
  nginx on loopback, stopped by PID.
- ``drainer.testing.prometheus.Prometheus``: a real Prometheus scraping sidecars, with
  PromQL over its HTTP API (imported from its module: only the fleet tests need it).



- ``self_signed_certificate``, ``openssl_available``: a throwaway certificate for
  127.0.0.1 (the ``openssl`` CLI).
- ``WebServer``, ``WebProcess``, ``LoadClient``, ``BlackHole`` (the lab): web servers
  playing a VM's application, a bounded load client, an address that answers nothing.

Nothing in drainer's product code imports this package.
"""

from drainer.testing.clock import FakeClock, wait_until
from drainer.testing.fake_aws import FakeAWS
from drainer.testing.fake_gcp import FakeGCP
from drainer.testing.fake_imds import FakeIMDS
from drainer.testing.fake_nginx_plus import FakeNginxPlus
from drainer.testing.haproxy import (
    HAProxy,
    haproxy_available,
    haproxy_cli,
    start_haproxy,
    start_haproxy_in_front,
)
from drainer.testing.lab import BlackHole, LoadClient, WebProcess, WebServer
from drainer.testing.memory import MemoryLoadBalancer, MemorySource, maintenance
from drainer.testing.nginx import Nginx, NginxProcess, nginx_available
from drainer.testing.ports import free_port
from drainer.testing.tls import openssl_available, self_signed_certificate

__all__ = [
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
