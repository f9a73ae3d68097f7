"""The drain budget on etcd (v3, through its JSON gateway, over httpx).

Keys, under the configured prefix (default ``/drainer/v1/``)::

    budget/<pool>/holders/<node>   {"node", "kind", "since", "event_id", "event_type",
                                    "over_budget", "lease"}

one key per pool and node, attached to the node's slot lease, readable with
``etcdctl get --prefix /drainer/v1/budget/``. The lease is what outlives a reboot: its
TTL covers drain, maintenance, boot and health check, its id is kept in the node's
record, and keep-alives resume on it after boot (any client may keep a lease alive).
A sidecar that dies for good frees its slots when the lease expires; an operator can
free them at once (``release``).

Admission (all pools, all or nothing) is two round trips: one transaction reads every
pool's holders at one revision R; if each pool has room, a second puts this node's
keys, compared on "no key of the pool was created after R" and "this node holds no key
there yet" — a contender that got in between makes it fail, and the reading starts
again. Reads for admission are linearizable; ``holders(stale_ok=True)`` falls back to a
serializable read (answers without quorum) and says so.

Why our own client rather than a library: the surface is seven calls; the quirks that
matter (int64 as strings, omitted defaults, a keep-alive without TTL meaning "no such
lease", 6 s stalls without quorum, both error shapes) must be handled and tested here
whatever the library; the maintained gateway client (etcd3gw) would add requests and
futurist next to httpx, and the gRPC ones are asyncio-only or broken with protobuf 4.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx

from drainer.budget import Admission, BudgetError, EtcdConfig, Holder, Pool
from drainer.errors import ConfigError

__all__ = ["EtcdBudget", "EtcdConfig", "EtcdSlots", "lease_id"]

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({500, 502, 503, 504})  # this member cannot answer: try the next
_RACES = 20  # admission attempts lost to contenders before giving up for this call


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


@contextmanager
def _parsing(what: str) -> Iterator[None]:
    """An answer that is not what etcd sends (a proxy, another version, bad base64) is
    the budget not answering, never an exception the daemon does not expect."""
    try:
        yield
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise BudgetError(f"etcd: unexpected answer to {what}: {problem}") from exc


def _range_end(prefix: str) -> str:
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


def lease_id(node: str, tag: str) -> str:
    """A lease id of our own choosing (63 bits, never 0), the same for the same node and
    tag: a grant retried after a crash finds its lease instead of leaking one."""
    digest = hashlib.sha256(f"{node}\0{tag}".encode()).digest()
    return str((int.from_bytes(digest[:8], "big") & (2**63 - 1)) or 1)


def _holder(pool: str, node: str, value: str) -> Holder:
    try:
        data = json.loads(value)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return Holder(
            pool=pool,
            node=node,
            kind=str(data.get("kind", "voluntary")),
            since=float(data.get("since", 0.0)),
            event_id=str(data.get("event_id", "")),
            event_type=str(data.get("event_type", "")),
            over_budget=bool(data.get("over_budget", False)),
            lease=str(data.get("lease", "")),
        )
    except (ValueError, TypeError):
        # written by hand or by another version: it still holds its slot
        return Holder(pool=pool, node=node, kind="unknown")


class EtcdBudget:
    """Slots of pools on an etcd cluster. Every method raises BudgetError when no
    endpoint could answer; the endpoint that last answered is asked first."""

    def __init__(self, config: EtcdConfig, *, transport: httpx.BaseTransport | None = None):
        self.config = config
        self.prefix = config.prefix
        verify: ssl.SSLContext | bool = True
        try:
            if config.ca_file is not None or config.cert_file is not None:
                verify = ssl.create_default_context(
                    cafile=str(config.ca_file) if config.ca_file else None
                )
            if config.cert_file is not None and isinstance(verify, ssl.SSLContext):
                verify.load_cert_chain(str(config.cert_file), str(config.key_file))
        except OSError as exc:  # ssl.SSLError is one too
            raise ConfigError(
                f"budget.etcd: cannot load ca_file, cert_file or key_file: {exc}"
            ) from exc
        self._client = httpx.Client(
            timeout=config.timeout,
            verify=verify,
            transport=transport,
            trust_env=False,  # a proxy set for the VM's outbound traffic is not for etcd
        )
        self._current = 0
        self._token: str | None = None
        self.requests = 0  # every request sent, for the benchmarks

    def close(self) -> None:
        self._client.close()

    # -- the gateway ---------------------------------------------------------------------

    def _authenticate(self, endpoint: str) -> str:
        """Log in at ``endpoint``; why this member cannot answer ("" logged in): the
        next one may (a member without quorum refuses logins too)."""
        if self.config.username is None:
            return ""
        password = ""
        if self.config.password_file is not None:
            try:
                password = self.config.password_file.read_text().strip()
            except OSError as exc:
                raise BudgetError(
                    f"etcd: cannot read budget.etcd.password_file: {exc.strerror}"
                ) from exc
        answer = self._client.post(
            f"{endpoint}/v3/auth/authenticate",
            json={"name": self.config.username, "password": password},
        )
        if answer.status_code in _RETRY_STATUS:
            return f"{endpoint}: login: HTTP {answer.status_code} {_message(answer)}"
        if answer.status_code != 200:
            raise BudgetError(f"etcd: authentication as {self.config.username} refused")
        with _parsing("auth/authenticate"):
            self._token = str(answer.json().get("token", ""))
        return ""

    def call(self, path: str, body: dict[str, Any], *, allow: Iterable[int] = ()) -> Any:
        """POST ``/v3/<path>`` to the first endpoint that answers; a status in ``allow``
        is returned as ``{"_status": code, ...}`` instead of raised."""
        endpoints = self.config.endpoints
        failures: list[str] = []
        for step in range(len(endpoints)):
            index = (self._current + step) % len(endpoints)
            endpoint = endpoints[index]
            unavailable = ""
            try:
                if self.config.username is not None and self._token is None:
                    unavailable = self._authenticate(endpoint)
                if not unavailable:
                    answer = self._post(endpoint, path, body)
                if not unavailable and answer.status_code == 401 and self.config.username:
                    unavailable = self._authenticate(endpoint)
                    answer = answer if unavailable else self._post(endpoint, path, body)
            except httpx.HTTPError as exc:
                unavailable = f"{endpoint}: {type(exc).__name__}: {exc}"
            if unavailable:
                failures.append(unavailable)
                continue
            if answer.status_code in _RETRY_STATUS:
                failures.append(f"{endpoint}: HTTP {answer.status_code} {_message(answer)}")
                continue
            if answer.status_code == 200:
                body = _json(answer)
                if not isinstance(body, dict):
                    raise BudgetError(f"etcd {path}: answered {str(body)[:80]!r}, not an object")
                stream_error = body.get("error")
                if isinstance(stream_error, dict):  # a streaming call's error: no leader
                    failures.append(f"{endpoint}: {stream_error.get('message', stream_error)}")
                    continue
                self._current = index
                return body
            self._current = index
            if answer.status_code in allow:
                return {"_status": answer.status_code, "message": _message(answer)}
            raise BudgetError(f"etcd {path}: HTTP {answer.status_code} {_message(answer)}")
        raise BudgetError("etcd: no endpoint answered: " + "; ".join(failures))

    def _post(self, endpoint: str, path: str, body: dict[str, Any]) -> httpx.Response:
        self.requests += 1
        headers = {"Authorization": self._token} if self._token else None
        return self._client.post(f"{endpoint}/v3/{path}", json=body, headers=headers)

    # -- leases --------------------------------------------------------------------------

    def grant(self, lease: str, ttl: float | None = None) -> str:
        """Grant ``lease`` (an id from ``lease_id``); one that exists already is kept."""
        seconds = max(1, round(ttl if ttl is not None else self.config.lease_ttl))
        self.call("lease/grant", {"ID": lease, "TTL": seconds}, allow=(412,))
        return lease

    def keepalive(self, lease: str) -> float:
        """Renew ``lease``; its TTL in seconds, 0 when it no longer exists."""
        answer = self.call("lease/keepalive", {"ID": lease})
        with _parsing("lease/keepalive"):
            return float(answer.get("result", {}).get("TTL", 0))  # no TTL: the lease is gone

    def ttl(self, lease: str) -> float | None:
        """Seconds ``lease`` has left without renewing it; None when it no longer exists
        (0 is a lease about to expire, still renewable)."""
        answer = self.call("lease/timetolive", {"ID": lease})
        with _parsing("lease/timetolive"):
            left = float(answer.get("TTL", 0))  # proto3 JSON omits a 0; gone is -1
        return None if left < 0 else left

    def revoke(self, lease: str) -> None:
        self.call("lease/revoke", {"ID": lease}, allow=(404,))

    # -- slots ---------------------------------------------------------------------------

    def _pool_prefix(self, pool: str) -> str:
        return f"{self.prefix}budget/{pool}/holders/"

    def _key(self, pool: str, node: str) -> str:
        if "/" in node or not node:
            raise BudgetError(f"etcd: a node name for the budget cannot hold '/': {node!r}")
        return self._pool_prefix(pool) + node

    def _read(
        self, pools: Sequence[str], *, serializable: bool = False
    ) -> tuple[int, dict[str, list[Holder]]]:
        """Every pool's holders at one revision (one transaction)."""
        ranges = [
            {
                "request_range": {
                    "key": _b64(self._pool_prefix(p)),
                    "range_end": _range_end(self._pool_prefix(p)),
                    "serializable": serializable,
                }
            }
            for p in pools
        ]
        if serializable:  # a txn is always linearizable: read pool by pool
            answers = [self.call("kv/range", r["request_range"]) for r in ranges]
            with _parsing("kv/range"):
                revision = max(int(a.get("header", {}).get("revision", 0)) for a in answers)
        else:
            txn = self.call("kv/txn", {"compare": [], "success": ranges})
            with _parsing("kv/txn"):
                revision = int(txn.get("header", {}).get("revision", 0))
                answers = [r.get("response_range", {}) for r in txn.get("responses", [])]
        if len(answers) != len(pools):
            raise BudgetError(f"etcd answered {len(answers)} ranges for {len(pools)} pools")
        held: dict[str, list[Holder]] = {}
        with _parsing("kv/range"):
            for pool, answer in zip(pools, answers, strict=True):
                start = len(self._pool_prefix(pool))
                held[pool] = [
                    _holder(pool, _unb64(kv["key"])[start:], _unb64(kv.get("value", "")))
                    for kv in answer.get("kvs", [])
                ]
        return revision, held

    def acquire(
        self,
        node: str,
        pools: Sequence[Pool],
        *,
        lease: str,
        kind: str = "voluntary",
        event_id: str = "",
        event_type: str = "",
        force: bool = False,
        now: float | None = None,
    ) -> Admission:
        """Take a slot in every pool for ``node`` on ``lease``, or none. Pools it holds
        already count as taken. ``force`` takes them even when full (marked over
        budget): the platform takes the VM anyway."""
        for _ in range(_RACES):
            revision, held = self._read([p.name for p in pools])
            holders = tuple(h for hs in held.values() for h in hs)
            missing = [p for p in pools if all(h.node != node for h in held[p.name])]
            if not missing:  # held already: on the lease its keys are attached to
                mine = [h for h in holders if h.node == node]
                lease = next((h.lease for h in mine if h.lease), lease)
                over = tuple(h.pool for h in mine if h.over_budget)  # taken forced, full
                return Admission(True, lease, full=over, holders=holders)
            full = tuple(p.name for p in missing if len(held[p.name]) + 1 > p.max_out)
            if full and not force:
                return Admission(False, "", full=full, holders=holders)
            # held in some pools already: the others go on that lease, the one kept alive
            lease = next((h.lease for h in holders if h.node == node and h.lease), lease)
            self.grant(lease)
            since = time.time() if now is None else now
            compare: list[dict[str, Any]] = []
            puts: list[dict[str, Any]] = []
            for pool in missing:
                prefix = self._pool_prefix(pool.name)
                compare.append(
                    {
                        "key": _b64(prefix),
                        "range_end": _range_end(prefix),
                        "target": "CREATE",
                        "result": "LESS",
                        "create_revision": str(revision + 1),
                    }
                )
                key = _b64(self._key(pool.name, node))
                compare.append(
                    {"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
                )
                value = {
                    "node": node,
                    "kind": kind,
                    "since": since,
                    "event_id": event_id,
                    "event_type": event_type,
                    "over_budget": pool.name in full,  # over in this pool, not all of them
                    "lease": lease,
                }
                put = {"key": key, "value": _b64(json.dumps(value)), "lease": lease}
                puts.append({"request_put": put})
            answer = self.call("kv/txn", {"compare": compare, "success": puts})
            if answer.get("succeeded"):
                return Admission(True, lease, full=full, holders=holders)
        raise BudgetError(f"etcd: {_RACES} admissions in a row lost to other nodes; try again")

    def holds(self, node: str, pools: Sequence[Pool]) -> bool:
        """True when ``node`` holds its slot in every pool (a linearizable read: the fence
        before an approval)."""
        _, held = self._read([p.name for p in pools])
        return all(any(h.node == node for h in held[p.name]) for p in pools)

    def _keys(self) -> list[str]:
        """Every key under ``<prefix>budget/``, without the prefix (``<pool>/holders/<node>``)."""
        everything = f"{self.prefix}budget/"
        answer = self.call(
            "kv/range",
            {"key": _b64(everything), "range_end": _range_end(everything), "keys_only": True},
        )
        with _parsing("kv/range"):
            return [_unb64(kv["key"])[len(everything) :] for kv in answer.get("kvs", [])]

    def release(self, node: str, *, lease: str = "") -> int:
        """Give back every slot ``node`` holds (and revoke ``lease``): how many."""
        mine = [key for key in self._keys() if key.endswith(f"/holders/{node}")]
        for key in mine:
            self.call("kv/deleterange", {"key": _b64(f"{self.prefix}budget/{key}")})
        if lease:
            self.revoke(lease)
        return len(mine)

    def abandon(self, node: str, pools: Sequence[Pool], *, lease: str) -> int:
        """Delete ``node``'s key in each pool while it is still on ``lease`` (what a take
        whose answer was lost may have written): how many. A key on another lease (an
        event's slot, another VM of that name) is not this take's and stays."""
        deleted = 0
        for pool in pools:
            key = _b64(self._key(pool.name, node))
            answer = self.call(
                "kv/txn",
                {
                    "compare": [{"key": key, "target": "LEASE", "result": "EQUAL", "lease": lease}],
                    "success": [{"request_delete_range": {"key": key}}],
                },
            )
            deleted += bool(answer.get("succeeded"))
        return deleted

    def pools(self) -> list[str]:
        """The pools with at least one holder."""
        return sorted({key.split("/", 1)[0] for key in self._keys()})

    def holders(
        self, pools: Sequence[str], *, stale_ok: bool = False
    ) -> tuple[dict[str, list[Holder]], bool]:
        """Each pool's holders, and whether the read is stale (no quorum: the last data
        the member had, when ``stale_ok``)."""
        try:
            return self._read(pools)[1], False
        except BudgetError:
            if not stale_ok:
                raise
            return self._read(pools, serializable=True)[1], True


def _json(answer: httpx.Response) -> Any:
    """The body, or for a streaming call (keep-alive) its first result line."""
    text = answer.text.strip()
    try:
        return json.loads(text.splitlines()[0] if text else "{}")
    except ValueError as exc:
        raise BudgetError(f"etcd answered something that is not JSON: {text[:80]!r}") from exc


def _message(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:120]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):  # the streaming shape
            return str(error.get("message", error))
        return str(body.get("message") or error or body)
    return str(body)[:120]


