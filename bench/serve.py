#!/usr/bin/env python3
"""``drainer serve`` under a fleet: can 2,000 sidecars poll it once a second?

Simulated sidecars (one asyncio client in this process, one connection each, kept open
between polls as the ``remote`` adapter keeps it) ask their node's state once a second,
started evenly over the first second, against:

- ``reference``: ``http.server.ThreadingHTTPServer`` (HTTP/1.1, keep-alive) answering the
  same JSON, with no authentication and no adapter: the standard library's own server;
- ``mock``: ``drainer serve`` with the mock adapter (one JSON file per node);
- ``haproxy``: ``drainer serve`` with the HAProxy adapter on a real HAProxy, backends of
  500 servers (as many as the nodes need), each node one server.

Each runs plain and under TLS (a throwaway P-256 certificate made with the ``openssl``
CLI in a temporary directory), each server in a process of its own. For each fleet size
it prints, over the seconds measured after a warm-up (until every sidecar has had an
answer, and 1 s more: connections made and TLS handshakes done), the answers per
second, p50/p99 latency, the errors (a refusal, a reset, a timeout), the server's CPU
and this client's (in % of one core, over the measure), and "all in": the seconds until
the last sidecar got its first answer (the fleet connecting at once, as after a
restart); with HAProxy, HAProxy's own CPU over the measure too (the same whatever the
number of sidecars, when their reads are shared). Loopback only; about 3 minutes on a
quiet machine.

    python bench/serve.py [--sizes 100,500,1000,2000] [--seconds 3] [--only mock,haproxy]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from drainer.testing import free_port, openssl_available, self_signed_certificate, start_haproxy

TICKS = os.sysconf("SC_CLK_TCK")
PER_BACKEND = 500
WARMUP = 2.0  # seconds of polling at least before the measure
TIMEOUT = 5.0  # a sidecar's wait for one answer
LONGEST = 20.0  # seconds a run may take, the fleet connecting included

REFERENCE = r"""
import json, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = json.dumps({"status": "in_service", "sessions": 0, "detail": "reference"}).encode()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096

server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
if len(sys.argv) > 2:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = context.wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
server.serve_forever()
"""


def proc_cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def backends(nodes: int) -> str:
    """Backends of ``PER_BACKEND`` servers on addresses never contacted (no checks)."""
    lines = []
    for b in range((nodes + PER_BACKEND - 1) // PER_BACKEND):
        lines.append(f"backend app{b}\n  balance roundrobin\n")
        lines += [f"  server s{i} 10.{b}.{i >> 8 & 255}.{i & 255}:80\n" for i in range(PER_BACKEND)]
    return "".join(lines)


def serve_config(
    directory: Path, *, nodes: int, admin: str | None, port: int, tls: tuple[Path, Path] | None
) -> Path:
    """``nodes`` nodes of the mock adapter, or of the HAProxy at ``admin`` when given."""
    tokens = directory / "tokens"
    tokens.mkdir(exist_ok=True)
    entries = {}
    for i in range(nodes):
        token = tokens / f"n{i}"
        token.write_text(f"token-{i:06d}-" + "x" * 24)
        if admin is None:
            path = directory / "mock" / f"n{i}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text('{"status": "in_service", "calls": []}')
            server: dict[str, object] = {"path": str(path)}
        else:
            server = {"backend": f"app{i // PER_BACKEND}", "server": f"s{i % PER_BACKEND}"}
        entries[f"n{i}"] = {"token_file": str(token), "servers": {"app": server}}
    lb: dict[str, object] = {"type": "mock", "sessions": 0}
    if admin is not None:
        lb = {"type": "haproxy", "instances": [admin]}
    config: dict[str, object] = {
        "listen": f"127.0.0.1:{port}",
        "state_dir": str(directory / "state"),
        "load_balancers": {"app": lb},
        "nodes": entries,
    }
    if tls is not None:
        config["tls"] = {"cert": str(tls[0]), "key": str(tls[1])}
    path = directory / f"serve-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after 60 s:\n{log.read_text()}")


@contextmanager
def running(command: list[str], port: int, log: Path) -> Iterator[int]:
    """A server process from ``command``, listening on ``port``; its PID."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc, log)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Tally:
    """What the fleet saw; the measure starts once every sidecar has had an answer."""

    def __init__(self, size: int, begin: float, seconds: float, pids: tuple[int, ...]) -> None:
        self.size = size
        self.pids = pids  # the server's, then HAProxy's if any
        self.cpu: list[tuple[float, tuple[float, ...], float]] = []  # (time, theirs, this one's)
        self.begin = begin
        self.seconds = seconds
        self.latencies: list[float] = []
        self.errors = 0
        self.kinds: dict[str, int] = {}
        self.first: list[float] = []  # each sidecar's first answer, from the start
        self.start: float | None = None  # of the measure: WARMUP, or 1 s after all were in
        self.end = begin + LONGEST

    def answered(self, now: float) -> None:
        self.first.append(now - self.begin)
        if len(self.first) == self.size and now + 1.0 < self.end:
            self.start = max(now + 1.0, self.begin + WARMUP)
            self.end = min(self.end, self.start + self.seconds)
            loop = asyncio.get_running_loop()
            loop.call_at(self.start, self.sample)
            loop.call_at(self.end, self.sample)

    def sample(self) -> None:
        theirs = tuple(proc_cpu(pid) for pid in self.pids)
        self.cpu.append((time.monotonic(), theirs, time.process_time()))

    def cpu_percent(self) -> tuple[list[float], float]:
        """The CPU of each of ``pids`` and this process's over the measure, in % of one
        core."""
        if len(self.cpu) < 2:
            return [float("nan")] * len(self.pids), float("nan")
        (t0, theirs0, own0), (t1, theirs1, own1) = self.cpu[0], self.cpu[-1]
        return [(b - a) / (t1 - t0) * 100 for a, b in zip(theirs0, theirs1, strict=True)], (
            own1 - own0
        ) / (t1 - t0) * 100

    def error(self, kind: str) -> None:
        self.errors += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1


