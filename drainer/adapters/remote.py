"""The ``remote`` load balancer: a load balancer that ``drainer serve`` runs for this node.

The sidecar on a backend VM cannot edit the load-balancer host's files; it asks
``drainer serve`` there (drainer/serve/) over HTTP(S), naming the load balancer by its
name on that server. The request carries this node's name and token, never a server: the
far end acts on this node's own server only.

Every call is idempotent, so every call is retried (``retries`` times, the delay doubling
from ``retry_delay``, a ``Retry-After`` honoured up to 10 s) when the server cannot be
reached, times out, or answers 429/500/502/503/504. Then it raises TransientAdapterError;
a refusal (401, 403, 422, other 4xx) raises PermanentAdapterError at once. The token is
read from its file or environment variable on every call (so it can be rotated) and is
never put in a message. Nothing is kept in memory between calls but the connection: it
stays open for the next call (HTTP/1.1 keep-alive) up to ``KEEPALIVE`` seconds, less
than ``drainer serve`` keeps an idle one (``limits.idle``, 60 s by default), so a poll
never pays a new TCP connection and TLS handshake, nor meets one the server just closed.

The token travels in a header, so ``url`` must be ``https://`` unless its host is
loopback (as ``drainer serve`` listens by default) or ``allow_plaintext: true`` says that
another layer (a VPN, a tunnel) encrypts the traffic: the rule ``drainer serve`` applies to
its own ``listen``.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import tenacity
from pydantic import Field, model_validator

from drainer._http import is_loopback
from drainer._types import Duration, exactly_one
from drainer.adapters.base import AdapterConfig, AdapterContext, AdapterPlugin, LoadBalancer
from drainer.adapters.checks import Check, attempt
from drainer.errors import (
    AdapterError,
    ConfigError,
    PermanentAdapterError,
    TransientAdapterError,
)
from drainer.model import LBView
from drainer.serve.protocol import NODE_HEADER, PREFIX, RETRY_STATUS, lb_path, view_from_json

__all__ = ["KEEPALIVE", "PLUGIN", "RemoteConfig", "RemoteLoadBalancer"]

KEEPALIVE = 30.0  # seconds an idle connection to drainer serve is kept for the next call


class _Busy(Exception):
    """An answer that asks for the same request again (429, 5xx)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class RemoteConfig(AdapterConfig):
    type: Literal["remote"] = "remote"
    url: str  # https://lb-1.internal:9470, where drainer serve listens
    load_balancer: str  # the load balancer's name in drainer serve's configuration
    node: str | None = None  # this node's name there; default: the VM's name
    token_file: Path | None = None
    token_env: str | None = None
    ca_file: Path | None = None  # trust this CA (drainer serve's certificate) for https
    timeout: Duration = 30.0  # the far end may run nginx -t and wait for a reload
    retries: int = Field(default=3, ge=0)
    retry_delay: Duration = 0.5
    allow_plaintext: bool = False  # http:// to a host that is not loopback

    @model_validator(mode="after")
    def _one_token(self) -> RemoteConfig:
        exactly_one(self, "token_file", "token_env")
        return self

    @model_validator(mode="after")
    def _no_token_in_clear(self) -> RemoteConfig:
        try:
            url = urlsplit(self.url)
            host = url.hostname
        except ValueError as exc:
            raise ValueError(f"url: {self.url!r} is not a URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not host:
            raise ValueError(f"url: expected https://host:port, got {self.url!r}")
        if url.scheme == "http" and not self.allow_plaintext and not is_loopback(host):
            raise ValueError(
                f"url: {host} is not a loopback address and http:// would send the token in "
                f"clear: use https:// (or allow_plaintext: true if another layer encrypts "
                f"the traffic)"
            )
        return self


class RemoteLoadBalancer(LoadBalancer):
    def __init__(
        self,
        config: RemoteConfig,
        *,
        name: str,
        node: str,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self._config = config
        self._node = node
        self._sleep = sleep
        verify: ssl.SSLContext | bool = True
        if config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_file))
        self._client = httpx.Client(
            base_url=config.url,
            timeout=config.timeout,
            verify=verify,
            transport=transport,
            trust_env=False,
            limits=httpx.Limits(max_connections=4, keepalive_expiry=KEEPALIVE),
        )

    def _token(self) -> str:
        config = self._config
        try:
            if config.token_file is not None:
                token = config.token_file.read_text().strip()
            else:
                token = os.environ.get(str(config.token_env), "").strip()
        except OSError as exc:
            raise PermanentAdapterError(
                f"cannot read token_file {config.token_file}: {exc.strerror}"
            ) from exc
        where = config.token_file or f"${config.token_env}"
        if not token:
            raise PermanentAdapterError(f"no token in {where}")
        if not all(" " <= c <= "~" for c in token):  # h11 would show it in its refusal
            raise PermanentAdapterError(
                f"the token in {where} holds a line break, a control character or a"
                " non-ASCII one: an HTTP header cannot carry it"
            )
        return token

    def _request(
        self, method: str, op: str = "", body: dict[str, Any] | None = None, *, at: str = ""
    ) -> Any:
        path = at or lb_path(self._config.load_balancer, op)
        headers = {NODE_HEADER: self._node, "Authorization": f"Bearer {self._token()}"}
        where = f"drainer serve at {self._config.url}"

        def send() -> httpx.Response:
            response = self._client.request(method, path, json=body, headers=headers)
            if response.status_code in RETRY_STATUS:
                raise _Busy(response)
            return response

        attempts = self._config.retries + 1
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type((httpx.HTTPError, _Busy)),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return self._result(retrying(send), where)
        except _Busy as busy:  # still busy at the last attempt
            return self._result(busy.response, where)
        except httpx.HTTPError as exc:
            raise TransientAdapterError(
                f"{where} unreachable after {attempts} attempts: {exc}"
            ) from exc

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """The delay doubles from ``retry_delay``; a ``Retry-After`` is honoured up to 10 s."""
        delay = self._config.retry_delay * 2.0 ** (state.attempt_number - 1)
        failed = state.outcome.exception() if state.outcome is not None else None
        if isinstance(failed, _Busy):
            return min(10.0, max(delay, _retry_after(failed.response)))
        return delay

    def _result(self, response: httpx.Response, where: str) -> Any:
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code == 200 and isinstance(data, dict):
            return data
        message = data.get("error") if isinstance(data, dict) else None
        text = f"{where}: {message or f'HTTP {response.status_code}'}"
        if response.status_code in RETRY_STATUS or response.status_code == 200:
            raise TransientAdapterError(text)
        raise PermanentAdapterError(text)

    # -- LoadBalancer -------------------------------------------------------------------

    def state(self) -> LBView:
        data = self._request("GET")
        try:
            return view_from_json(data)
        except (KeyError, ValueError, TypeError) as exc:
            raise TransientAdapterError(
                f"drainer serve answered an unknown state: {data!r}"
            ) from exc

    def drain(self) -> None:
        self._request("POST", "drain", {})

    def take_out(self, *, kill: bool) -> None:
        self._request("POST", "take-out", {"kill": kill})

    def put_back(self) -> bool:
        return bool(self._request("POST", "put-back", {}).get("serving"))

    def preflight(self) -> list[Check]:
        """``drainer serve`` answers and accepts this node's token, offers this load
        balancer to it, and its own preflight of that load balancer passes."""
        name = self._config.load_balancer
        try:
            data = self._request("GET", at=PREFIX)
        except AdapterError as exc:
            return [Check(f"{self.name}: drainer serve", False, str(exc))]
        offered = data.get("load_balancers") if isinstance(data, dict) else None
        checks = [
            Check(f"{self.name}: drainer serve", True, f"{self._config.url} accepts the token")
        ]
        if not isinstance(offered, list) or name not in offered:
            detail = f"{self._config.url} does not offer {name!r} to node {self._node}"
            return [
                *checks,
                Check(f"{self.name}: load balancer", False, f"{detail} (it offers: {offered})"),
            ]
        try:
            remote = self._request("GET", "preflight")
        except PermanentAdapterError as exc:
            if "no such operation" not in str(exc):  # an older drainer serve: read the state
                return [*checks, Check(f"{self.name}: far end", False, str(exc))]
            return [*checks, attempt(f"{self.name}: far end", lambda: self.state().detail)]
        except AdapterError as exc:
            return [*checks, Check(f"{self.name}: far end", False, str(exc))]
        for item in remote.get("checks", []) if isinstance(remote, dict) else []:
            if isinstance(item, dict):
                far = f"{self.name}: far end: {item.get('name', '?')}"
                checks.append(Check(far, item.get("ok") is True, str(item.get("detail", ""))))
        return checks

    def close(self) -> None:
        self._client.close()


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("Retry-After", "0"))
    except ValueError:
        return 0.0


def create(config: RemoteConfig, context: AdapterContext) -> list[LoadBalancer]:
    where = config.token_file or f"${config.token_env}"
    if config.token_file is not None and not os.access(config.token_file, os.R_OK):
        raise ConfigError(f"remote {config.load_balancer}: cannot read token_file {where}")
    if config.token_env is not None and not os.environ.get(config.token_env):
        raise ConfigError(f"remote {config.load_balancer}: {where} is not set")
    name = config.name or f"remote-{config.load_balancer}"
    return [RemoteLoadBalancer(config, name=name, node=config.node or context.node)]


PLUGIN = AdapterPlugin(config_model=RemoteConfig, create=create)
