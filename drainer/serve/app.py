"""``drainer serve``'s application: one request, read in full, becomes one reply.

Authenticates the node (constant-time, an unknown node costs the same comparison),
limits each node's rate (per token: a fleet behind one NAT address shares nothing) and
each client address's failed attempts (so guessing tokens is slow), routes the path to
the node's own load balancer and calls its adapter, one call at a time per node and load
balancer. No socket here: the HTTP side (drainer/serve/http.py) reads requests and
writes replies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote, urlsplit

from drainer.adapters.base import AdapterContext, LoadBalancer, preflight
from drainer.errors import AdapterError, ConfigError, PermanentAdapterError, TransientAdapterError
from drainer.serve.config import NodeEntry, ServeConfig, ServeSetup
from drainer.serve.protocol import OPERATIONS, PREFIX, READS, error_body, view_to_json
from drainer.serve.shared import SharedReads, create_shared

__all__ = ["MIN_TOKEN_LENGTH", "Reply", "ServeApp", "read_tokens", "refused"]

log = logging.getLogger("drainer")

MIN_TOKEN_LENGTH = 16


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def read_tokens(config: ServeConfig, environ: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """Each node's token, read once at start (from ``environ``, default os.environ), as
    the digest ``ServeApp`` compares; ConfigError if one is missing or too short."""
    env = os.environ if environ is None else environ
    return {node: _read_token(node, entry, env) for node, entry in config.nodes.items()}


def _read_token(node: str, entry: NodeEntry, environ: Mapping[str, str]) -> bytes:
    if entry.token_file is not None:
        try:
            token = entry.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"nodes.{node}.token_file: cannot read {entry.token_file}: {exc.strerror}"
            ) from exc
        source = str(entry.token_file)
    else:
        assert entry.token_env is not None
        token = environ.get(entry.token_env, "").strip()
        source = f"${entry.token_env}"
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"nodes.{node}: the token in {source} is missing or shorter than "
            f"{MIN_TOKEN_LENGTH} characters (make one with: openssl rand -hex 32)"
        )
    return _digest(token)


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class Reply:
    status: int
    payload: dict[str, Any]
    retry_after: int = 0
    node: str = ""  # the node the request authenticated as ("" if it did not)


def refused(status: int, message: str, kind: str = "refused", retry_after: int = 0) -> Reply:
    return Reply(status, error_body(message, kind), retry_after)


class ServeApp:
    """The adapters of every node, and what may call them; see the module docstring."""

    def __init__(
        self, setup: ServeSetup, *, tokens: Mapping[str, bytes], clock: Callable[[], float]
    ) -> None:
        config = setup.config
        self._config = config
        self._clock = clock
        self._tokens = dict(tokens)  # node -> the digest of its token (read_tokens)
        self._nobody = _digest(os.urandom(16).hex())  # compared against for unknown nodes
        self._lbs: dict[str, dict[str, LoadBalancer]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        shared: dict[tuple[str, float, float], SharedReads] = {}  # see drainer/serve/shared.py
        for node, entries in setup.entries.items():
            self._lbs[node] = {}
            context = AdapterContext(node=node, state_dir=config.state_dir)
            for lb, entry in entries.items():
                plugin = setup.plugins[entry.type]
                made = create_shared(
                    plugin, entry, context, max_age=config.shared_read, clients=shared
                )
                for instance in made:
                    served = lb if len(made) == 1 else f"{lb}/{instance.name}"
                    self._lbs[node][served] = instance
                    self._locks[(node, served)] = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}  # node -> its requests
        self._failures: dict[str, _Bucket] = {}  # client address -> its refused tokens
        self._rate_lock = threading.Lock()

    @property
    def config(self) -> ServeConfig:
        return self._config

    def close(self) -> None:
        """Close every adapter (their state at the load balancers is kept)."""
        for lbs in self._lbs.values():
            for lb in lbs.values():
                lb.close()

    # -- one request --------------------------------------------------------------------

    def _allow(self, buckets: dict[str, _Bucket], key: str, *, charge: bool = True) -> int:
        """0 if ``key`` (a node, or a client address's failures) may go on, else the
        seconds it should wait; ``charge=False`` only looks."""
        limits = self._config.limits
        now = self._clock()
        with self._rate_lock:
            if len(buckets) > 4096:  # forget keys idle long enough to be full
                full = limits.burst / limits.rate
                idle = [k for k, b in buckets.items() if now - b.updated >= full]
                for k in idle:
                    del buckets[k]
            bucket = buckets.setdefault(key, _Bucket(float(limits.burst), now))
            bucket.tokens = min(limits.burst, bucket.tokens + (now - bucket.updated) * limits.rate)
            bucket.updated = now
            if bucket.tokens >= 1:
                if charge:
                    bucket.tokens -= 1
                return 0
            return max(1, int((1 - bucket.tokens) / limits.rate + 0.999))

    def _authenticate(self, node: str, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        given = _digest(token.strip() if scheme.lower() == "bearer" else "")  # any case
        expected = self._tokens.get(node, self._nobody)
        return hmac.compare_digest(given, expected) and node in self._tokens and bool(token)

    def handle(
        self, method: str, path: str, *, node: str, authorization: str, body: bytes, client: str
    ) -> Reply:
        """Answer one request that was read in full: ``node`` and ``authorization`` are
        the values of the ``X-Drainer-Node`` and ``Authorization`` headers ("" if absent)."""
        # An address that sent too many wrong tokens is refused before anything is
        # compared, the right token included: guessing gets no answer at all.
        wait = self._allow(self._failures, client, charge=False)
        if wait:
            return refused(429, "too many requests", "transient", retry_after=wait)
        if not self._authenticate(node, authorization):
            self._allow(self._failures, client)
            log.warning("refused a request from %s: unknown node or wrong token", client)
            return refused(401, "unknown node or wrong token")
        reply = self._authenticated(method, path, node=node, body=body)
        return replace(reply, node=node)

    def _authenticated(self, method: str, path: str, *, node: str, body: bytes) -> Reply:
        wait = self._allow(self._buckets, node)
        if wait:
            return refused(429, "too many requests", "transient", retry_after=wait)
        parts = [unquote(p) for p in urlsplit(path).path.split("/") if p]
        if parts[:2] != PREFIX.strip("/").split("/") or len(parts) > 4:
            return refused(404, f"no such path: {urlsplit(path).path}")
        mine = self._lbs[node]
        if len(parts) == 2:
            if method != "GET":
                return refused(405, "use GET")
            return Reply(200, {"node": node, "load_balancers": sorted(mine)})
        name = parts[2]
        if name not in mine:
            log.warning("refused node %s: not allowed on load balancer %r", node, name)
            return refused(403, f"node {node} may not act on load balancer {name!r}")
        op = parts[3] if len(parts) == 4 else "state"
        if len(parts) == 4 and op not in OPERATIONS:
            return refused(404, f"no such operation: {op}")
        read = op in READS
        if method != ("GET" if read else "POST"):
            return refused(405, f"use {'GET' if read else 'POST'}")
        try:
            args = json.loads(body) if body.strip() else {}
        except ValueError:
            return refused(400, "the body is not JSON")
        allowed = {"kill"} if op == "take-out" else set()
        if not isinstance(args, dict) or set(args) - allowed:
            keys = ", ".join(sorted(allowed)) or "none"
            return refused(400, f"{op} takes a JSON object with these keys: {keys}")
        kill = args.get("kill", False)
        if not isinstance(kill, bool):
            return refused(400, "kill must be true or false")
        return self._call(node, name, op, kill)

    def _call(self, node: str, name: str, op: str, kill: bool) -> Reply:
        lb = self._lbs[node][name]
        try:
            with self._locks[(node, name)]:
                if op == "preflight":
                    checks = [
                        {"name": c.name, "ok": c.ok, "detail": c.detail} for c in preflight(lb)
                    ]
                    payload: dict[str, Any] = {"checks": checks}
                elif op == "state":
                    payload = view_to_json(lb.state())
                elif op == "drain":
                    lb.drain()
                    payload = {"ok": True}
                elif op == "take-out":
                    lb.take_out(kill=kill)
                    payload = {"ok": True}
                else:
                    payload = {"serving": lb.put_back()}
        except TransientAdapterError as exc:
            log.warning("node %s: %s %s: %s", node, op, name, exc)
            return refused(503, str(exc), "transient")
        except (PermanentAdapterError, AdapterError) as exc:
            log.error("node %s: %s %s: %s", node, op, name, exc)
            return refused(422, str(exc), "permanent")
        if op not in READS:
            log.info("node %s: %s %s: done", node, op, name)
        return Reply(200, payload)