async def sidecar(i: int, port: int, context: ssl.SSLContext | None, tally: Tally) -> None:
    """Node ``n{i}``: its state once a second on one kept connection, from its offset."""
    loop = asyncio.get_running_loop()
    request = (
        f"GET /v1/load-balancers/app HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drainer-Node: n{i}\r\n"
        f"Authorization: Bearer token-{i:06d}-{'x' * 24}\r\n\r\n"
    ).encode()
    due = tally.begin + (i * 0.618034) % 1.0  # spread evenly over the first second
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    answered = False
    while due < tally.end:
        await asyncio.sleep(max(0.0, due - loop.time()))
        sent = loop.time()
        counted = tally.start is not None and tally.start <= sent < tally.end
        timer = None
        try:
            if conn is None:
                conn = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=context), TIMEOUT
                )
            reader, writer = conn
            timer = loop.call_later(TIMEOUT, writer.transport.abort)  # no answer in time
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").lower().split("\r\n")
            length = next(int(h[15:]) for h in lines if h.startswith("content-length:"))
            await reader.readexactly(length)
            timer.cancel()
            status = lines[0].split()[1]
            if not answered and status == "200":
                answered = True
                tally.answered(loop.time())
            if counted:
                tally.latencies.append(loop.time() - sent)
                if status != "200":
                    tally.error(f"HTTP {status}")
            if "connection: close" in lines:
                writer.close()
                conn = None
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            if timer is not None:
                timer.cancel()
            if counted:
                tally.error(type(exc).__name__)
            if conn is not None:
                conn[1].close()
            conn = None
        due += 1.0
        while due < loop.time():  # late: skip the polls missed, as a sidecar would
            due += 1.0
    if conn is not None:
        conn[1].close()


async def fleet(
    size: int, port: int, context: ssl.SSLContext | None, seconds: float, pids: tuple[int, ...]
) -> Tally:
    """``size`` sidecars until ``seconds`` have been measured after the warm-up."""
    loop = asyncio.get_running_loop()
    tally = Tally(size, loop.time() + 0.05, seconds, pids)
    await asyncio.gather(*(sidecar(i, port, context, tally) for i in range(size)))
    await asyncio.sleep(max(0.0, tally.end - loop.time()))
    if len(tally.cpu) < 2:
        tally.sample()
    return tally


def measure(
    name: str,
    size: int,
    port: int,
    pids: tuple[int, ...],
    context: ssl.SSLContext | None,
    seconds: float,
) -> str:
    tally = asyncio.run(fleet(size, port, context, seconds, pids))
    (cpu, *lb), own = tally.cpu_percent()
    lat = sorted(tally.latencies)
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else float("nan")
    ok = len(lat) - sum(v for k, v in tally.kinds.items() if k.startswith("HTTP"))
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(tally.kinds.items()))
    if lb:
        kinds = f"HAProxy CPU {lb[0]:.0f}%" + (f", {kinds}" if kinds else "")
    ramp = max(tally.first) if len(tally.first) == size else float("nan")
    if tally.start is None:  # never all in: what was answered, over the whole run
        kinds = f"not all answered in {LONGEST:g} s; {kinds}"
    span = tally.end - tally.start if tally.start is not None else LONGEST
    if not lat:
        ok = 0
    return (
        f"{name:<20} {size:>6} {ok / span:>8.0f} {p50:>8.1f} {p99:>8.1f} "
        f"{tally.errors:>7} {cpu:>6.0f}% {own:>6.0f}% {ramp:>6.1f}  {kinds}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,500,1000,2000")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured, per run")
    parser.add_argument("--only", default="reference,mock,haproxy")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    targets = args.only.split(",")
    if not openssl_available():
        sys.exit("bench/serve: needs the openssl CLI for its throwaway certificate")
    directory = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    proxy = start_haproxy(backends(max(sizes))) if "haproxy" in targets else None
    try:
        cert, key = self_signed_certificate(directory)
        trusting = ssl.create_default_context(cafile=str(cert))
        print(
            f"drainer serve, {max(sizes)} nodes configured; sidecars poll once a second on a"
            f" kept connection; measured {args.seconds:g} s from {WARMUP:g} s after the start, or"
            " from 1 s after every sidecar had an answer if later"
        )
        print(
            f"{'server':<20} {'sidecars':>6} {'answers/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
            f" {'errors':>7} {'CPU':>7} {'client':>7} {'all in':>6}"
        )
        for target in targets:
            for tls in (False, True):
                port = free_port()
                name = f"{target} {'TLS' if tls else 'plain'}"
                log = directory / f"{target}-{'tls' if tls else 'plain'}.log"
                if target == "reference":
                    command = [sys.executable, "-c", REFERENCE, str(port)]
                    command += [str(cert), str(key)] if tls else []
                else:
                    path = serve_config(
                        directory,
                        nodes=max(sizes),
                        admin=proxy.admin if proxy is not None and target == "haproxy" else None,
                        port=port,
                        tls=(cert, key) if tls else None,
                    )
                    command = [sys.executable, "-m", "drainer", "serve", "-c", str(path)]
                with running(command, port, log) as pid:
                    pids = (pid, proxy.proc.pid) if proxy and target == "haproxy" else (pid,)
                    for size in sizes:
                        context = trusting if tls else None
                        print(measure(name, size, port, pids, context, args.seconds), flush=True)
    finally:
        if proxy is not None:
            proxy.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
