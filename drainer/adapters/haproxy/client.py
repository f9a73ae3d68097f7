"""A small client for HAProxy's runtime API (the stats socket), stdlib sockets only.

Invariants:
- One command per connection: send one line, half-close, read until EOF. A
  non-interactive CLI session closes after its reply, and some 2.6 error replies lack
  the blank-line delimiter, so EOF is the only reliable end of a reply.
- Every call is bounded: ``connect_timeout`` for the connection, ``timeout`` for the
  whole reply (a stuck CLI, or a wrong port that accepts and never answers).
- Backend and server names are checked against HAProxy's own name alphabet
  (``[A-Za-z0-9._:-]+``) before anything is sent: ``;`` and newlines separate CLI
  commands, so an unchecked name could run a second command. A bad name is a
  ``ConfigError``: names come from configuration or the command line, and the CLI
  prints a ``DrainerError`` instead of a traceback.
- Replies are parsed by their header line, never by column position.
- Errors: unreachable, timed out or closed without a reply -> ``TransientAdapterError``;
  a non-empty reply to ``set``/``shutdown`` (success is one empty line), or a ``show``
  reply without its header, or a socket file we may not open -> ``PermanentAdapterError``.
  Both name the instance (its address).

The master CLI (``-S``, master-worker mode) is driven the same way, one command per
connection: it answers but keeps the connection open until the client half-closes it
(measured on 2.6.12: without the half-close a read waits for its timeout; with it, EOF
follows the reply at once). ``processes()`` reads its ``show proc``; ``stat(...,
worker=pid)`` asks one worker through it with the ``@!<pid>`` prefix, old workers left
by a reload included. A worker that has exited since is refused with "Can't find the
target PID": it has no sessions left, so that reads as no rows. For a few milliseconds
while a worker exits, the master answers nothing or "Can't connect to the target CLI!"
instead, even while ``show proc`` still lists it: that is a ``TransientAdapterError``
(ask again), never a guess.

Admin state bits, from HAProxy's ``include/haproxy/server-t.h``: maintenance is
``SRV_ADMF_MAINT = 0x23`` (0x01 forced, 0x02 inherited, 0x20 DNS resolution), drain is
``0x18`` (0x08 forced, 0x10 inherited). 0x04 (``disabled`` in the configuration) stays
set after ``set server ... state ready`` while the server is UP and serving (checked on
2.6.12), and 0x40 only says the FQDN was set from the CLI: neither is maintenance.
"""

from __future__ import annotations

import csv
import ipaddress
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from functools import partial
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from drainer.errors import ConfigError, PermanentAdapterError, TransientAdapterError

AdminState = Literal["ready", "drain", "maint"]

FORCED_MAINT = 0x01
MAINT_MASK = 0x01 | 0x02 | 0x20
FORCED_DRAIN = 0x08
DRAIN_MASK = 0x08 | 0x10
CHECK_ENABLED = 0x04  # CHK_ST_ENABLED in srv_check_state: the health check runs

_NAME = re.compile(r"[A-Za-z0-9._:-]+")
_ADMIN_STATES = ("ready", "drain", "maint")
_Parsed = TypeVar("_Parsed")


class OpState(IntEnum):
    """``srv_op_state``: what HAProxy's checks make of the server."""

    STOPPED = 0
    STARTING = 1
    RUNNING = 2
    STOPPING = 3


@dataclass(frozen=True)
class ServerState:
    """One row of ``show servers state``."""

    backend: str
    server: str
    address: str
    port: int | None
    op_state: int
    admin_state: int
    check_state: int
    server_id: int = field(default=0, compare=False)  # srv_id: addresses it in `show stat`

    @property
    def maint(self) -> bool:
        return bool(self.admin_state & MAINT_MASK)

    @property
    def forced_maint(self) -> bool:
        return bool(self.admin_state & FORCED_MAINT)

    @property
    def drain(self) -> bool:
        return bool(self.admin_state & DRAIN_MASK)

    @property
    def forced_drain(self) -> bool:
        return bool(self.admin_state & FORCED_DRAIN)

    @property
    def checked(self) -> bool:
        """A health check is configured and enabled (it is paused, not off, in maint)."""
        return bool(self.check_state & CHECK_ENABLED)

    @property
    def up(self) -> bool:
        return self.op_state in (OpState.STARTING, OpState.RUNNING)

    @property
    def in_service(self) -> bool:
        """Gets new connections: up, neither in maintenance nor draining."""
        return self.up and not self.maint and not self.drain


