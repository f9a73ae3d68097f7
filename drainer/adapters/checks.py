"""Preflight checks: what ``drainer check`` and the daemon's start report per load balancer.

A ``Check`` names what was checked and what was seen. ``attempt`` turns one call into a
``Check`` (an AdapterError is the failure); ``preflight(lb)`` runs an adapter's own
checks and never raises, whatever the adapter does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drainer.errors import AdapterError, DrainerError
from drainer.model import LBView

if TYPE_CHECKING:
    from drainer.adapters.base import LoadBalancer

__all__ = ["Check", "answer", "attempt", "preflight"]


@dataclass(frozen=True)
class Check:
    """One result of a preflight: ``name`` says what was checked, ``detail`` what was seen
    (or, when it failed, what to do about it)."""

    name: str
    ok: bool
    detail: str = ""


def answer(view: LBView) -> str:
    """How a state read reads in a check."""
    return f"{view.status.value}: {view.detail}"


def preflight(lb: LoadBalancer) -> list[Check]:
    """``lb.preflight()``, never raising; for an adapter without one, a read of its state."""
    own = getattr(lb, "preflight", None)
    try:
        if callable(own):
            checks = list(own())
            return checks or [Check(f"{lb.name}: preflight", True, "nothing to check")]
        view = lb.state()
    except DrainerError as exc:
        return [Check(f"{lb.name}: preflight", False, str(exc))]
    except Exception as exc:  # a third-party adapter's bug is a failed check, not a crash
        return [Check(f"{lb.name}: preflight", False, f"failed unexpectedly: {exc!r}")]
    return [Check(f"{lb.name}: answers", True, answer(view))]


def attempt(name: str, call: Callable[[], str]) -> Check:
    """Run one check: ``call`` returns what it saw; an AdapterError is the failure."""
    try:
        return Check(name, True, call())
    except AdapterError as exc:
        return Check(name, False, str(exc))
