"""A real nginx on loopback for tests and benchmarks, started and stopped by its PID.

``NginxProcess`` runs ``nginx`` in the foreground (``daemon off;``) with its own prefix,
configuration, pid file and error log in a directory (``root``) on a free port of
127.0.0.1; whoever writes ``root/nginx.conf`` must listen on ``port``. ``stop()`` ends
the master by its PID (never by name), then any worker it left behind, also by PID (and
only while that PID is still the process seen, by its start time).

``Nginx`` writes that configuration itself: one upstream (the ``include`` file, as
drainer's ``nginx`` adapter owns it in production) behind a ``proxy_pass`` on ``port``;
``adapter(server)`` is an ``nginx`` adapter entry pointed at it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+

from drainer.testing.clock import wait_until
from drainer.testing.ports import free_port

NGINX = Path("/usr/sbin/nginx")


def nginx_available() -> bool:
    return NGINX.exists() or shutil.which("nginx") is not None


def _stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, ...]; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


class NginxProcess:
    """One nginx of our own, from the ``nginx.conf`` the caller writes in ``root``."""

    def __init__(self, root: Path, *, workers: int = 2) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = root / "nginx.conf"
        self.pid_file = root / "nginx.pid"
        self.error_log = root / "error.log"
        self.worker_count = workers
        self._proc: subprocess.Popen[bytes] | None = None
        self._seen: dict[int, str] = {}  # worker pid -> start time, to kill no other
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def own_lines(self) -> str:
        """Top of every nginx.conf of ours: its pid file, its error log, and ``user root``
        when run as root (nginx's default user could not read the temporary files)."""
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"pid {self.pid_file};\nerror_log {self.error_log} notice;\n{user}"

    def temp_lines(self) -> str:
        """Inside ``http {}``: temporary files under ``root/tmp``, not in nginx's defaults."""
        kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        return "".join(f"    {k}_temp_path {self.root}/tmp/{k.split('_')[-1]};\n" for k in kinds)

    def args(self) -> list[str]:
        """nginx's command line for this instance (add ``-t``, ``-s reload``...)."""
        return [str(NGINX), "-p", str(self.root), "-c", str(self.conf), "-e", str(self.error_log)]

    def start(self, *, timeout: float = 10.0) -> Self:
        """Start it; return once it listens, its workers run and its pid file is written."""
        self._proc = subprocess.Popen(
            [*self.args(), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._up, timeout=timeout, what=f"nginx on 127.0.0.1:{self.port}")
        return self

    def _up(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            log = self.error_log.read_text()[-500:] if self.error_log.exists() else ""
            raise RuntimeError(f"nginx exited with {self._proc.returncode}: {log}")
        if len(self.workers()) < self.worker_count or not self.pid_file.exists():
            return False
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    @property
    def master(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def workers(self) -> list[int]:
        """PIDs of the master's worker processes (old ones still shutting down included)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            stat = _stat(entry)
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if stat and int(stat[1]) == self.master and title.startswith(b"nginx: worker"):
                pids.append(int(entry))
                self._seen[int(entry)] = stat[19]
        return sorted(pids)

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self.workers()  # remember every worker's PID before the master goes
        self._proc = None
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for pid, start in self._seen.items():  # a worker the master left behind
            stat = _stat(pid)
            if stat is not None and stat[19] == start:
                os.kill(pid, signal.SIGKILL)


MAIN = """\
worker_processes {workers};
{own}
events {{ worker_connections 256; }}
{extra_main}
http {{
    access_log off;
{temp}    include {root}/upstream.conf;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_next_upstream error timeout;
            proxy_connect_timeout 1s;
        }}
    }}
{extra_http}
}}
"""


class Nginx(NginxProcess):
    """nginx in front of ``servers`` (``host:port``), in the upstream ``upstream`` of
    ``root/upstream.conf`` (``include``)."""

    def __init__(
        self,
        root: Path,
        *,
        upstream: str = "app",
        servers: list[str],
        workers: int = 2,
        extra_http: str = "",
        extra_main: str = "",
    ) -> None:
        super().__init__(root, workers=workers)
        self.upstream = upstream
        self.include = root / "upstream.conf"
        lines = "".join(f"    server {s};\n" for s in servers)
        self.include.write_text(f"upstream {upstream} {{\n{lines}}}\n")
        self.write_main(extra_http=extra_http, extra_main=extra_main)

    def write_main(self, *, extra_http: str = "", extra_main: str = "") -> None:
        """(Re)write nginx.conf, as the operator would; no reload."""
        self.conf.write_text(
            MAIN.format(
                root=self.root,
                own=self.own_lines(),
                temp=self.temp_lines(),
                workers=self.worker_count,
                port=self.port,
                upstream=self.upstream,
                extra_http=extra_http,
                extra_main=extra_main,
            )
        )

    def adapter(self, server: str, **overrides: Any) -> dict[str, Any]:
        """An ``nginx`` adapter entry pointed at this instance."""
        entry: dict[str, Any] = {
            "type": "nginx",
            "file": str(self.include),
            "upstream": self.upstream,
            "server": server,
            "nginx": str(NGINX),
            "conf": str(self.conf),
            "prefix": str(self.root),
            "error_log": str(self.error_log),
            "pid_file": str(self.pid_file),
            "reload_timeout": "3s",
            "test_timeout": "10s",
            "lock_timeout": "10s",
        }
        entry.update(overrides)
        return entry