@dataclass(frozen=True)
class StatRow:
    """The columns drainer uses from one server row of ``show stat``."""

    backend: str
    server: str
    status: str  # UP, DOWN, DRAIN, MAINT, "no check", "UP 1/3", "DRAIN (agent)"...
    scur: int  # current sessions
    check_status: str  # L4OK, L7OK, L4CON...; empty when not checked or in maint
    server_id: int = field(default=0, compare=False)  # sid
    address: str = field(default="", compare=False)  # addr: "10.0.0.4:80" (empty before 1.9)
    # tracked: "backend/server" whose state this one follows (its maint and drain too)
    tracked: str = field(default="", compare=False)
    # chkfail is empty unless a health check is enabled, in maint too (unlike check_status)
    checked: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Processes:
    """The workers the master CLI lists in ``show proc``."""

    workers: tuple[int, ...]  # serving now (one since 2.5)
    old_workers: tuple[int, ...]  # left by reloads, finishing their connections

    @property
    def all(self) -> tuple[int, ...]:
        return self.workers + self.old_workers


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if HAProxy accepts it as a backend/server name, else ConfigError."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"invalid HAProxy {kind} name {name!r}: allowed are [A-Za-z0-9._:-]")
    return name


def parse_address(address: str) -> tuple[str, int] | str:
    """Parse ``tcp://host:port`` into (host, port) and ``unix:///path`` into the path."""
    expected = "expected unix:///path/to/admin.sock or tcp://host:port"
    try:
        url = urlsplit(address)
        port = url.port
    except ValueError as exc:
        raise ConfigError(f"invalid HAProxy runtime API address {address!r}: {exc}") from exc
    if url.scheme == "unix" and not url.netloc and url.path.startswith("/"):
        if url.query or url.fragment:
            raise ConfigError(f"invalid HAProxy runtime API address {address!r}: {expected}")
        return url.path
    if url.scheme == "tcp" and url.hostname and port and url.path == "":
        return url.hostname, port
    raise ConfigError(f"invalid HAProxy runtime API address {address!r}: {expected}")


def parse_node_address(
    address: str,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]:
    """Parse a node address: ``10.0.0.4``, ``10.0.0.4:8080``, ``::1`` or ``[::1]:8080``."""
    host, port = address, None
    if address.count(":") == 1 or address.startswith("["):
        host, sep, port_text = address.rpartition(":")
        if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"invalid node address {address!r}: expected IP or IP:port")
        host, port = host.removeprefix("[").removesuffix("]"), int(port_text)
    try:
        return ipaddress.ip_address(host), port
    except ValueError as exc:
        raise ConfigError(f"invalid node address {address!r}: expected IP or IP:port") from exc


def parse_servers_state(text: str, *, server: str | None = None) -> list[ServerState]:
    """Parse a ``show servers state`` reply by its ``# be_id be_name ...`` header line;
    with ``server``, only the rows of servers of that name."""
    lines = text.splitlines()
    header = _header_index(lines)
    names = lines[header][2:].split()
    at = {column: i for i, column in enumerate(names)}
    rows = []
    for line in lines[header + 1 :]:
        if server is not None and f" {server} " not in line:
            continue  # cheap: most rows of a large backend are other servers
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names):
            raise ValueError(f"{len(fields)} fields for {len(names)} columns: {line!r}")
        if server is not None and fields[at["srv_name"]] != server:
            continue
        port = fields[at["srv_port"]]
        rows.append(
            ServerState(
                backend=fields[at["be_name"]],
                server=fields[at["srv_name"]],
                address=fields[at["srv_addr"]],
                port=int(port) if port.isdigit() else None,
                op_state=int(fields[at["srv_op_state"]]),
                admin_state=int(fields[at["srv_admin_state"]]),
                check_state=int(fields[at["srv_check_state"]]),
                server_id=int(fields[at["srv_id"]]),
            )
        )
    return rows


