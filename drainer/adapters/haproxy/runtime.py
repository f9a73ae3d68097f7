"""The ``type: haproxy`` adapter: one LoadBalancer per HAProxy instance, via the runtime API.

Invariants:
- Each read costs the same whatever the backend's size. The node's servers are found
  once in ``show servers state`` (of the configured backend, only the server's rows
  parsed; of every backend when the node is found by address) and kept, with their ids
  and the worker PID read before them. ``state()``, ``drain()``, ``take_out()`` and
  ``put_back()`` then read one ``show stat <backend> 4 <sid>`` row per server and
  ``show info`` after them; they find the servers again (so discovery by address
  follows HAProxy's configuration) when that PID is another (a reload, which forgets
  every state set through the API and may renumber servers) or a row names another
  server or address (changed at runtime). A row whose status is DOWN or NOLB hides a
  drain, and a server tracking another may inherit its state: then the admin state is
  read from ``show servers state`` too. ``check_manual_drain()`` counts the other
  servers, so it reads the whole backend (once, and the drain after it reads no more).
- ``sessions`` never reads 0 while a worker may still hold a session to the node. A
  reload (master-worker, SIGUSR2) hands the stats socket to a new worker, while the old
  one goes on finishing its requests out of the socket's sight. So ``drain()`` and
  ``take_out()`` first remember the PID of the worker they see (``show info``) in
  ``<state_dir>/haproxy-<digest of node, name and server>.json`` (written atomically; the CLI and
  the daemon are two processes, and a restart must keep it), and a finished
  ``put_back()`` forgets it. While it is remembered, a different PID means "reloaded
  since the drain": without a master CLI the adapter cannot see into the old worker,
  so it reports at least 1 session and the core waits for its drain deadline. With
  ``masters`` (the master CLI of each instance, in the order of ``instances``) it
  counts exactly instead, every time: the server's ``scur`` summed over every worker
  the master lists (``show proc``, then ``@!<pid> show stat``), after checking that
  the worker answering the stats socket is one of them (so a master of another
  instance is an error, not a silent 0).
- ``drain()`` and ``take_out()`` never move a server backwards (a server in maint is
  not set to drain), so the core may re-assert them at any time.
- ``start_checks()`` lets HAProxy's check run during the recovery, the server in
  ``drain`` and forced DOWN (no request of any kind), so that ``put_back()`` finds it
  passed when drainer's own checks pass.
- ``put_back()`` never lets a request reach the node before HAProxy's own health check
  has passed (``rise`` times during this recovery, and its latest check). Leaving
  maint (for ``ready`` *or* ``drain``) makes HAProxy 2.6 reset a checked server's
  health to ``rise``: it is UP at once, with no check run. So a checked server leaves
  maint for ``drain`` with ``health down`` on the same CLI line, and becomes ``ready``
  on a later call, once the check has brought it back UP. A server without an enabled
  check goes straight to ``ready``: nothing could gate it.
- Instances are independent: an HA pair gives two LoadBalancers, and one unreachable
  instance raises ``TransientAdapterError`` naming it without touching the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

from pydantic import Field, ValidationInfo, field_validator, model_validator

from drainer.adapters._state import load_json, save_json
from drainer.adapters.base import AdapterConfig, AdapterContext, AdapterPlugin, LoadBalancer
from drainer.adapters.checks import Check, attempt
from drainer.adapters.haproxy.client import (
    CHECK_ENABLED,
    DRAIN_MASK,
    FORCED_DRAIN,
    FORCED_MAINT,
    MAINT_MASK,
    HAProxyClient,
    OpState,
    ServerState,
    StatRow,
    check_name,
    parse_address,
    parse_node_address,
    servers_at,
)
from drainer.errors import ConfigError, PermanentAdapterError, TransientAdapterError
from drainer.model import LBStatus, LBView, PoolView

_T = TypeVar("_T")


class HAProxyConfig(AdapterConfig):
    """One ``load_balancers`` entry of ``type: haproxy``.

    The node is either ``backend`` + ``server`` (names in HAProxy) or ``address`` (its
    IP or IP:port as ``show servers state`` shows it; every backend holding it counts).
    """

    type: Literal["haproxy"]
    instances: list[str] = Field(min_length=1)  # unix:///path or tcp://host:port; a pair = 2
    # The master CLI (`-S`) of each instance, in the order of `instances`: sessions left
    # in old workers after a reload are then counted, not assumed until the deadline.
    masters: list[str] | None = None
    backend: str | None = None
    server: str | None = None
    address: str | None = None
    connect_timeout: float = Field(default=2.0, gt=0)
    timeout: float = Field(default=5.0, gt=0)  # for the whole reply
    min_in_service: int = Field(default=1, ge=0)  # other servers left UP by a manual drain

    @field_validator("instances", "masters")
    @classmethod
    def _check_addresses(
        cls, addresses: list[str] | None, info: ValidationInfo
    ) -> list[str] | None:
        for address in addresses or ():
            _as_value_error(parse_address, address)
        if addresses is not None and len(set(addresses)) != len(addresses):
            raise ValueError(f"{info.field_name} are listed twice: {addresses}")
        return addresses

    @field_validator("backend", "server")
    @classmethod
    def _check_name(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is not None:
            _as_value_error(partial(check_name, str(info.field_name)), name)
        return name

    @field_validator("address")
    @classmethod
    def _check_address(cls, address: str | None) -> str | None:
        if address is not None:
            _as_value_error(parse_node_address, address)
        return address

    @model_validator(mode="after")
    def _one_master_per_instance(self) -> Self:
        if self.masters is not None and len(self.masters) != len(self.instances):
            raise ValueError(
                f"`masters` needs one master CLI per instance, in the order of `instances`:"
                f" {len(self.instances)} instance(s), {len(self.masters)} master(s)"
            )
        return self

    @model_validator(mode="after")
    def _one_way_to_name_the_node(self) -> Self:
        by_name = self.backend is not None or self.server is not None
        if self.address is not None and by_name:
            raise ValueError("set either `address` or `backend` + `server`, not both")
        if self.address is None and (self.backend is None or self.server is None):
            raise ValueError(
                "set `backend` and `server` (names in HAProxy) or `address` (the node's IP"
                " or IP:port)"
            )
        return self


def _as_value_error(parse: Callable[[str], _T], text: str) -> _T:
    """Run a drainer parser in a pydantic validator, which reports ValueError only."""
    try:
        return parse(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc


def in_service_count(
    states: Iterable[ServerState], backend: str, *, excluding: Collection[str] = ()
) -> int:
    """How many servers of ``backend`` get new connections, leaving out ``excluding``."""
    return sum(
        1 for s in states if s.backend == backend and s.server not in excluding and s.in_service
    )


def put_back_step(s: ServerState) -> Literal["recheck", "ready", "wait", "done"]:
    """What ``put_back()`` does next for one server; only "ready" and "done" finish it."""
    if s.forced_maint:  # leaving maint skips the check: gate it with `health down` first
        return "recheck" if s.checked else "ready"
    if s.forced_drain:  # drained: ready once HAProxy's check says UP (or there is none)
        return "ready" if s.up or not s.checked else "wait"
    if s.maint or s.drain:  # inherited from a tracked server: not ours to clear
        return "wait"
    return "done"


class HAProxyLoadBalancer(LoadBalancer):
    """The node's servers on one HAProxy instance."""

    def __init__(
        self,
        *,
        name: str,
        client: HAProxyClient,
        config: HAProxyConfig,
        node: str,
        state_dir: Path,
        master: HAProxyClient | None = None,
    ) -> None:
        self.name = name
        self._client = client
        self._config = config
        self._node = node
        self._master = master
        # One file per node and server: under `drainer serve` several nodes share an
        # instance (and its name) and must never erase each other's record.
        identity = "\0".join(
            [node, name, config.backend or "", config.server or "", config.address or ""]
        )
        digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
        self._worker_path = state_dir / f"haproxy-{digest}.json"
        self._passed_path = state_dir / f"haproxy-{digest}-passed.json"  # see start_checks
        self._found: tuple[int, list[ServerState]] | None = None  # see _read_turn

    def state(self) -> LBView:
        mine, rows, now = self._read_turn()
        pairs = list(zip(mine, rows, strict=True))
        if any(_admin_from_status(r.status) is None for r in rows):
            # DOWN or NOLB: the status hides a drain, the admin bits tell (rare: the
            # node's server down while not in maint, e.g. waiting for HAProxy's check)
            now_state = {(s.backend, s.server): s for s in self._find()[1]}
            pairs = [(now_state.get((s.backend, s.server), s), r) for s, r in pairs]
        flags = [_admin_from_status(r.status) or (s.maint, s.drain) for s, r in pairs]
        if all(maint for maint, _ in flags):
            status = LBStatus.OUT
        elif all(maint or drain for maint, drain in flags):
            status = LBStatus.DRAINING
        else:
            status = LBStatus.IN_SERVICE
        detail = ", ".join(
            f"{s.backend}/{s.server} {r.status} scur={r.scur} check={r.check_status or '-'}"
            for s, r in pairs
        )
        sessions = sum(r.scur for r in rows)
        if self._master is not None:
            sessions, old = self._sessions_in_every_worker(self._master, mine, answering=now)
            detail += "".join(f"; old worker {pid} scur={n}" for pid, n in old.items() if n)
        elif (drained_in := self._remembered_worker()) is not None and now != drained_in:
            # `now` was read after the rows: if the drain's worker still answered then,
            # no reload came between the drain and the reads (a socket never goes back
            # to an old worker).
            sessions = max(sessions, 1)
            detail += (
                f"; reloaded since the drain (worker {drained_in}, now {now}):"
                " an old worker may still serve it"
            )
        return LBView(status=status, sessions=sessions, detail=detail)

    def _read_turn(self) -> tuple[list[ServerState], list[StatRow], int]:
        """The node's servers and their ``show stat`` rows, one row per server, and the
        worker PID read after them. The servers (names, ids) are those found at the last
        ``show servers state`` read; they are found again when the PID read after the
        rows is not the one read before that (a reload: ids may change), or when a row
        does not name the server found (a server deleted or readdressed at runtime)."""
        for _ in range(2):
            pid, mine = self._found or self._find()
            read = self._rows_if_same(pid, mine)
            if read is not None:
                return mine, *read
            self._found = None
        where = self._client.address
        raise TransientAdapterError(
            f"{where} changed while it was read (reloaded, or servers changed at runtime);"
            " reading again next turn"
        )

    def _rows_if_same(
        self, pid: int, mine: list[ServerState], client: HAProxyClient | None = None
    ) -> tuple[list[StatRow], int] | None:
        """The ``show stat`` row of each server of ``mine`` and the worker PID read after
        them (through ``client``, by default this one); None if that PID is not ``pid``
        or a row does not name its server."""
        client = client or self._client
        rows = [self._row(s, client) for s in mine]
        now = client.worker_pid()
        if now != pid or any(
            r is None or not self._same(s, r) for s, r in zip(mine, rows, strict=True)
        ):
            return None
        return [r for r in rows if r is not None], now

    def _row(self, s: ServerState, client: HAProxyClient | None = None) -> StatRow | None:
        rows = (client or self._client).stat(s.backend, server_id=s.server_id)
        return rows[0] if len(rows) == 1 else None

    def _same(self, s: ServerState, r: StatRow) -> bool:
        if (r.backend, r.server) != (s.backend, s.server):
            return False
        if self._config.address is None or not r.address:
            return True
        return bool(servers_at([replace(s, address=_host(r.address))], self._config.address))

    def drain(self) -> None:
        mine = self._servers()
        self._remember_worker()  # before acting: see the module docstring
        self._forget_passed()
        for s in mine:
            if not (s.forced_maint or s.forced_drain):
                self._client.set_state(s.backend, s.server, "drain")

    def take_out(self, *, kill: bool) -> None:
        mine = self._servers()
        self._remember_worker()
        self._forget_passed()
        for s in mine:
            if not s.forced_maint:
                self._client.set_state(s.backend, s.server, "maint")
        if kill:
            for s in mine:
                self._client.shutdown_sessions(s.backend, s.server)

    def put_back(self) -> bool:
        done = True
        for s in self._servers():
            step = put_back_step(s)
            if step == "wait" and s.forced_drain and self._still_passing(s):
                self._client.ready_now(s.backend, s.server)
                step = "done"
            elif step == "recheck":
                self._client.set_state(s.backend, s.server, "drain", recheck=True)
            elif step == "ready":
                self._client.set_state(s.backend, s.server, "ready")
            done = done and step in ("ready", "done")
        if done:
            self._forget_passed()
            self._forget_worker()
        return done

    def start_checks(self) -> bool:
        """HAProxy's own check of the node's servers runs while drainer's do, with no
        request sent to the node. A checked server in maint goes to ``drain`` with
        ``health down`` (maint stops checks): a DOWN server gets no request at all, not
        even a persistent one (cookie, stick table), and HAProxy checks it. Once its
        check passed ``rise`` times HAProxy marks it UP, and an UP server in ``drain``
        takes persistent requests: since this is called only while drainer's own
        checks have not agreed yet, such a server is set DOWN again (its check goes on;
        ``put_back`` makes it ``ready`` once both agree). True when every server is
        checked so; False leaves the node in maint (no check configured).

        Such a server is noted (``<state file>-passed.json``, with the worker PID): at
        the put-back, if its latest check still passes, it is made UP and ``ready`` at
        once rather than after ``rise`` more checks. Any drain or take-out forgets it."""
        checking = True
        mine = self._servers()
        if passed := [s for s in mine if s.checked and s.forced_drain and s.up]:
            self._note_passed(passed)  # before the act: put_back may rely on it
        for s in mine:
            if not s.checked or not (s.forced_maint or s.forced_drain):
                checking = False
            elif s.forced_maint or s.up:
                self._client.set_state(s.backend, s.server, "drain", recheck=True)
        return checking

    def preflight(self) -> list[Check]:
        """The instance answers, the node's server is there, the socket is ``level admin``
        (and each master CLI, when configured, is this instance's). Changes nothing."""
        answers = attempt(f"{self.name}: answers", lambda: f"worker {self._client.worker_pid()}")
        if not answers.ok:
            return [answers]
        found: list[ServerState] = []

        def server() -> str:
            found.extend(self._servers())
            return ", ".join(f"{s.backend}/{s.server}" for s in found)

        checks = [answers, attempt(f"{self.name}: server", server)]
        if found:
            checks.append(attempt(f"{self.name}: level admin", lambda: self._check_admin(found)))
        if self._master is not None:
            master = self._master

            def masters() -> str:
                self._sessions_in_every_worker(master, found)
                return f"{master.address} lists worker {self._client.worker_pid()}"

            checks.append(attempt(f"{self.name}: master CLI", masters))
        return checks

    def _check_admin(self, mine: list[ServerState]) -> str:
        backend = mine[0].backend
        taken = {s.server for s in self._client.servers_state(backend)}
        absent = next(
            name for i in range(len(taken) + 1) if (name := f"drainer-preflight-{i}") not in taken
        )
        self._client.check_admin(backend, absent)
        return f"{self._client.address} accepts `set server` (level admin)"

    def pools(self) -> list[PoolView]:
        """Each backend holding the node: its servers, and the others that serve."""
        states = self._client.servers_state(self._config.backend)
        mine = self._select(states)
        out = []
        for backend in sorted({s.backend for s in mine}):
            own = {s.server for s in mine if s.backend == backend}
            size = sum(1 for s in states if s.backend == backend)
            out.append(PoolView(backend, size, in_service_count(states, backend, excluding=own)))
        return out

    def check_manual_drain(self) -> str | None:
        """None if draining the node leaves ``min_in_service`` servers in each backend.

        Otherwise a refusal naming each backend that would fall short, and its counts.
        """
        pid = self._client.worker_pid()
        states = self._client.servers_state(self._config.backend)
        mine = self._select(states)
        self._found = (pid, mine)  # the drain that follows need not read them again
        refusals = []
        for backend in sorted({s.backend for s in mine}):
            own = {s.server for s in mine if s.backend == backend}
            left = in_service_count(states, backend, excluding=own)
            if left < self._config.min_in_service:
                refusals.append(
                    f"backend {backend} would keep {left} other server(s) in service,"
                    f" min_in_service is {self._config.min_in_service}"
                )
        if not refusals:
            return None
        return f"refusing to drain {self._node}: " + "; ".join(refusals)

    def _sessions_in_every_worker(
        self, master: HAProxyClient, mine: list[ServerState], *, answering: int | None = None
    ) -> tuple[int, dict[int, int]]:
        """The node's sessions summed over every worker ``master`` lists; and per old worker.

        Each worker is asked for the node's rows by server id; a worker started from
        another configuration (an old one, after a reload) may give the id to another
        server or none, and is then asked for its whole backend."""
        if answering is None:
            answering = self._client.worker_pid()
        processes = master.processes()
        if answering not in processes.all:
            raise PermanentAdapterError(
                f"{master.address} is not the master of {self._client.address}: it does not"
                f" list worker {answering}, which answers there (`masters` must follow the"
                " order of `instances`)"
            )
        counts = {pid: self._sessions_in(master, pid, mine) for pid in processes.all}
        old = {pid: counts[pid] for pid in processes.old_workers}
        return sum(counts.values()), old

    def _sessions_in(self, master: HAProxyClient, pid: int, mine: list[ServerState]) -> int:
        wanted = {(s.backend, s.server) for s in mine}
        rows = [
            r
            for s in mine
            for r in master.stat(s.backend, worker=pid, server_id=s.server_id)
            if (r.backend, r.server) == (s.backend, s.server)
        ]
        if len(rows) < len(mine):  # exited (no rows at all), or ids differ there
            every = master.stat(self._config.backend, worker=pid)
            rows = [r for r in every if (r.backend, r.server) in wanted]
        return sum(r.scur for r in rows)

    def _remembered_worker(self) -> int | None:
        path = self._worker_path
        data = load_json(path)
        if data is None:
            return None
        pid = data.get("worker_pid") if isinstance(data, dict) else None
        if not isinstance(pid, int):
            raise PermanentAdapterError(f"{path} has no worker_pid; delete it")
        return pid

    def _remember_worker(self) -> None:
        """Keep the first PID seen since the last put-back: a re-asserted drain (after a
        reload) must not replace the worker the drain began in."""
        if self._remembered_worker() is not None:
            return
        data = {"lb": self.name, "worker_pid": self._client.worker_pid()}
        save_json(self._worker_path, data)

    def _forget_worker(self) -> None:
        _remove(self._worker_path)

    def _note_passed(self, servers: list[ServerState]) -> None:
        """HAProxy's check brought these servers UP during this recovery (then set DOWN
        again while drainer's own checks had not agreed)."""
        pid, names = self._passed()
        now = self._client.worker_pid()
        names = (names if pid == now else set()) | {f"{s.backend}/{s.server}" for s in servers}
        save_json(self._passed_path, {"worker_pid": now, "servers": sorted(names)})

    def _passed(self) -> tuple[int | None, set[str]]:
        data = load_json(self._passed_path)
        if not isinstance(data, dict):
            return None, set()
        pid, names = data.get("worker_pid"), data.get("servers")
        if not isinstance(pid, int) or not isinstance(names, list):
            return None, set()
        return pid, {str(n) for n in names}

    def _still_passing(self, s: ServerState) -> bool:
        """HAProxy marked ``s`` UP during this recovery (in the same worker: a reload
        forgets health) and its latest check passed (one that failed since, a reboot
        for one, makes the put-back wait for ``rise`` passes again)."""
        pid, names = self._passed()
        now = self._client.unshared()  # it acts on it: never a shared read
        if f"{s.backend}/{s.server}" not in names or pid != now.worker_pid():
            return False
        row = self._row(s, now)
        return row is not None and row.check_status in ("L4OK", "L6OK", "L7OK")

    def _forget_passed(self) -> None:
        _remove(self._passed_path)

    def _servers(self) -> list[ServerState]:
        """The node's servers with their admin state now, for acting on them. From one
        ``show stat`` row each, by the ids found before, when every row tells that state
        (``admin_from_row``); else from ``show servers state`` (nothing found yet, a
        reload, a changed row, a server DOWN or NOLB, one following a tracked server)."""
        if self._found is not None:
            pid, mine = self._found
            read = self._rows_if_same(pid, mine, self._client.unshared())  # read anew
            if read is not None:
                now = [admin_from_row(s, r) for s, r in zip(mine, read[0], strict=True)]
                if all(n is not None for n in now):
                    return [n for n in now if n is not None]
        return self._find()[1]

    def _find(self) -> tuple[int, list[ServerState]]:
        """The node's servers as ``show servers state`` has them now, and the worker PID
        read before them; kept for the turns that follow (``_read_turn``)."""
        pid = self._client.worker_pid()
        config = self._config
        mine = self._select(self._client.servers_state(config.backend, server=config.server))
        self._found = (pid, mine)
        return pid, mine

    def _select(self, states: list[ServerState]) -> list[ServerState]:
        config, where = self._config, self._client.address
        if config.address is not None:
            found = servers_at(states, config.address)
            if not found:
                raise PermanentAdapterError(
                    f"no server with address {config.address} in any backend on {where}"
                )
            return found
        found = [s for s in states if s.server == config.server]
        if not found:
            raise PermanentAdapterError(
                f"server {config.server} not found in backend {config.backend} on {where}"
            )
        return found


