"""``daemon._Signals`` in place: a signal that comes while it installs itself is not lost
(tests/e2e/test_sidecar.py sends signals to a real ``drainer run``)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from drainer import early
from drainer.daemon import Runner, _Signals

RELAYED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@pytest.fixture(autouse=True)
def handlers() -> Iterator[None]:
    before = {signum: signal.getsignal(signum) for signum in RELAYED}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)
    early.taken()


def _runner() -> Any:
    return SimpleNamespace(reload=threading.Event(), wake=threading.Event())


def _raising_around_install(monkeypatch: pytest.MonkeyPatch, signum: int, *, before: bool) -> None:
    """``signal.signal`` raises ``signum`` just before (or after) it installs its handler."""
    install: Callable[..., Any] = signal.signal

    def installing(which: int, handler: Any) -> Any:
        if which == signum and before:
            signal.raise_signal(signum)
        previous = install(which, handler)
        if which == signum and not before:
            signal.raise_signal(signum)
        return previous

    monkeypatch.setattr(signal, "signal", installing)


def test_a_sigterm_just_after_its_handler_is_in_place_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _raising_around_install(monkeypatch, signal.SIGTERM, before=False)
    stopping = threading.Event()
    signals = _Signals(stopping)
    try:
        stopping.wait(timeout=10)
        assert stopping.is_set() and signals.settle.is_set()
    finally:
        signals.close()


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_a_sighup_around_its_handler_while_starting_is_a_reload(
    monkeypatch: pytest.MonkeyPatch, before: bool
) -> None:
    early.hold()  # as the CLI does for `drainer run`
    _raising_around_install(monkeypatch, signal.SIGHUP, before=before)
    signals = _Signals(threading.Event())
    try:
        runner = _runner()
        signals.started(cast(Runner, runner))
        runner.reload.wait(timeout=10)
        assert runner.reload.is_set()
    finally:
        signals.close()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_in_a_thread_other_than_the_main_one_it_refuses_and_leaves_nothing_open() -> None:
    fds = _open_fds()
    caught: list[BaseException] = []

    def start() -> None:
        try:
            _Signals(threading.Event())
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert [type(exc) for exc in caught] == [ValueError]
    assert _open_fds() == fds


def test_ctrl_c_while_it_installs_itself_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGINT keeps its default (KeyboardInterrupt) until its handler is in place."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _raising_around_install(monkeypatch, signal.SIGINT, before=True)
    fds = _open_fds()
    with pytest.raises(KeyboardInterrupt):
        _Signals(threading.Event())
    assert _open_fds() == fds
    assert signal.set_wakeup_fd(-1) == -1  # the wakeup fd it set is gone again