def parse_stat(text: str) -> list[StatRow]:
    """Parse a ``show stat`` CSV reply by its ``# pxname,svname,...`` header; servers only."""
    lines = text.splitlines()
    header = _header_index(lines)
    names = lines[header][2:].split(",")
    at = {
        name: names.index(name)
        for name in ("pxname", "svname", "status", "scur", "check_status", "sid")
    }
    optional = {name: names.index(name) for name in ("addr", "tracked", "chkfail") if name in names}
    rows = []
    for fields in csv.reader(line for line in lines[header + 1 :] if line.strip()):
        fields += [""] * (len(names) - len(fields))
        if fields[at["svname"]] in ("FRONTEND", "BACKEND"):
            continue
        extra = {name: fields[i] for name, i in optional.items()}
        rows.append(
            StatRow(
                backend=fields[at["pxname"]],
                server=fields[at["svname"]],
                status=fields[at["status"]],
                scur=int(fields[at["scur"]] or 0),
                check_status=fields[at["check_status"]],
                server_id=int(fields[at["sid"]] or 0),
                address=extra.get("addr", ""),
                tracked=extra.get("tracked", ""),
                checked=bool(extra.get("chkfail")),
            )
        )
    return rows


def parse_info_pid(text: str) -> int:
    """The worker's PID from a ``show info`` reply (``Pid: 1234``)."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == "Pid":
            return int(value)
    raise ValueError("no 'Pid:' line")


def parse_proc(text: str) -> Processes:
    """Parse the master CLI's ``show proc``: a ``#<PID> <type> ...`` header, then sections
    ``# workers``, ``# old workers`` and ``# programs`` of lines starting with a PID."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("#<PID>"):
        raise ValueError("no '#<PID> ...' header line")
    sections: dict[str, list[int]] = {"workers": [], "old workers": []}
    section = ""
    for line in lines[1:]:
        if line.startswith("#"):
            section = line[1:].strip()
        elif line.strip() and section in sections:
            sections[section].append(int(line.split()[0]))
    return Processes(workers=tuple(sections["workers"]), old_workers=tuple(sections["old workers"]))


def servers_at(states: list[ServerState], address: str) -> list[ServerState]:
    """The rows of ``states`` whose address is ``address`` (IP, or IP:port)."""
    ip, port = parse_node_address(address)
    found = []
    for state in states:
        try:
            same_ip = ipaddress.ip_address(state.address) == ip
        except ValueError:  # a server whose FQDN did not resolve shows no IP
            continue
        if same_ip and (port is None or state.port == port):
            found.append(state)
    return found


def _has_header(reply: str) -> bool:
    return any(line.startswith("# ") for line in reply.splitlines())


def _header_index(lines: list[str]) -> int:
    """The header is the first line starting with ``# ``; error replies have none."""
    for i, line in enumerate(lines):
        if line.startswith("# "):
            return i
    raise ValueError("no '# ...' header line")


