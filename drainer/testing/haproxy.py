"""A real HAProxy on loopback for tests and benchmarks, started and stopped by its PID.

``HAProxy(directory, text)`` runs ``haproxy -f <directory>/haproxy.cfg -db`` (foreground)
and returns once its admin socket answers ``show info``; its output goes to
``<directory>/haproxy.log``. Two ways to write the configuration:

- ``start_haproxy(body)``: our ``global``/``defaults`` (an admin stats socket at
  ``<dir>/admin.sock``) plus ``body``, in a fresh, short temporary directory under /tmp
  (a unix socket path must fit in 108 bytes) that ``stop()`` removes; ``{dir}`` in the
  body is replaced by that directory.
- ``start_haproxy_in_front(tmp, backends={name: port})``: a frontend on a free port
  balancing over the backends on 127.0.0.1 (``haproxy_config``), with an admin socket
  and a read-only stats socket (``level user``) in ``tmp``: a load balancer in front of
  web servers.

Reload: ``master_worker=True`` adds ``-W -S <dir>/master.sock`` (master-worker mode, as
Debian's systemd unit runs it), so the PID we own is the master. ``reload()`` sends it
SIGUSR2, which is what ``systemctl reload haproxy`` does, and returns once the admin
socket answers from a new worker PID (``show info`` ``Pid:``) and the re-executed master
answers ``show proc`` on its CLI. The new worker starts from the configuration file:
every state set through the runtime API is forgotten. Waiting for the master matters: on
2.6.12 a SIGUSR2 that arrives while the master is still starting (also right after each
reload, since the master re-executes itself) is dropped without a word. The master CLI
keeps a connection open until the client half-closes it; ``haproxy_cli()`` always does.
``stop()`` sends SIGTERM to the master, which stops its workers; any worker PID we saw
that is still an haproxy process afterwards is killed by that PID. ``halt()`` does the
same but keeps the directory, and ``start_again()`` then starts a new HAProxy on the
same configuration and socket path: an instance that was down and comes back.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from drainer.testing.clock import wait_until
from drainer.testing.ports import free_port

HAPROXY = Path(shutil.which("haproxy") or "/usr/sbin/haproxy")

_GLOBAL = """\
global
  stats socket {dir}/admin.sock mode 600 level admin
  stats timeout 10s
{global_lines}
defaults
  mode http
  timeout connect 1s
  timeout client 5s
  timeout server 5s