def admin_from_row(s: ServerState, r: StatRow) -> ServerState | None:
    """``s`` with the admin, operational and check state its ``show stat`` row ``r``
    shows now, or None where the row cannot tell. HAProxy 2.6 shows MAINT for a forced
    maintenance and DRAIN for a drained server that is up, but DOWN or NOLB for a drained
    one that is not; a server that tracks another may hold that one's maintenance or
    drain as its own (inherited bits), and MAINT (resolution) is DNS's, not forced
    (checked on 2.6.12)."""
    if r.tracked:
        return None
    if r.status == "MAINT":
        admin, op = FORCED_MAINT, OpState.STOPPED
    elif r.status.startswith("DRAIN"):
        admin, op = FORCED_DRAIN, OpState.RUNNING
    elif r.status.startswith(("UP", "no check")):
        admin, op = 0, OpState.RUNNING
    else:
        return None
    others = s.admin_state & ~(MAINT_MASK | DRAIN_MASK)  # e.g. 0x04, see the client
    check = s.check_state | CHECK_ENABLED if r.checked else s.check_state & ~CHECK_ENABLED
    return replace(s, admin_state=others | admin, op_state=op, check_state=check)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise TransientAdapterError(f"cannot remove {path}: {exc.strerror}") from exc


def _admin_from_status(status: str) -> tuple[bool, bool] | None:
    """(maint, drain) as ``show stat``'s status shows them, or None when it cannot: HAProxy
    2.6 writes MAINT for any maintenance and DRAIN for a drained server that is up, but
    DOWN or NOLB for a drained one that is not."""
    if status.startswith("MAINT"):
        return True, False
    if status.startswith("DRAIN"):
        return False, True
    if status.startswith(("UP", "no check")):
        return False, False
    return None