class HAProxyClient:
    """The runtime API of one HAProxy instance, one command per connection."""

    def __init__(self, address: str, *, connect_timeout: float = 2.0, timeout: float = 5.0):
        self._target = parse_address(address)
        self.address = address
        self.connect_timeout = connect_timeout
        self.timeout = timeout

    def unshared(self) -> HAProxyClient:
        """This client for a caller about to act on what it reads: never a read shared
        with other callers (``drainer serve``'s ``SharedReads``); here, itself."""
        return self

    def set_state(
        self, backend: str, server: str, state: AdminState, *, recheck: bool = False
    ) -> None:
        """``set server B/S state ...``; with ``recheck`` also ``health down`` on the same line.

        Leaving maint marks a checked server UP at once, with no check run (HAProxy
        resets its health to ``rise``). ``recheck`` forces it DOWN so that HAProxy's own
        check must pass ``rise`` times before the server takes traffic again.
        """
        if state not in _ADMIN_STATES:
            raise ValueError(f"state must be one of {_ADMIN_STATES}, not {state!r}")
        target = self._server(backend, server)
        command = f"set server {target} state {state}"
        if recheck:
            command += f"; set server {target} health down"
        self._expect_empty(command, backend=backend, server=server)

    def ready_now(self, backend: str, server: str) -> None:
        """``health up`` then ``state ready`` on one line: serving at once, without a
        new ``rise`` of checks (for a server whose check has just passed them)."""
        target = self._server(backend, server)
        command = f"set server {target} health up; set server {target} state ready"
        self._expect_empty(command, backend=backend, server=server)

    def shutdown_sessions(self, backend: str, server: str) -> None:
        """Close every session still open to the server (their clients see errors)."""
        target = self._server(backend, server)
        self._expect_empty(f"shutdown sessions server {target}", backend=backend, server=server)

    def servers_state(
        self, backend: str | None = None, *, server: str | None = None
    ) -> list[ServerState]:
        """Every server of ``backend`` (or of all backends) as ``show servers state`` has
        it; with ``server``, only those of that name."""
        command = "show servers state"
        if backend is not None:
            command += " " + check_name("backend", backend)
        reply = self._send(command)
        if not _has_header(reply):
            raise self._refusal(reply, command=command, backend=backend, server=None)
        return self._parsed(partial(parse_servers_state, server=server), reply, command)

    def stat(
        self,
        backend: str | None = None,
        *,
        worker: int | None = None,
        server_id: int | None = None,
    ) -> list[StatRow]:
        """Server rows of ``show stat`` for ``backend`` (or all backends).

        With ``server_id`` (and a backend), only that server's row, or none if the
        backend has no such id: ``show stat <backend> 4 <sid>`` (2.6 takes a numeric
        sid only; a name or an unknown id gives the header alone). With ``worker``, this
        client is a master CLI and asks that worker (``@!<pid>``); a worker that has
        exited has no rows.
        """
        proxy = "-1" if backend is None else check_name("backend", backend)
        sid = -1 if server_id is None or backend is None else int(server_id)
        command = f"show stat {proxy} 4 {sid}"  # type 4: servers only
        if worker is not None:
            command = f"@!{int(worker)} {command}"
        reply = self._send(command)
        if worker is not None and reply.startswith("Can't find the target PID"):
            return []
        if worker is not None and reply.startswith("Can't connect to the target CLI"):
            raise TransientAdapterError(
                f"{self.address} could not reach worker {worker} for `{command}`"
                " (it may be exiting)"
            )
        if not _has_header(reply):
            raise self._refusal(reply, command=command, backend=backend, server=None)
        return self._parsed(parse_stat, reply, command)

    def worker_pid(self) -> int:
        """The PID of the worker answering on this socket (``show info``); a reload
        hands the socket to a new worker, so the PID changes."""
        command = "show info"
        reply = self._send(command)
        if not any(line.startswith("Pid:") for line in reply.splitlines()):
            raise self._refusal(reply, command=command, backend=None, server=None)
        return self._parsed(parse_info_pid, reply, command)

    def processes(self) -> Processes:
        """The current and old workers, from ``show proc`` on a master CLI."""
        command = "show proc"
        reply = self._send(command)
        if not reply.startswith("#<PID>"):
            first = (reply.strip().splitlines() or ["an empty reply"])[0]
            raise PermanentAdapterError(
                f"{self.address} is not a master CLI: `{command}` got {first!r}"
            )
        return self._parsed(parse_proc, reply, command)

    def check_admin(self, backend: str, absent: str) -> None:
        """Raise PermanentAdapterError unless this socket may change servers (``level admin``).

        Sends ``set server <backend>/<absent> state ready`` for a server name the caller
        knows is not in ``backend``, so nothing can change: HAProxy 2.6 checks the level
        before it looks the server up, so a ``level user`` or ``operator`` socket answers
        "Permission denied" and a ``level admin`` one "No such server." (both checked on
        2.6.12).
        """
        command = f"set server {self._server(backend, absent)} state ready"
        reply = self._send(command)
        first = (reply.strip().splitlines() or [""])[0]
        if first.startswith("No such server"):
            return
        if first.startswith("Permission denied"):
            raise PermanentAdapterError(
                f"{self.address} is not a `level admin` socket: HAProxy answered"
                ' `set server` with "Permission denied", so drainer could read the server'
                " but never drain it; add `level admin` to this `stats socket` line"
                " and reload HAProxy"
            )
        raise self._refusal(reply, command=command, backend=backend, server=absent)

    def find_by_address(self, address: str) -> list[tuple[str, str]]:
        """Every (backend, server) whose address is ``address`` (IP, or IP:port)."""
        return [(s.backend, s.server) for s in servers_at(self.servers_state(), address)]

    def _server(self, backend: str, server: str) -> str:
        return f"{check_name('backend', backend)}/{check_name('server', server)}"

    def _expect_empty(self, command: str, *, backend: str, server: str) -> None:
        reply = self._send(command)
        if reply.strip():
            raise self._refusal(reply, command=command, backend=backend, server=server)

    def _parsed(self, parse: Callable[[str], _Parsed], reply: str, command: str) -> _Parsed:
        try:
            return parse(reply)
        except (KeyError, ValueError) as exc:
            raise PermanentAdapterError(
                f"{self.address} answered `{command}` in an unexpected format: {exc}"
            ) from exc

    def _refusal(
        self, reply: str, *, command: str, backend: str | None, server: str | None
    ) -> PermanentAdapterError:
        first = (reply.strip().splitlines() or ["an empty reply"])[0]
        if first.startswith("No such server"):
            message = f"server {server} not found in backend {backend} on {self.address}"
        elif first.startswith(("No such backend", "Can't find backend", "No such proxy")):
            message = f"backend {backend} not found on {self.address}"
        elif first.startswith("Permission denied"):
            message = (
                f"{self.address} refused `{command}`: permission denied"
                " (the stats socket needs `level admin`)"
            )
        else:
            message = f"{self.address} refused `{command}`: {first}"
        return PermanentAdapterError(message)

    def _send(self, command: str) -> str:
        chunks: list[bytes] = []
        try:
            with self._connect() as sock:
                deadline = time.monotonic() + self.timeout
                sock.settimeout(self.timeout)
                sock.sendall(command.encode() + b"\n")
                sock.shutdown(socket.SHUT_WR)
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                    sock.settimeout(max(deadline - time.monotonic(), 0.001))
        except TimeoutError as exc:
            raise TransientAdapterError(
                f"{self.address} did not answer `{command}` in time"
                f" (connect {self.connect_timeout}s, read {self.timeout}s)"
            ) from exc
        except PermissionError as exc:
            raise PermanentAdapterError(
                f"cannot open {self.address}: {exc.strerror}"
                " (drainer needs read and write access to the stats socket)"
            ) from exc
        except OSError as exc:
            raise TransientAdapterError(
                f"{self.address} unreachable: {exc.strerror or exc}"
            ) from exc
        if not chunks:
            raise TransientAdapterError(
                f"{self.address} closed the connection without answering `{command}`"
            )
        return b"".join(chunks).decode("utf-8", "replace")

    def _connect(self) -> socket.socket:
        if isinstance(self._target, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.connect_timeout)
                sock.connect(self._target)
            except BaseException:
                sock.close()
                raise
            return sock
        return socket.create_connection(self._target, timeout=self.connect_timeout)
