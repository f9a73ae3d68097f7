"""Time for tests: a clock that moves only when told, and a bounded wait on real time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class FakeClock:
    """A ``time.time`` stand-in: ``clock()`` returns ``now``, which moves only on
    ``advance(seconds)`` (or ``sleep``, its alias, to pass where a sleep is injected)."""

    def __init__(self, now: float = 1_775_945_218.0) -> None:  # Sat, 11 Apr 2026 22:06:58 GMT
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)


def wait_until(
    probe: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
    describe: Callable[[], str] | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``probe`` every ``interval`` seconds and return its first truthy value.

    After ``timeout`` seconds raise AssertionError naming ``what`` (and ``describe()``,
    which may say what the world looked like). An exception listed in ``ignore`` counts
    as a falsy answer: not yet.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{describe()}" if describe else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or probe}{extra}")
        time.sleep(interval)
