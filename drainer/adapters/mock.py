"""The ``mock`` load balancer: a JSON file that the daemon and the CLI share.

It behaves like a small load balancer: a drain leaves ``sessions`` connections open
that close one after another over ``drain_seconds``; ``take_out`` ends the drain.
Every change (drain, take-out, put-back) is appended to ``calls`` with its time, so
tests and benchmarks can see exactly what drainer did and when. A test injects a failure
by writing ``{"fail": {"drain": "message"}}`` (any operation, or ``"*"``) into the file.
Writes go through a lock and a rename, so a crash never leaves half a file, and a read
(``state()``) takes no lock and writes nothing: the rename makes it see one whole file,
the one before a write or the one after.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from drainer._files import FileLock, make_private_dir, write_atomically
from drainer._types import Duration
from drainer.adapters.base import AdapterConfig, AdapterContext, AdapterPlugin, LoadBalancer
from drainer.adapters.checks import Check, attempt
from drainer.errors import PermanentAdapterError, TransientAdapterError
from drainer.model import LBStatus, LBView


class MockConfig(AdapterConfig):
    type: Literal["mock"] = "mock"
    path: Path | None = None  # default: <state_dir>/mock-<name>.json
    sessions: int = Field(default=3, ge=0)  # connections open when a drain starts
    drain_seconds: Duration = 2.0  # how long they take to close


class MockLoadBalancer(LoadBalancer):
    def __init__(
        self,
        config: MockConfig,
        *,
        name: str,
        path: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.path = path
        self._config = config
        self._clock = clock

    # -- the file ---------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write the file under an exclusive lock."""
        try:
            make_private_dir(self.path.parent)  # owner-only, as under state_dir
            with closing(FileLock(self.path.with_suffix(".lock"))) as lock:
                lock.acquire()
                data = self._read()
                yield data
                write_atomically(self.path, json.dumps(data, indent=1))
        except OSError as exc:
            raise TransientAdapterError(f"mock load balancer {self.path}: {exc.strerror}") from exc

    def _read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        except OSError as exc:
            raise TransientAdapterError(f"mock load balancer {self.path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise PermanentAdapterError(
                f"mock load balancer {self.path} is not valid JSON: {exc}"
            ) from exc
        data.setdefault("status", LBStatus.IN_SERVICE.value)
        data.setdefault("calls", [])
        data.setdefault("fail", {})
        return data

    def _call(self, op: str, change: Callable[[dict[str, Any]], None] | None = None) -> None:
        with self._locked() as data:
            fail = data["fail"].get(op) or data["fail"].get("*")
            if fail:
                raise TransientAdapterError(str(fail))
            data["calls"].append({"op": op, "at": self._clock()})
            if change is not None:
                change(data)

    def _sessions(self, data: dict[str, Any]) -> int:
        if data["status"] != LBStatus.DRAINING.value:
            return 0
        elapsed = self._clock() - float(data.get("drain_started", 0.0))
        total = self._config.sessions
        if self._config.drain_seconds <= 0:
            return 0
        return max(0, math.ceil(total * (1 - elapsed / self._config.drain_seconds)))

    # -- LoadBalancer -----------------------------------------------------------------

    def state(self) -> LBView:
        data = self._read()  # no lock, no write: see the module docstring
        fail = data["fail"].get("state") or data["fail"].get("*")
        if fail:
            raise TransientAdapterError(str(fail))
        return LBView(
            LBStatus(data["status"]), self._sessions(data), f"mock load balancer in {self.path}"
        )

    def drain(self) -> None:
        def change(data: dict[str, Any]) -> None:
            if data["status"] == LBStatus.IN_SERVICE.value:
                data["status"] = LBStatus.DRAINING.value
                data["drain_started"] = self._clock()

        self._call("drain", change)

    def take_out(self, *, kill: bool) -> None:
        def change(data: dict[str, Any]) -> None:
            data["status"] = LBStatus.OUT.value

        self._call("take_out_kill" if kill else "take_out", change)

    def put_back(self) -> bool:
        def change(data: dict[str, Any]) -> None:
            data["status"] = LBStatus.IN_SERVICE.value

        self._call("put_back", change)
        return True

    def preflight(self) -> list[Check]:
        """The file can be read and written (and holds no injected failure of ``state``)."""

        def usable() -> str:
            with self._locked():  # rewrites the file as it is
                pass
            return f"{self.state().status.value}: {self.path} readable and writable"

        return [attempt(f"{self.name}: file", usable)]


def create(config: MockConfig, context: AdapterContext) -> list[LoadBalancer]:
    name = config.name or "mock"
    path = config.path or context.state_dir / f"mock-{name}.json"
    return [MockLoadBalancer(config, name=name, path=path)]


PLUGIN = AdapterPlugin(config_model=MockConfig, create=create, node_keys=("path",))
