"""Field types shared by the configuration and the adapters' own configuration models.

Here, and not in config.py, so that an adapter can type its fields without importing the
application's configuration (and, through it, the core).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer

from drainer.model import format_duration, parse_duration

__all__ = ["Duration", "PositiveDuration"]

# Seconds, written as 2s, 500ms, 5m... (or a number of seconds); printed the same way.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    Field(ge=0),
]


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be more than 0 (write it as 2s, 500ms, 5m...)")
    return seconds


# A duration where 0 makes no sense (a timeout, an interval, a deadline).
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