"""


def haproxy_available() -> bool:
    return HAPROXY.exists()


def haproxy_cli(socket_path: Path | str, command: str, *, timeout: float = 2.0) -> str:
    """One raw command on a unix stats socket (independent of drainer's own client)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


class HAProxy:
    """One HAProxy of our own; ``admin`` is its runtime API address (``unix://...``)."""

    poll = 0.02  # seconds between two looks while waiting for it (start, reload)

    def __init__(
        self,
        directory: Path,
        text: str,
        *,
        master_worker: bool = False,
        port: int | None = None,
        owns_directory: bool = False,
    ) -> None:
        self.dir = directory
        self.port = port  # the frontend clients use, when the configuration has one
        self.config = directory / "haproxy.cfg"
        self.config.write_text(text)
        self.admin_socket = directory / "admin.sock"
        self.admin = f"unix://{self.admin_socket}"
        self.master_socket = directory / "master.sock"
        self.master_worker = master_worker
        self._owns_directory = owns_directory
        self.admin_socket.unlink(missing_ok=True)  # a stale one would look like a ready one
        command = [str(HAPROXY), "-f", str(self.config), "-db"]
        if master_worker:
            command += ["-W", "-S", str(self.master_socket)]
        self._log = (directory / "haproxy.log").open("wb")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self.workers: set[int] = set()
        try:
            wait_until(
                self._answers, interval=self.poll, what=f"haproxy answers on {self.admin_socket}"
            )
        except BaseException:
            self.halt()
            raise

    def worker_pid(self) -> int | None:
        """The PID that answers on the admin socket now, or None if nothing answers."""
        try:
            info = haproxy_cli(self.admin_socket, "show info", timeout=1.0)
        except OSError:
            return None
        pid = next((line.split()[1] for line in info.splitlines() if line.startswith("Pid:")), "")
        return int(pid) if pid.isdigit() else None

    def reload(self, *, timeout: float = 5.0) -> None:
        """SIGUSR2 to the master; return once a new worker answers on the admin socket."""
        assert self.master_worker, "reload() needs master_worker=True"
        old = self.worker_pid()
        self.proc.send_signal(signal.SIGUSR2)
        wait_until(
            lambda: self.worker_pid() not in (None, old),
            timeout=timeout,
            interval=self.poll,
            what=f"a new worker after reload of {self.config}",
        )
        wait_until(self._answers, interval=self.poll, what="the re-executed master")

    def stop(self) -> None:
        self.halt()
        if self._owns_directory:
            shutil.rmtree(self.dir, ignore_errors=True)

    def halt(self) -> None:
        """Stop the processes as ``stop()`` does, by PID, but keep the directory (and so
        the configuration) for ``start_again()``: an instance that went down."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.workers:
            if _is_haproxy(pid):
                os.kill(pid, signal.SIGKILL)
        self._log.close()

    def start_again(self) -> HAProxy:
        """After ``halt()``: a new HAProxy from the same configuration file, its admin
        socket at the same path (every runtime state of the old one is gone)."""
        assert self.proc.poll() is not None, "halt() it first"
        return HAProxy(
            self.dir,
            self.config.read_text(),
            master_worker=self.master_worker,
            port=self.port,
            owns_directory=self._owns_directory,
        )

    def log(self) -> str:
        return (self.dir / "haproxy.log").read_text(errors="replace")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{self.log()}")
        pid = self.worker_pid()
        if pid is None:
            return False
        self.workers.add(pid)
        return not self.master_worker or self._master_ready()

    def _master_ready(self) -> bool:
        # A SIGUSR2 that reaches the master before its loop runs is dropped (2.6.12):
        # the master CLI answering `show proc` means the loop runs.
        try:
            return "worker" in haproxy_cli(self.master_socket, "show proc", timeout=1.0)
        except OSError:
            return False


def start_haproxy(
    body: str, *, global_lines: Sequence[str] = (), master_worker: bool = False
) -> HAProxy:
    """Start an HAProxy whose configuration is our ``global``/``defaults`` plus ``body``."""
    directory = Path(tempfile.mkdtemp(prefix="hx-", dir="/tmp"))
    text = _GLOBAL.replace("{global_lines}", "\n".join(f"  {g}" for g in global_lines)) + body
    text = text.replace("{dir}", str(directory))
    try:
        return HAProxy(directory, text, master_worker=master_worker, owns_directory=True)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def haproxy_config(
    tmp: Path,
    *,
    port: int,
    backends: dict[str, int],
    check: str = "check inter 500ms",
    extra_server: str = "",
    per_server: dict[str, str] | None = None,
    redispatch: bool = False,
) -> str:
    """A frontend on 127.0.0.1:``port`` balancing over ``backends`` (name -> port).

    ``extra_server`` goes on every server line, ``per_server[name]`` on that one's."""
    more = per_server or {}
    servers = "\n".join(
        f"  server {name} 127.0.0.1:{p} {check} {extra_server} {more.get(name, '')}".rstrip()
        for name, p in backends.items()
    )
    return f"""global
  stats socket {tmp}/admin.sock mode 600 level admin
  stats socket {tmp}/stats.sock mode 666 level user
  stats timeout 30s
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  retries 3
{"  option redispatch" if redispatch else ""}
frontend web
  bind 127.0.0.1:{port}
  default_backend app
backend app
  balance roundrobin
{servers}
"""


def start_haproxy_in_front(
    tmp: Path,
    *,
    backends: dict[str, int],
    check: str = "check inter 500ms",
    extra_server: str = "",
    per_server: dict[str, str] | None = None,
    redispatch: bool = False,
    master_worker: bool = False,
) -> HAProxy:
    """A real HAProxy in front of ``backends`` (name -> port) on a free port (``port``),
    configured by ``haproxy_config``; its sockets in ``tmp``, which stays (the caller's)."""
    port = free_port()
    text = haproxy_config(
        tmp,
        port=port,
        backends=backends,
        check=check,
        extra_server=extra_server,
        per_server=per_server,
        redispatch=redispatch,
    )
    return HAProxy(tmp, text, master_worker=master_worker, port=port)


def _is_haproxy(pid: int) -> bool:
    try:
        return b"haproxy" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
