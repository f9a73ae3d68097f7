"""Field types shared by the configuration and the adapters' own configuration models.

Here, and not in config.py, so that an adapter can type its fields without importing the
application's configuration (and, through it, the core).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, PlainSerializer

from drainer.model import format_duration, parse_duration

__all__ = ["Duration", "HttpUrl", "PositiveDuration", "exactly_one", "http_url"]

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


def http_url(url: str) -> str:
    """An http(s) URL with a host, refused when the configuration is read rather than by
    every request made with it. With the standard library: httpx's import, twice the
    rest of `config check`, waits for the first request."""
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"not a URL: {url!r} (a space or control character)")
    try:
        parsed = urlsplit(url)
        parsed.port  # noqa: B018 - parsed on access: ValueError if not a port number
    except ValueError as exc:
        raise ValueError(f"not a URL: {url!r} ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    return url


HttpUrl = Annotated[str, AfterValidator(http_url)]


def exactly_one(model: BaseModel, first: str, second: str) -> None:
    """For a model validator: ValueError unless exactly one of two keys is set."""
    if (getattr(model, first) is None) == (getattr(model, second) is None):
        raise ValueError(f"set exactly one of {first} or {second}")
