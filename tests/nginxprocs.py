"""Real processes for the nginx tests: an nginx of our own and tiny backend HTTP servers.

Each ``Nginx`` runs ``/usr/sbin/nginx`` in the foreground (``daemon off;``) with its own
prefix, configuration, pid file and error log in a temporary directory, listening on a
free port of 127.0.0.1; ``stop()`` ends it by its PID (never by name), then any worker
it left behind, also by PID. A ``Backend`` is a ThreadingHTTPServer in this process that
answers its name; ``/slow?s=N`` answers after N seconds (an in-flight request).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

NGINX = Path("/usr/sbin/nginx")


def have_nginx() -> bool:
    return NGINX.exists() or shutil.which("nginx") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.02)


class _Handler(BaseHTTPRequestHandler):
    server: _BackendServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        seconds = float(parse_qs(url.query).get("s", ["0"])[0])
        with self.server.lock:  # counted on arrival: an in-flight request is a hit
            self.server.hits[url.path] += 1
        if url.path == "/slow":
            time.sleep(seconds)
        body = self.server.name.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _BackendServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()


class Backend:
    """An HTTP server on 127.0.0.1:<port> that answers its ``name``."""

    def __init__(self, name: str) -> None:
        self._server = _BackendServer(name)
        self.name = name
        self.port = int(self._server.server_address[1])
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def hits(self) -> int:
        with self._server.lock:
            return sum(self._server.hits.values())

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


MAIN = """\
worker_processes {workers};
pid {root}/nginx.pid;
error_log {root}/error.log notice;
{user}
events {{ worker_connections 256; }}
{extra_main}
http {{
    access_log off;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    include {root}/upstream.conf;
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


class Nginx:
    """One nginx of our own; see the module docstring."""

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
        self.root = root
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = root / "nginx.conf"
        self.include = root / "upstream.conf"
        self.pid_file = root / "nginx.pid"
        self.error_log = root / "error.log"
        self._workers = workers
        self._proc: subprocess.Popen[bytes] | None = None
        self._seen: dict[int, str] = {}  # worker pid -> start time, to kill no other
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        lines = "".join(f"    server {s};\n" for s in servers)
        self.include.write_text(f"upstream {upstream} {{\n{lines}}}\n")
        self.write_main(extra_http=extra_http, extra_main=extra_main)

    def write_main(self, *, extra_http: str = "", extra_main: str = "") -> None:
        """(Re)write nginx.conf, as the operator would; no reload."""
        self.conf.write_text(
            MAIN.format(
                root=self.root,
                workers=self._workers,
                port=self.port,
                upstream=self.upstream,
                user="user root;" if os.geteuid() == 0 else "",
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

    def start(self) -> Nginx:
        args = [str(NGINX), "-p", str(self.root), "-c", str(self.conf), "-e", str(self.error_log)]
        self._proc = subprocess.Popen(
            [*args, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)
        deadline = time.monotonic() + 5
        while len(self.workers()) < self._workers or not self.pid_file.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("nginx workers did not start")
            time.sleep(0.02)
        return self

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
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                title = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if int(fields[1]) == self.master and title.startswith(b"nginx: worker"):
                pids.append(int(entry))
                self._seen[int(entry)] = fields[19]
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
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            if stat[stat.rfind(")") + 2 :].split()[19] == start:
                os.kill(pid, signal.SIGKILL)


class Traffic:
    """Clients sending GET / in a loop until ``stop()``; counts answers and failures.

    ``keepalive=False`` opens a connection per request; ``True`` reuses one, as a
    browser or an API client would, and does not retry (httpx does not).
    """

    def __init__(self, url: str, *, clients: int = 2, keepalive: bool = False) -> None:
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self._url = url
        self._keepalive = keepalive
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, name=f"traffic-{i}", daemon=True)
            for i in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if self._keepalive else 0)
        with httpx.Client(timeout=5.0, limits=limits, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(self._url)
                    outcome = response.text if response.status_code == 200 else ""
                    failure = "" if outcome else f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    outcome, failure = "", f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if failure:
                        self.failures.append(failure)
                    else:
                        self.answers[outcome] += 1
                time.sleep(0.002)

    def total(self) -> int:
        with self._lock:
            return sum(self.answers.values()) + len(self.failures)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
