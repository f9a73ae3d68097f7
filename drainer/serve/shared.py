"""One read of a load balancer shared by every node ``drainer serve`` answers for.

2,000 sidecars polling their state once a second would cost an HAProxy 2,000 ``show
stat`` and 2,000 ``show info`` a second. Here every node's adapter on one HAProxy
instance gets the same ``SharedReads`` client: a node's row is taken from one ``show stat
<backend>`` of the whole backend, read at most once per ``shared_read`` interval
whatever the number of nodes asking, and ``show info`` is read right after it.

Invariants:

- A write is never followed by a stale read. Any command that is not a ``show`` (``set
  server``, ``shutdown sessions``) ends every shared read once it returns (or fails), and
  a read that was under way while it ran is not kept: an answer given after a write
  reflects it.
- The worker PID a caller gets was read no earlier than the rows it got before: the
  adapter compares the PID read after its rows with the one read before, to see a reload
  in between (drainer/adapters/haproxy/runtime.py). The PID shared is the one read
  after the newest shared rows; without fresh rows, ``show info`` is read anew.
- Only ``state()``'s reads are shared (``show stat`` of one server by id, ``show
  info``). What drain, take-out and put-back decide on (their ``show stat`` rows
  through ``unshared()``, ``show servers state``) is always read anew, as is everything
  asked of a master CLI.
- One read at a time per backend: callers that find it stale while another reads wait
  for that read and use it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from drainer.adapters.base import AdapterConfig, AdapterContext, AnyAdapterPlugin, LoadBalancer
from drainer.adapters.haproxy import runtime
from drainer.adapters.haproxy.client import HAProxyClient, StatRow

__all__ = ["SharedReads", "create_shared"]


@dataclass(frozen=True)
class _Read:
    at: float  # when it began
    generation: int  # writes seen before it began
    rows: dict[int, StatRow]  # server id -> its row
    pid: int  # the worker's, read after the rows


class SharedReads(HAProxyClient):
    """An ``HAProxyClient`` whose state reads are shared for ``max_age`` seconds."""

    def __init__(
        self,
        address: str,
        *,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
    ) -> None:
        super().__init__(address, connect_timeout=connect_timeout, timeout=timeout)
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()  # guards the three below
        self._generation = 0  # writes so far
        self._reads: dict[str, _Read] = {}  # backend -> its newest read
        self._reading: dict[str, threading.Lock] = {}  # backend -> held while reading it
        # for drain, take-out and put-back: they act on what they read, never on a read
        # up to max_age old (a server set to maint meanwhile, a check failed since)
        self._unshared = HAProxyClient(address, connect_timeout=connect_timeout, timeout=timeout)

    def unshared(self) -> HAProxyClient:
        return self._unshared

    def stat(
        self,
        backend: str | None = None,
        *,
        worker: int | None = None,
        server_id: int | None = None,
    ) -> list[StatRow]:
        if backend is None or worker is not None or server_id is None:
            return super().stat(backend, worker=worker, server_id=server_id)
        row = self._shared(backend).rows.get(server_id)
        return [row] if row is not None else []

    def worker_pid(self) -> int:
        with self._lock:
            fresh = [r for r in self._reads.values() if self._fresh(r)]
        if not fresh:
            return super().worker_pid()
        return max(fresh, key=lambda r: r.at).pid

    def _send(self, command: str) -> str:
        if command.startswith("show "):
            return super()._send(command)
        try:
            return super()._send(command)
        finally:  # even a failed write may have changed something
            with self._lock:
                self._generation += 1
                self._reads.clear()

    def _fresh(self, read: _Read | None) -> bool:
        return (
            read is not None
            and read.generation == self._generation
            and self._clock() - read.at < self._max_age
        )

    def _shared(self, backend: str) -> _Read:
        with self._lock:
            read = self._reads.get(backend)
            if self._fresh(read):
                assert read is not None
                return read
            reading = self._reading.setdefault(backend, threading.Lock())
        with reading:  # one read of a backend at a time; who waited uses it
            with self._lock:
                read = self._reads.get(backend)
                if self._fresh(read):
                    assert read is not None
                    return read
                generation = self._generation
            at = self._clock()
            rows = {r.server_id: r for r in super().stat(backend)}
            read = _Read(at, generation, rows, super().worker_pid())
            with self._lock:
                if self._generation == generation:  # else a write ran meanwhile: not kept
                    self._reads[backend] = read
            return read


def create_shared(
    plugin: AnyAdapterPlugin,
    entry: AdapterConfig,
    context: AdapterContext,
    *,
    max_age: float,
    clients: dict[tuple[str, float, float], SharedReads],
) -> list[LoadBalancer]:
    """``plugin.create(entry, context)``; for the built-in HAProxy plugin, with each
    instance's client taken from ``clients`` (one per address and timeouts, made on first
    use) when ``max_age`` > 0."""
    if max_age <= 0 or plugin.create is not runtime.create:
        return plugin.create(entry, context)
    assert isinstance(entry, runtime.HAProxyConfig)

    def client(address: str, *, connect_timeout: float, timeout: float) -> HAProxyClient:
        key = (address, connect_timeout, timeout)
        if key not in clients:
            clients[key] = SharedReads(
                address, max_age=max_age, connect_timeout=connect_timeout, timeout=timeout
            )
        return clients[key]

    return runtime.create(entry, context, client=client)
