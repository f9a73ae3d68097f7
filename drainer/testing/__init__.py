"""drainer's test kit, shipped for your own tests (``from drainer.testing import ...``).

- ``FakeIMDS``: Azure's Scheduled Events and instance metadata over real HTTP, with a
  control API and the real service's quirks (``drainer fake-imds`` serves one).
- ``FakeNginxPlus``: the nginx Plus API's upstream endpoints, built from its documentation.
- ``MemorySource``, ``MemoryLoadBalancer``: an event source and a load balancer held in
  memory, recording their calls, to drive ``drainer.engine.Engine`` in-process.
- ``FakeClock``, ``wait_until``, ``free_port``: time that moves when told, a bounded
  wait on real time, a free loopback port.
- ``HAProxy``/``start_haproxy`` and ``Nginx``: real load balancers on loopback, stopped
  by PID; ``drainer.testing.lab``: web servers and a load client.

Nothing in drainer's product code imports this package.
"""

from drainer.testing.clock import FakeClock, wait_until
from drainer.testing.fake_imds import FakeIMDS
from drainer.testing.fake_nginx_plus import FakeNginxPlus
from drainer.testing.memory import MemoryLoadBalancer, MemorySource, maintenance
from drainer.testing.ports import free_port

__all__ = [
    "FakeClock",
    "FakeIMDS",
    "FakeNginxPlus",
    "MemoryLoadBalancer",
    "MemorySource",
    "free_port",
    "maintenance",
    "wait_until",
]
