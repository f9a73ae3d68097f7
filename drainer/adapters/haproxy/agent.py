"""The ``haproxy-agent`` load balancer: drainer answers HAProxy's agent-check on this VM.

Every HAProxy instance in front of the node polls ``agent-port`` on its own and reads
one word: ``ready`` in service, ``drain`` while draining, ``maint`` once drained. No
admin access to any load balancer is needed, an HA pair is handled for free, and a
reload is corrected within one ``agent-inter``.

The answer lives in ``<state_dir>/agent-<name>.json`` so that the CLI (which changes it)
and the daemon (which serves it) agree, and so that it survives a restart or a reboot:
after a reboot the agent keeps answering ``maint`` until drainer's own health check has
passed. The daemon also records, per polling HAProxy address, the last answer it served
(``agent-<name>.seen.json``): a drain counts as effective only once every instance that
polls has been told (an address that has not polled for ``STALE`` seconds no longer
counts: that HAProxy is gone).

Without an admin socket drainer cannot read ``scur``. When ``stats`` names read-only
stats sockets (``level user`` is enough), the node's sessions are their ``scur`` for
``backend``/``server``: exact. Otherwise they are the established TCP connections to
``service_port`` (from ``peers`` when given) read from ``/proc/net/tcp`` and
``/proc/net/tcp6``: that also counts the idle connections HAProxy keeps pooled to a
server in DRAIN (it closes them on MAINT), so such a drain often runs to its deadline.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from drainer._net import split_host_port
from drainer.adapters._state import save_json
from drainer.adapters.base import AdapterConfig, AdapterContext, AdapterPlugin, LoadBalancer
from drainer.adapters.checks import Check, attempt
from drainer.adapters.haproxy.client import HAProxyClient, check_name
from drainer.errors import ConfigError, PermanentAdapterError, TransientAdapterError
from drainer.model import LBStatus, LBView
from drainer.sidecar import inspect

log = logging.getLogger("drainer")

ANSWERS = {"ready": LBStatus.IN_SERVICE, "drain": LBStatus.DRAINING, "maint": LBStatus.OUT}
ESTABLISHED = "01"
STALE = 60.0  # seconds without a poll after which an HAProxy address no longer counts
REFRESH = 20.0  # how often the daemon rewrites the seen file while answers do not change


class AgentConfig(AdapterConfig):
    type: Literal["haproxy-agent"] = "haproxy-agent"
    listen: str  # host:port HAProxy's agent-check connects to (agent-port)
    service_port: int = Field(ge=1, le=65535)  # the port HAProxy sends requests to
    peers: tuple[str, ...] = ()  # HAProxy addresses whose connections count; empty: any
    proc_net: Path = Path("/proc/net")  # for tests
    stats: tuple[str, ...] = ()  # read-only stats sockets: sessions from their scur
    backend: str | None = None  # with stats: where this node's server is
    server: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, listen: str) -> str:
        split_host_port(listen, default_host="0.0.0.0")  # ValueError names what is wrong
        return listen

    @model_validator(mode="after")
    def _stats_need_names(self) -> AgentConfig:
        if self.stats and not (self.backend and self.server):
            raise ValueError("stats needs backend and server: which row holds this node")
        for kind, name in (("backend", self.backend), ("server", self.server)):
            if name is not None:
                try:
                    check_name(kind, name)
                except ConfigError as exc:
                    raise ValueError(str(exc)) from exc
        return self


def _parse_listen(listen: str) -> tuple[str, int]:
    try:
        return split_host_port(listen, default_host="0.0.0.0")
    except ValueError as exc:
        raise ConfigError(f"haproxy-agent listen: {exc}") from exc


def _hex_ip(text: str) -> str:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc/net/tcp6 stores four little-endian 32-bit words
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    addr = ipaddress.IPv6Address(words)
    return str(addr.ipv4_mapped or addr)


def established(proc_net: Path, port: int, peers: frozenset[str]) -> int:
    """Established TCP connections to local ``port`` (from ``peers`` when not empty)."""
    count = 0
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise TransientAdapterError(f"cannot read {proc_net / name}: {exc.strerror}") from exc
        for line in lines:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state != ESTABLISHED or int(local.rsplit(":", 1)[1], 16) != port:
                continue
            if peers and _hex_ip(remote.rsplit(":", 1)[0]) not in peers:
                continue
            count += 1
    return count


class AgentLoadBalancer(LoadBalancer):
    def __init__(self, config: AgentConfig, *, name: str, state_dir: Path) -> None:
        self.name = name
        self.listen = config.listen
        self._config = config
        self._address = _parse_listen(config.listen)
        self._answer_path = state_dir / f"agent-{name}.json"
        self._seen_path = state_dir / f"agent-{name}.seen.json"
        self._peers = frozenset(config.peers)
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._seen: dict[str, dict[str, Any]] = {}
        self._server_ids: dict[str, int] = {}  # per stats socket: the row's sid last seen

    # -- the files ---------------------------------------------------------------------

    def _read(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise PermanentAdapterError(f"cannot read {path}: {exc}") from exc
        return data if isinstance(data, dict) else {}

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        save_json(path, data)  # atomic: after a power cut the answer must still be there

    def answer(self) -> str:
        answer = str(self._read(self._answer_path).get("answer", "ready"))
        if answer not in ANSWERS:
            raise PermanentAdapterError(f"{self._answer_path}: bad answer {answer!r}")
        return answer

    def _told(self) -> dict[str, str]:
        """What each HAProxy that polled lately was last told."""
        now = time.time()
        return {
            peer: str(entry.get("answer"))
            for peer, entry in self._read(self._seen_path).items()
            if isinstance(entry, dict) and now - float(entry.get("at", 0)) < STALE
        }

    def _set(self, answer: str) -> None:
        if self.answer() != answer:
            self._write(self._answer_path, {"answer": answer})

    # -- LoadBalancer ------------------------------------------------------------------

    def state(self) -> LBView:
        answer = self.answer()
        seen = self._told()
        behind = sorted(peer for peer, told in seen.items() if told != answer)
        sessions = self._sessions()
        if answer != "ready" and (behind or not seen):
            sessions = max(sessions, 1)  # not every HAProxy has been told yet
        waiting = (
            f"; not yet told: {', '.join(behind) or 'no HAProxy has polled'}"
            if (behind or not seen)
            else ""
        )
        return LBView(
            ANSWERS[answer],
            sessions,
            f"agent answers {answer} on {self._config.listen}, {sessions} sessions{waiting}",
        )

    def _sessions(self) -> int:
        config = self._config
        if not config.stats:
            return established(config.proc_net, config.service_port, self._peers)
        return sum(self._scur(address) for address in config.stats)

    def _scur(self, address: str) -> int:
        """The server's ``scur`` on one stats socket: its row alone, by the id it had last
        time; the whole backend when that id is not known or now names another server
        (a reload renumbered them)."""
        config = self._config
        client = HAProxyClient(address, connect_timeout=1.0, timeout=2.0)
        if (sid := self._server_ids.get(address)) is not None:
            rows = client.stat(config.backend, server_id=sid)
            if [r.server for r in rows] == [config.server]:
                return rows[0].scur
        rows = [r for r in client.stat(config.backend) if r.server == config.server]
        if len(rows) == 1:
            self._server_ids[address] = rows[0].server_id
        return sum(r.scur for r in rows)

    def drain(self) -> None:
        if self.answer() == "ready":
            self._set("drain")

    def take_out(self, *, kill: bool) -> None:
        # The agent cannot close sessions; at the deadline ``maint`` is all it can say.
        self._set("maint")

    def put_back(self) -> bool:
        self._set("ready")
        return True

    def preflight(self) -> list[Check]:
        """The answer file is readable, the listen address is free or answered by a
        drainer (this process or the running daemon), each stats socket shows the row."""
        checks = [attempt(f"{self.name}: answer file", lambda: f"answer {self.answer()}")]
        checks.append(attempt(f"{self.name}: listen", self._check_listen))
        config = self._config
        for address in config.stats:

            def stats(address: str = address) -> str:
                client = HAProxyClient(address, connect_timeout=1.0, timeout=2.0)
                rows = [r for r in client.stat(config.backend) if r.server == config.server]
                if not rows:
                    raise PermanentAdapterError(
                        f"{address} shows no server {config.server} in backend {config.backend}"
                    )
                return f"{config.backend}/{config.server} {rows[0].status} scur={rows[0].scur}"

            checks.append(attempt(f"{self.name}: stats {address}", stats))
        return checks

    def _check_listen(self) -> str:
        if self._server is not None:
            return f"{self.listen}: served by this process"
        host = self._address[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(self._address)
                return f"{self.listen}: free"
            except OSError as exc:
                bind_error = exc.strerror
        if inspect(self._answer_path.parent).running:
            return f"{self.listen}: in use, and a `drainer run` holds this state directory"
        raise PermanentAdapterError(
            f"cannot listen on {self.listen} ({bind_error}) and no `drainer run`"
            " holds this state directory: another program has the port"
        )

    def serve(self) -> None:
        """Answer agent checks in a thread until close()."""
        try:
            family = socket.AF_INET6 if ":" in self._address[0] else socket.AF_INET
            server = socket.socket(family, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(self._address)
            server.listen(64)
            server.settimeout(0.5)
        except OSError as exc:
            raise ConfigError(
                f"{self.name}: cannot listen on {self._config.listen}: {exc.strerror}"
            ) from exc
        self._server = server
        self._seen = self._read(self._seen_path)
        self._thread = threading.Thread(target=self._accept, name=f"agent-{self.name}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        server = self._server
        while server is not None and self._server is server:
            try:
                conn, peer = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    answer = self.answer()
                except PermanentAdapterError as exc:
                    log.error("%s", exc)
                    continue  # no answer: HAProxy keeps the last state
                try:
                    conn.settimeout(1.0)
                    conn.sendall(f"{answer}\n".encode())
                except OSError:
                    continue
            self._note(peer[0], answer)

    def _note(self, peer: str, answer: str) -> None:
        now = time.time()
        last = self._seen.get(peer, {})
        if last.get("answer") == answer and now - float(last.get("at", 0)) < REFRESH:
            return
        self._seen[peer] = {"answer": answer, "at": now}
        try:
            self._write(self._seen_path, dict(self._seen))
        except TransientAdapterError as exc:
            log.error("%s", exc)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if self._thread is not None:
            self._thread.join(timeout=2)


def create(config: AgentConfig, context: AdapterContext) -> list[LoadBalancer]:
    _parse_listen(config.listen)
    name = config.name or "haproxy-agent"
    return [AgentLoadBalancer(config, name=name, state_dir=context.state_dir)]


PLUGIN = AdapterPlugin(config_model=AgentConfig, create=create)