class EtcdSlots:
    """One node's slots on etcd, as the engine uses them: take (for an event, forced
    or not), hold (the fence before an approval), keep alive, give back."""

    def __init__(self, budget: EtcdBudget, node: str, pools: Sequence[Pool]) -> None:
        self.budget = budget
        self.node = node
        self.pools = tuple(pools)
        self.where: tuple[str, ...] = ("etcd", budget.config.prefix, node)
        self.members = frozenset(str(e).rstrip("/") for e in budget.config.endpoints)

    def take(
        self, event_id: str, event_type: str, *, force: bool, within: float | None = None
    ) -> Admission:
        manual = event_type == "manual"
        kind = "involuntary" if force and not manual else "manual" if manual else "voluntary"
        lease = lease_id(self.node, event_id or "manual")
        return self.budget.acquire(
            self.node,
            self.pools,
            lease=lease,
            kind=kind,
            event_id=event_id,
            event_type=event_type,
            force=force,
        )

    def holds(self) -> bool:
        return self.budget.holds(self.node, self.pools)

    def abandon(self, event_id: str, event_type: str) -> int:
        return self.budget.abandon(
            self.node, self.pools, lease=lease_id(self.node, event_id or "manual")
        )

    def keepalive(self, lease: str) -> bool:
        """False when the lease is gone (it expired while the sidecar was down)."""
        return self.budget.keepalive(lease) > 0

    def release(self, lease: str) -> None:
        self.budget.release(self.node, lease=lease)

    def close(self) -> None:
        self.budget.close()
