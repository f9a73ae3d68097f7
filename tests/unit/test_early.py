"""``drainer.early``: a SIGHUP while ``drainer run`` starts is held for the daemon, and
only for ``run`` (tests/e2e/test_sidecar.py sends them to a real process)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from drainer import early
from drainer.cli import _command, _reorder


@pytest.fixture(autouse=True)
def sighup() -> Iterator[None]:
    before = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, before)
    early.taken()


def test_held_sighups_are_counted_and_taken_once() -> None:
    early.hold()
    for _ in range(3):
        signal.raise_signal(signal.SIGHUP)  # without hold(): the end of this test run
    assert early.taken() == 3
    assert early.taken() == 0


def test_release_gives_sighup_its_default_back_and_forgets_what_was_held() -> None:
    early.hold()
    signal.raise_signal(signal.SIGHUP)
    early.release()
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    assert early.taken() == 0


def test_release_leaves_another_handler_alone() -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    signal.signal(signal.SIGHUP, mine)
    early.release()
    assert signal.getsignal(signal.SIGHUP) is mine


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run"], "run"),
        (["-c", "run", "status"], "status"),  # a configuration file named "run"
        (["--log-format", "json", "--debug", "run"], "run"),
        (["run", "--log-format=json", "-c", "x.yaml"], "run"),
        (["--lock-timeout", "3", "status", "run"], "status"),  # an argument "run"
        (["--debug"], ""),
    ],
)
def test_the_command_is_the_first_word_after_the_global_options(
    argv: list[str], command: str
) -> None:
    assert _command(_reorder(argv)) == command
