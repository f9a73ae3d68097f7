"""Real processes for the HAProxy tests: an HAProxy of our own, backends, a silent CLI.

``start_haproxy()`` runs ``/usr/sbin/haproxy -f <cfg> -db`` (foreground) in a fresh,
short temporary directory under /tmp (a unix socket path must fit in 108 bytes), with
an admin stats socket at ``<dir>/admin.sock``; ``{dir}`` in the configuration text is
replaced by that directory. The ``Popen`` PID is the process we own; ``stop()`` ends it
by that PID and removes the directory.

Reload: ``master_worker=True`` adds ``-W -S <dir>/master.sock`` (master-worker mode, as
Debian's systemd unit runs it), so the PID we own is the master. ``reload()`` sends it
SIGUSR2, which is what ``systemctl reload haproxy`` does, and returns once the admin
socket answers from a new worker PID (``show info`` ``Pid:``) and the re-executed master
answers ``show proc`` on its CLI. The new worker starts from the configuration file:
every state set through the runtime API is forgotten. Waiting for the master matters: on
2.6.12 a SIGUSR2 that arrives while the master is still starting (also right after each
reload, since the master re-executes itself) is dropped without a word. The master CLI
keeps a connection open until the client half-closes it; ``cli()`` always does.
``stop()`` sends SIGTERM to the master, which stops its workers; any worker PID we saw
that is still an haproxy process afterwards is killed by that PID. ``halt()`` does the
same but keeps the directory, and ``start_again()`` then starts a new HAProxy on the
same configuration and socket path: an instance that was down and comes back.

``HttpBackend`` is a ThreadingHTTPServer in this process; ``/slow`` holds the request
until ``release()``, so a test controls exactly how many sessions are open.
``silent_listener()`` is a TCP port whose kernel accepts connections that nobody ever
answers: a hung CLI. ``canned_cli()`` answers every command with one fixed reply.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

_T = TypeVar("_T")
HAPROXY = Path("/usr/sbin/haproxy")

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


def have_haproxy() -> bool:
    return HAPROXY.exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(probe: Callable[[], _T], *, timeout: float = 5.0, what: str = "") -> _T:
    """Poll ``probe`` every 20 ms until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or probe}")
        time.sleep(0.02)


def cli(socket_path: Path, command: str, *, timeout: float = 2.0) -> str:
    """One raw command on a unix stats socket (independent of the code under test)."""
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
    """One HAProxy started by the tests; ``admin`` is its runtime API address."""

    def __init__(self, directory: Path, body: str, *, master_worker: bool) -> None:
        self.dir = directory
        self.config = directory / "haproxy.cfg"
        self.config.write_text(body)
        self.admin_socket = directory / "admin.sock"
        self.admin = f"unix://{self.admin_socket}"
        self.master_worker = master_worker
        command = [str(HAPROXY), "-f", str(self.config), "-db"]
        if master_worker:
            command += ["-W", "-S", str(directory / "master.sock")]
        self._log = (directory / "haproxy.log").open("wb")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self.workers: set[int] = set()
        wait_until(self._answers, what=f"haproxy answers on {self.admin_socket}")

    def worker_pid(self) -> int | None:
        """The PID that answers on the admin socket now, or None if nothing answers."""
        try:
            info = cli(self.admin_socket, "show info", timeout=1.0)
        except OSError:
            return None
        pid = next((line.split()[1] for line in info.splitlines() if line.startswith("Pid:")), "")
        return int(pid) if pid.isdigit() else None

    def reload(self, *, timeout: float = 5.0) -> None:
        """SIGUSR2 to the master; return once a new worker answers on the admin socket."""
        assert self.master_worker, "reload() needs start_haproxy(master_worker=True)"
        old = self.worker_pid()
        self.proc.send_signal(signal.SIGUSR2)
        wait_until(
            lambda: self.worker_pid() not in (None, old),
            timeout=timeout,
            what=f"a new worker after reload of {self.config}",
        )
        wait_until(self._answers, what="the re-executed master")

    def stop(self) -> None:
        self.halt()
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
        return HAProxy(self.dir, self.config.read_text(), master_worker=self.master_worker)

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
            return "worker" in cli(self.dir / "master.sock", "show proc", timeout=1.0)
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
        return HAProxy(directory, text, master_worker=master_worker)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _is_haproxy(pid: int) -> bool:
    try:
        return b"haproxy" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: HttpBackend
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/slow":
            self.server.slow_started.release()
            self.server.released.wait(timeout=10)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpBackend(ThreadingHTTPServer):
    """A tiny HTTP server on 127.0.0.1 answering ``ok``; ``/slow`` waits for ``release()``."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.port = int(self.server_address[1])
        self.released = threading.Event()
        self.slow_started = threading.Semaphore(0)
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=f"backend-{self.port}"
        )
        self._thread.start()

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.release()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


@contextmanager
def silent_listener() -> Iterator[str]:
    """A ``tcp://`` address whose connections are accepted by the kernel, never answered."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@contextmanager
def canned_cli(reply: bytes) -> Iterator[str]:
    """A ``tcp://`` address that reads each command to EOF, answers ``reply`` and closes."""

    def serve(listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            with conn:
                while conn.recv(65536):
                    pass
                conn.sendall(reply)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        thread = threading.Thread(target=serve, args=(sock,), name="canned-cli", daemon=True)
        thread.start()
        yield f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        sock.shutdown(socket.SHUT_RDWR)
    thread.join(timeout=5)
