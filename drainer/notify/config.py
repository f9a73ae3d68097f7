"""The ``notify:`` section of the configuration: where to send notices, and which.

A header value is written in the file (``X-Team: web``) or, for a secret, read when a
notice is sent from a file (``{file: /etc/drainer/webhook-token}``) or from drainer's
environment (``{env: DRAINER_WEBHOOK_TOKEN}``); the configuration holds only where the
secret is, so ``drainer config show`` never prints it and no log line holds it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from drainer._types import PositiveDuration, exactly_one, http_url
from drainer.core import Phase

__all__ = ["ALERT", "TRIGGERS", "NotifyConfig", "Secret", "Webhook"]

ALERT = "alert"  # the trigger for alerts, next to the phases
TRIGGERS = (*(phase.value for phase in Phase), ALERT)


_UNCARRIABLE = (
    "holds a line break, a control character or a non-ASCII one: an HTTP header cannot carry it"
)


def _header_value(value: str) -> str:
    """``value``, or ValueError (never showing it: it may be a secret) when an HTTP header
    cannot carry it; h11 would refuse it with the value in its message."""
    if not all(" " <= c <= "~" or c == "\t" for c in value):
        raise ValueError(_UNCARRIABLE)
    return value


def _webhook_url(url: str) -> str:
    """An http(s) URL with a host; the error shows it up to its host only: a Slack URL's
    path is a token, and the error reaches the journal (``drainer config check``)."""
    try:
        return http_url(url)
    except ValueError:
        scheme, sep, rest = url.partition("://")
        shown = scheme + sep + rest.split("/", 1)[0] if sep else url.split("/", 1)[0]
        raise ValueError(
            f"not an http(s) URL with a host: {shown!r}... (the rest is not shown: it may be"
            " a token)"
        ) from None


WebhookUrl = Annotated[str, AfterValidator(_webhook_url)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret(_Strict):
    """A header value kept out of the configuration: one of ``file`` or ``env``."""

    file: Path | None = None
    env: str | None = None

    @field_validator("env")
    @classmethod
    def _named(cls, name: str | None) -> str | None:
        if name is not None and not name:
            raise ValueError("name an environment variable")
        return name

    @model_validator(mode="after")
    def _one(self) -> Secret:
        exactly_one(self, "file", "env")
        return self

    def read(self) -> str:
        """The secret, stripped of surrounding whitespace; ValueError saying where it was
        looked for (never what it holds)."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ValueError(f"the environment variable {self.env} is not set")
            try:
                return _header_value(value.strip())
            except ValueError as exc:
                raise ValueError(f"the environment variable {self.env} {exc}") from None
        assert self.file is not None
        try:
            value = self.file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"cannot read {self.file}: {why}") from exc
        try:
            return _header_value(value)
        except ValueError as exc:
            raise ValueError(f"{self.file} {exc}") from None


def _kind(value: Any) -> str:
    return "plain" if isinstance(value, str) else "secret"


HeaderValue = Annotated[
    Annotated[str, AfterValidator(_header_value), Tag("plain")] | Annotated[Secret, Tag("secret")],
    Discriminator(_kind),
]


class Webhook(_Strict):
    url: WebhookUrl
    name: str | None = None  # how logs and `drainer notify test` call it (default: its host)
    headers: dict[str, HeaderValue] = Field(default_factory=dict)
    on: list[str] = Field(default_factory=lambda: list(TRIGGERS))  # default: everything
    format: Literal["json", "slack"] = "json"

    @field_validator("on")
    @classmethod
    def _triggers(cls, on: list[str]) -> list[str]:
        unknown = [t for t in on if t not in TRIGGERS]
        if unknown:
            raise ValueError(
                f"unknown {', '.join(map(repr, unknown))} (known: {', '.join(TRIGGERS)})"
            )
        if not on:
            raise ValueError(f"name at least one of {', '.join(TRIGGERS)}")
        return on

    @property
    def label(self) -> str:
        """The name, or scheme://host[:port]: never the path, which may hold a token (Slack)."""
        if self.name:
            return self.name
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")

    def resolved_headers(self) -> dict[str, str]:
        """The headers with their secrets read; ValueError naming the header and where."""
        out: dict[str, str] = {}
        for key, value in self.headers.items():
            if isinstance(value, Secret):
                try:
                    value = value.read()
                except ValueError as exc:
                    raise ValueError(f"header {key}: {exc}") from exc
            out[key] = value
        return out


class NotifyConfig(_Strict):
    webhooks: list[Webhook] = Field(default_factory=list)
    timeout: PositiveDuration = 5.0  # one attempt
    retry_for: PositiveDuration = 600.0  # then the notice is given up (counted as failed)
    queue_size: int = Field(default=100, ge=1)  # then the oldest waiting notice is dropped

    @field_validator("webhooks")
    @classmethod
    def _one_entry_per_url(cls, webhooks: list[Webhook]) -> list[Webhook]:
        # notices are queued, retried and kept in state_dir per URL: two entries with one
        # URL would share that queue, each sent with the first entry's format and headers
        first: dict[str, int] = {}
        for i, hook in enumerate(webhooks):
            j = first.setdefault(hook.url, i)
            if j != i:
                raise ValueError(
                    f"entries [{j}] ({webhooks[j].label}) and [{i}] ({hook.label}) have the"
                    " same URL, and notices are queued per URL: make them one entry whose"
                    " `on` lists the triggers of both"
                )
        return webhooks
