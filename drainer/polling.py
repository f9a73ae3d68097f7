"""One poll of the event source, and the pace of the next.

A poll never raises: an answer that could not be read is ``None`` (never an empty
listing), counted and logged. The next poll comes one ``poll_interval`` later; only
while the service refuses or times out (429, 5xx, timeouts) does the pause double, up
to ``MAX_BACKOFF`` times. An off-schema answer (PayloadError) is retried at the normal
pace: the next answer may be fine, and a maintenance notice can be as short as 30 s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from drainer.errors import PayloadError, SourceError
from drainer.metrics import Metrics
from drainer.model import Listing
from drainer.sources.base import EventSource

__all__ = ["MAX_BACKOFF", "Pacer", "Polled", "poll"]

log = logging.getLogger("drainer")

MAX_BACKOFF = 16  # times the poll interval, while the service refuses or times out


@dataclass(frozen=True)
class Polled:
    """One poll's outcome: the events (None: unreadable) and whether to slow down."""

    events: Listing | None
    back_off: bool = False  # the service refused or timed out (429, 5xx, timeouts)


def poll(source: EventSource, metrics: Metrics) -> Polled:
    """The source's listing, or None (never an empty one) when it could not be read."""
    try:
        events = source.events()
    except PayloadError as exc:
        metrics.errors.labels("payload").inc()
        log.error("metadata payload rejected: %s", exc)
        return Polled(None)
    except SourceError as exc:
        metrics.errors.labels("source").inc()
        log.warning("%s", exc)
        return Polled(None, back_off=True)
    except Exception:  # a source plugin's bug must not stop the sidecar: "unknown" is safe
        metrics.errors.labels("internal").inc()
        log.exception("the event source failed unexpectedly")
        return Polled(None)
    if events.partial:  # the source said which part in its log; an answer, not a whole one
        metrics.errors.labels("source").inc()
    else:
        metrics.last_poll.set(time.time())
    return Polled(events)


@dataclass
class Pacer:
    """The pause before the next poll: ``interval``, doubled for every poll in a row that
    the service refused or timed out (429s mean we are too fast), up to ``MAX_BACKOFF``
    times. Any other poll, an off-schema answer included, resets the pace."""

    interval: float
    streak: int = 0

    def after(self, polled: Polled) -> float:
        self.streak = self.streak + 1 if polled.back_off else 0
        return self.interval * float(min(2 ** max(self.streak - 1, 0), MAX_BACKOFF))