def _host(addr: str) -> str:
    """The IP of ``show stat``'s ``addr`` column (``10.0.0.4:80``, ``[::1]:80``)."""
    host = addr.rpartition(":")[0] if addr.count(":") == 1 or addr.startswith("[") else addr
    return host.removeprefix("[").removesuffix("]")


def same_server(one: HAProxyConfig, other: HAProxyConfig) -> bool:
    """Whether two entries name the same server: by name, or by address (an address
    without a port is every port of that IP)."""
    if one.address is not None and other.address is not None:
        ip, port = parse_node_address(one.address)
        other_ip, other_port = parse_node_address(other.address)
        return bool(ip == other_ip and (port is None or other_port in (None, port)))
    return (one.backend, one.server, one.address) == (other.backend, other.server, other.address)


def create(
    config: HAProxyConfig,
    context: AdapterContext,
    *,
    client: Callable[..., HAProxyClient] = HAProxyClient,
) -> list[LoadBalancer]:
    """One LoadBalancer per instance, named ``<name or haproxy>@<address>``; ``client``
    makes each instance's client (``drainer serve`` passes one shared by its nodes)."""
    timeouts = {"connect_timeout": config.connect_timeout, "timeout": config.timeout}
    return [
        HAProxyLoadBalancer(
            name=f"{config.name or 'haproxy'}@{instance}",
            client=client(instance, **timeouts),
            config=config,
            node=context.node,
            state_dir=context.state_dir,
            master=HAProxyClient(config.masters[i], **timeouts) if config.masters else None,
        )
        for i, instance in enumerate(config.instances)
    ]


PLUGIN = AdapterPlugin(
    config_model=HAProxyConfig,
    create=create,
    node_keys=("backend", "server", "address"),
    same_server=same_server,
)
