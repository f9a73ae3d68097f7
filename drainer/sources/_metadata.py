"""What every metadata-service source shares: one HTTP client and the retries of a poll.

The client is made at the first request (a command that asks nothing, such as
``drainer status`` with ``node.name`` set, imports no httpx and builds no SSL context)
and goes straight to the endpoint: proxy variables ignored, redirects not followed
(metadata services reject proxied requests), a short connect timeout. ``retry`` runs
one attempt again while it raises ``Retryable`` (429, 5xx, a transport failure), with
backoff, at most ``attempts`` times and never past shutdown; then it raises
SourceError naming the endpoint, ``Unreachable`` when the last try got no answer at all
(a source that reads several paths stops there: the others would wait as long).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from drainer.errors import SourceError

if TYPE_CHECKING:
    import httpx
    from tenacity import RetryCallState, Retrying

__all__ = ["MetadataHTTP", "Retryable", "Unreachable", "Unread"]

log = logging.getLogger("drainer")

T = TypeVar("T")


class Retryable(Exception):
    """429, 5xx or a transport failure: worth another try within this poll."""


class Unreachable(SourceError):
    """The metadata service gave no answer at all (timeout, refused connection) after the
    retries: the whole service, not one path, is out of reach this poll."""


class Unread:
    """What one poll of a source that reads several paths (AWS's, Google Cloud's keys)
    could not read: one that fails hides no notice on the others, and the listing is
    then partial."""

    def __init__(self) -> None:
        self._said = ""  # what the last listing left out, as logged

    def settle(self, errors: Sequence[SourceError], *, found: bool) -> bool:
        """Whether the listing is partial. With nothing ``found`` the poll fails: no
        answer, never "no event" (the one error itself, so that its kind stays). Else
        what was left out is logged when it changes, and once when all reads again."""
        if errors and not found:
            if len(errors) == 1:
                raise errors[0]
            raise SourceError("; ".join(str(e) for e in errors))
        said = "; ".join(str(e) for e in errors)
        if said and said != self._said:
            log.warning("%s; listing the notices read without it", said)
        elif self._said and not said:
            log.info("every metadata path can be read again")
        self._said = said
        return bool(errors)


class MetadataHTTP:
    def __init__(
        self,
        endpoint: str,
        timeout: float,
        *,
        headers: Mapping[str, str] | None = None,
        stopping: threading.Event | None = None,
        transport: httpx.BaseTransport | None = None,
        attempts: int = 3,
    ) -> None:
        self.endpoint = endpoint
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._transport = transport
        self._made: httpx.Client | None = None
        self._stopping = stopping or threading.Event()
        self._attempts = attempts
        self._retries: Retrying | None = None  # made at the first retry too: tenacity's import

    @property
    def _retrying(self) -> Retrying:
        if self._retries is None:
            from tenacity import (
                Retrying,
                retry_if_exception_type,
                stop_after_attempt,
                stop_when_event_set,
                wait_exponential,
            )

            self._retries = Retrying(
                stop=stop_after_attempt(self._attempts) | stop_when_event_set(self._stopping),
                wait=wait_exponential(multiplier=0.25, max=2.0),
                retry=retry_if_exception_type(Retryable),
                sleep=self._pause,
                retry_error_callback=self._give_up,
            )
        return self._retries

    @property
    def client(self) -> httpx.Client:
        if self._made is None:
            import httpx

            self._made = httpx.Client(
                base_url=self.endpoint,
                headers=self._headers,
                timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 1.0)),
                trust_env=False,
                follow_redirects=False,
                transport=self._transport,
            )
        return self._made

    def send(self, method: str, path: str, **options: Any) -> httpx.Response:
        """One request; Retryable on a transport failure, a 429 or a 5xx, else the reply."""
        import httpx

        try:
            reply = self.client.request(method, path, **options)
        except httpx.HTTPError as exc:
            raise Retryable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if reply.status_code == 429 or reply.status_code >= 500:
            raise Retryable(f"{method} {path}: HTTP {reply.status_code}")
        return reply

    def refused(self, method: str, path: str, reply: httpx.Response) -> SourceError:
        """The error for an answer that is neither a success nor worth another try."""
        return SourceError(
            f"metadata service at {self.endpoint}: {method} {path}: "
            f"HTTP {reply.status_code}: {reply.text[:200]}"
        )

    def retry(self, once: Callable[[], T]) -> T:
        """``once()``, again while it raises Retryable; SourceError when that lasts."""
        result: T = self._retrying(once)
        return result

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)  # returns at once on shutdown

    def _give_up(self, state: RetryCallState) -> Any:
        import httpx

        exc = state.outcome.exception() if state.outcome else None
        error = Unreachable if isinstance(exc and exc.__cause__, httpx.HTTPError) else SourceError
        raise error(f"metadata service at {self.endpoint}: {exc}") from exc

    def close(self) -> None:
        if self._made is not None:
            self._made.close()
