#!/usr/bin/env python3
"""Drain web-1 from a real nginx 1.22 under load: which clients fail, and what reaches zero?

    python bench/nginx_drain.py [--seconds 35] [--keepalive 16] [--close 4] [--pause 0.005]
                                [--variants reload,next-upstream,ka-timeout-0,...]

A real nginx (/usr/sbin/nginx, Debian 1.22) with its own prefix, configuration and logs
in a temporary directory, on 127.0.0.1, in front of three backends (web-1..3,
`drainer.testing.lab.WebProcess`, a process each, 10 ms per request). Two kinds of clients run
at the same time, each a `drainer.testing.lab.LoadClient` (httpx, no retries): keep-alive
clients that reuse their connection, and clients that send `Connection: close` (a new
connection per request); they ask for /keep and /close, so nginx's access log tells
them apart. Each variant drains web-1 and puts it back several times during
`--seconds` of load:

reload          drainer's `type: nginx` adapter, called directly: drain() (`down` in the
                include file, nginx -t, reload), state() until OUT, take_out(), hold,
                put_back() (reload). nginx's defaults otherwise (keepalive_timeout 75s).
next-upstream   the same, plus `proxy_next_upstream error timeout invalid_header
                http_502 http_503 http_504 non_idempotent; proxy_next_upstream_tries 3;`
ka-timeout-0    the same, plus `keepalive_timeout 0;` (nginx answers `Connection: close`)
healthz-503     no reload: web-1's /healthz answers 503 during the hold, nothing else
stop-web-1      no reload: web-1's process stops (SIGTERM) for the hold, then starts
                again; nginx's passive checks (max_fails=1 fail_timeout=10s, the
                defaults) and `proxy_next_upstream error` (the default) route around it
flag-file       no reload: `if (-f <dir>/web-1) { set $pool app_without_web1; }` then
                `proxy_pass http://$pool;`, with a second upstream block without web-1;
                drain = create the file and wait until nginx holds no connection to
                web-1 (/proc/net/tcp), put back = delete it. Not in drainer (yet)

The failures a reload causes are a race (a request sent on a keep-alive connection just
as the old worker closes it), so the reload variants drain 20 times with a 0.7 s hold,
the others 3 times with a 5 s hold. A request fails when it raises (reset, closed,
timeout) or answers 5xx. From nginx's access log: "retried" counts requests nginx sent
to more than one backend; "web-1 out" is the mean time per drain during which web-1
answered nothing (gaps longer than 0.3 s between its answers); "drained in" is the mean
time from the start of a drain to its end (state() OUT; the process gone; no connection
left). Checked on the way: no answer from web-1 once a drain was complete, and one
request per connection for the `Connection: close` clients.

Before the load, `nginx -t` probes which of the directives that would help this nginx
has. Load is bounded: each client pauses `--pause` s between requests and stops after
`--seconds` (+10 s at most). Loopback only; every process is stopped by its PID.
About 4 minutes. Exit code 0 unless the lab cannot run (2: nginx missing; 1: it did
not start): failed requests are the measurement, not an error.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from drainer.adapters.base import AdapterContext, LBStatus
from drainer.adapters.nginx import NginxConfig, create
from drainer.errors import DrainerError
from drainer.testing import LoadClient, WebProcess, free_port, wait_until
from drainer.testing.nginx import NGINX, NginxProcess

NODE = "web-1"
PEERS = ("web-2", "web-3")
DELAY = float(os.environ.get("BENCH_DELAY", "0.01"))  # seconds a request takes at a backend
GAP = 0.3  # under load, web-1 answering nothing for this long means it is out of rotation
WORKER_SHUTDOWN = 10  # worker_shutdown_timeout: bounds a drain
KINDS = (("keep-alive", "/keep"), ("conn-close", "/close"))

MAIN = """\
worker_processes 2;
{own}
worker_shutdown_timeout {shutdown}s;
events {{ worker_connections 1024; }}
http {{
    log_format bench '$msec $request_time $upstream_addr|$status $uri $connection_requests';
    access_log {root}/access.log bench;
{temp}    include {root}/upstreams.conf;
    server {{
        listen 127.0.0.1:{port};
        proxy_connect_timeout 2s;
{server}        location / {{
{location}        }}
    }}
}}
"""

# Directives that would make a drain on nginx zero-failure, but come with later versions
# or nginx Plus: `nginx -t` on this binary says which it has. (http, upstream, server
# line parameters, location)
PROBES = {
    "a zone (control: should pass)": ("", "zone app 64k;", "", ""),
    "keepalive_min_timeout 1s (1.27.4)": ("keepalive_min_timeout 1s;", "", "", ""),
    "health_check (nginx Plus)": ("", "zone app 64k;", "", "health_check;"),
    "server ... resolve (1.27.3)": ("resolver 127.0.0.1;", "zone app 64k;", " resolve", ""),
    "api write=on (nginx Plus)": ("", "zone app 64k;", "", "api write=on;"),
}


@dataclass(frozen=True)
class Variant:
    name: str
    how: str  # "adapter", "healthz", "stop" or "flag"
    server: str = ""  # directives for the server block
    location: str = "proxy_pass http://app;"
    drains: int = 3
    hold: float = 5.0  # seconds from the start of a drain to the put back


VARIANTS = {
    v.name: v
    for v in (
        Variant("reload", "adapter", drains=20, hold=0.7),
        Variant(
            "next-upstream",
            "adapter",
            location="proxy_pass http://app;\n"
            "proxy_next_upstream error timeout invalid_header http_502 http_503 http_504"
            " non_idempotent;\nproxy_next_upstream_tries 3;",
            drains=20,
            hold=0.7,
        ),
        Variant("ka-timeout-0", "adapter", server="keepalive_timeout 0;", drains=20, hold=0.7),
        Variant("healthz-503", "healthz"),
        Variant("stop-web-1", "stop"),
        Variant(
            "flag-file",
            "flag",
            location="set $pool app;\n"
            "if (-f {root}/drain/web-1) { set $pool app_without_web1; }\n"
            "proxy_pass http://$pool;",
        ),
    )
}


def _indent(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in text.splitlines())


class Nginx(NginxProcess):
    """Our own nginx (drainer.testing.nginx) with this benchmark's configuration: the
    upstreams in ``include``, an access log, the variant's server and location lines."""

    def __init__(self, root: Path, *, variant: Variant, backends: dict[str, int]) -> None:
        super().__init__(root, workers=2)
        self.include = root / "upstreams.conf"
        self.access_log = root / "access.log"
        self.flag = root / "drain" / NODE
        (root / "drain").mkdir(exist_ok=True)
        lines = {n: f"    server 127.0.0.1:{p};   # {n}\n" for n, p in backends.items()}
        upstreams = f"upstream app {{\n{''.join(lines.values())}}}\n"
        if variant.how == "flag":
            others = "".join(line for n, line in lines.items() if n != NODE)
            upstreams += f"upstream app_without_web1 {{\n{others}}}\n"
        self.include.write_text(upstreams)
        self.conf.write_text(
            MAIN.format(
                root=root,
                own=self.own_lines(),
                temp=self.temp_lines(),
                shutdown=WORKER_SHUTDOWN,
                port=self.port,
                server=_indent(variant.server, 8),
                location=_indent(variant.location.replace("{root}", str(root)), 12),
            )
        )


def probe(snippet: tuple[str, str, str, str]) -> str:
    """What ``nginx -t`` says of a configuration with these lines (see PROBES)."""
    http, upstream, params, location = snippet
    with tempfile.TemporaryDirectory(prefix="drainer-nginx-probe-") as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(
            f"pid {tmp}/nginx.pid;\nevents {{}}\nhttp {{\n{http}\n"
            f"upstream app {{ {upstream} server 127.0.0.1:9{params}; }}\n"
            f"server {{ listen 127.0.0.1:{free_port()}; location / {{ proxy_pass http://app; "
            f"{location} }} }}\n}}\n"
        )
        done = subprocess.run(
            [str(NGINX), "-p", tmp, "-c", str(conf), "-e", f"{tmp}/error.log", "-t", "-q"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    if done.returncode == 0:
        return "supported"
    message = done.stderr.strip().splitlines()[0] if done.stderr.strip() else "rejected"
    return message.split("[emerg] ")[-1].split(" in /")[0]


def established_to(port: int) -> int:
    """ESTABLISHED TCP connections to 127.0.0.1:``port`` (nginx's, to that backend).

    A substring count, not a parse: under load the table holds tens of thousands of
    TIME_WAIT lines. Each line reads ``sl local rem st ...``; the space after ``01``
    tells the state column from a local address followed by a remote one.
    """
    return Path("/proc/net/tcp").read_text().count(f" 0100007F:{port:04X} 01 ")


# -- how each variant takes web-1 out and puts it back ----------------------------------


class Method(Protocol):
    reloads: int

    def drain(self) -> bool:
        """Take web-1 out; wait until it is drained. False if nothing tells when it is."""
        ...

    def put_back(self) -> None: ...


class ByAdapter:
    """drainer's nginx adapter, as the engine drives it (without its health check)."""

    def __init__(self, nginx: Nginx, web: WebProcess, state_dir: Path) -> None:
        config = NginxConfig(
            file=nginx.include,
            upstream="app",
            server=f"127.0.0.1:{web.port}",
            nginx=NGINX,
            conf=nginx.conf,
            prefix=nginx.root,
            error_log=nginx.error_log,
            pid_file=nginx.pid_file,
            reload_timeout=5.0,
        )
        [self.lb] = create(config, AdapterContext(node=NODE, state_dir=state_dir))
        self.reloads = 0

    def drain(self) -> bool:
        self.lb.drain()
        self.reloads += 1
        wait_until(
            lambda: self.lb.state().status is LBStatus.OUT,
            timeout=WORKER_SHUTDOWN + 5,
            what="OUT",
        )
        self.lb.take_out(kill=False)
        return True

    def put_back(self) -> None:
        self.lb.put_back()
        self.reloads += 1


class ByHealthz:
    reloads = 0

    def __init__(self, web: WebProcess) -> None:
        self.web = web

    def drain(self) -> bool:
        self.web.set_healthy(False)
        return False

    def put_back(self) -> None:
        self.web.set_healthy(True)


class ByStopping:
    reloads = 0

    def __init__(self, webs: dict[str, WebProcess]) -> None:
        self.webs = webs

    def drain(self) -> bool:
        self.webs[NODE].stop(signal.SIGTERM)  # stops listening, cuts what is in flight
        return True

    def put_back(self) -> None:
        self.webs[NODE] = WebProcess(self.webs[NODE].port, name=NODE, delay=DELAY).start()


class ByFlagFile:
    reloads = 0

    def __init__(self, nginx: Nginx, web: WebProcess) -> None:
        self.flag, self.port = nginx.flag, web.port

    def drain(self) -> bool:
        self.flag.write_text("")
        wait_until(
            lambda: established_to(self.port) == 0, timeout=WORKER_SHUTDOWN, what="no connection"
        )
        return True

    def put_back(self) -> None:
        self.flag.unlink()


def _method(variant: Variant, nginx: Nginx, webs: dict[str, WebProcess], state_dir: Path) -> Method:
    if variant.how == "adapter":
        return ByAdapter(nginx, webs[NODE], state_dir)
    if variant.how == "healthz":
        return ByHealthz(webs[NODE])
    if variant.how == "stop":
        return ByStopping(webs)
    return ByFlagFile(nginx, webs[NODE])


# -- one variant ------------------------------------------------------------------------


@dataclass(frozen=True)
class Drain:
    started: float  # wall clock, as nginx's $msec
    done: float | None  # drained (None: nothing says when)
    back: float  # put back started


@dataclass
class Row:
    variant: str
    kind: str
    reloads: int
    served: int
    failed: int
    errors: dict[str, int]
    retried: int
    out: float  # mean seconds per drain web-1 answered nothing
    drained_in: float | None
    notes: list[str] = field(default_factory=list)


def run(variant: Variant, *, seconds: float, keepalive: int, close: int, pause: float) -> list[Row]:
    slot = (seconds - 4.0) / variant.drains
    if slot < variant.hold + 0.5:
        raise SystemExit(f"--seconds {seconds:g} is too short for {variant.name}")
    with tempfile.TemporaryDirectory(prefix=f"drainer-nginx-{variant.name}-") as tmp_dir:
        tmp = Path(tmp_dir)
        webs = {n: WebProcess(free_port(), name=n, delay=DELAY) for n in (NODE, *PEERS)}
        nginx = Nginx(tmp, variant=variant, backends={n: w.port for n, w in webs.items()})
        node_port = webs[NODE].port
        url = f"http://127.0.0.1:{nginx.port}"
        loads = [
            LoadClient(f"{url}{path}", workers=n, limit_seconds=seconds + 10, pause=pause, close=c)
            for (_, path), n, c in zip(KINDS, (keepalive, close), (False, True), strict=True)
        ]
        drains: list[Drain] = []
        method: Method | None = None
        try:
            for web in webs.values():
                web.start()
            nginx.start()
            method = _method(variant, nginx, webs, tmp / "state")
            for load in loads:
                load.start()
            started = time.monotonic()
            for i in range(variant.drains):
                time.sleep(max(started + 2.0 + i * slot - time.monotonic(), 0.0))
                begun = time.time()
                done = time.time() if method.drain() else None
                time.sleep(max(begun + variant.hold - time.time(), 0.0))
                back = time.time()
                method.put_back()
                drains.append(Drain(begun, done, back))
            time.sleep(max(started + seconds - time.monotonic(), 0.0))
        finally:
            for load in loads:
                load.stop()
            nginx.stop()
            for web in webs.values():
                web.stop()
        reloads = method.reloads if method else 0
        return _rows(variant, loads, nginx.access_log, node_port, drains, reloads)


def _rows(
    variant: Variant,
    loads: list[LoadClient],
    access_log: Path,
    node_port: int,
    drains: list[Drain],
    reloads: int,
) -> list[Row]:
    node = f"127.0.0.1:{node_port}"
    answered: list[float] = []  # when requests that web-1 answered started
    after_drained = 0  # web-1 answered once its drain was complete
    while_drained = 0  # web-1 answered between the start of a drain and the put back
    retried = {path: 0 for _, path in KINDS}
    reused = {path: 0 for _, path in KINDS}  # answers on a connection's 2nd+ request
    last = 0.0
    for line in access_log.read_text().splitlines():
        end_s, took, rest = line.split(" ", 2)
        upstreams, rest = rest.rsplit("|", 1)
        _status, uri, requests = rest.split()
        end = float(end_s)
        start, last = end - float(took), max(last, end)
        tried = upstreams.split(", ")
        if uri not in retried:
            continue
        retried[uri] += len(tried) > 1
        reused[uri] += int(requests) > 1
        if tried[-1] != node:
            continue
        answered.append(start)
        # $msec has millisecond resolution: allow 2 ms
        after_drained += any(d.done and d.done + 0.002 < end < d.back for d in drains)
        while_drained += any(d.started + 0.2 < start < d.back for d in drains)
    answered.sort()
    gaps = [b - a for a, b in itertools.pairwise(answered) if b - a > GAP]
    if answered and last - answered[-1] > GAP:
        gaps.append(last - answered[-1])
    timed = [d.done - d.started for d in drains if d.done is not None]
    out = []
    for load, (kind, path) in zip(loads, KINDS, strict=True):
        served, failed = load.counts()
        row = Row(
            variant=variant.name,
            kind=kind,
            reloads=reloads,
            served=served,
            failed=failed,
            errors=dict(load.errors),
            retried=retried[path],
            out=sum(gaps) / len(drains) if drains else 0.0,
            drained_in=sum(timed) / len(timed) if timed else None,
        )
        if kind == "keep-alive":
            if after_drained:
                row.notes.append(f"BUG? web-1 answered {after_drained} requests once drained")
            if variant.how == "healthz":
                row.notes.append(f"web-1 answered {while_drained} requests while /healthz 503")
        elif reused[path]:
            row.notes.append(f"{reused[path]} requests on a reused connection")
        out.append(row)
    return out


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=35.0, help="load per variant")
    parser.add_argument("--keepalive", type=int, default=16, help="keep-alive clients")
    parser.add_argument("--close", type=int, default=4, help="'Connection: close' clients")
    parser.add_argument("--pause", type=float, default=0.005, help="seconds between requests")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    args = parser.parse_args()
    if not NGINX.exists():
        print(f"{NGINX} not found (apt-get install nginx-light)", file=sys.stderr)
        return 2
    names = args.variants.split(",")
    if unknown := [n for n in names if n not in VARIANTS]:
        parser.error(f"unknown variants {unknown}; choose from {','.join(VARIANTS)}")
    version = subprocess.run([str(NGINX), "-v"], capture_output=True, text=True, check=False)
    print(
        f"{version.stderr.strip()}; {args.keepalive} keep-alive + {args.close} "
        f"Connection: close clients, {args.pause * 1000:g} ms pause, {DELAY * 1000:g} ms "
        f"per request at the backends, {args.seconds:g} s per variant"
    )
    for what, snippet in PROBES.items():
        print(f"  nginx -t with {what}: {probe(snippet)}")
    rows: list[Row] = []
    for name in names:
        print(f"  running {name} ...", file=sys.stderr, flush=True)
        try:
            rows += run(
                VARIANTS[name],
                seconds=args.seconds,
                keepalive=args.keepalive,
                close=args.close,
                pause=args.pause,
            )
        except (RuntimeError, DrainerError) as exc:  # the lab, or drainer's adapter, failed
            print(f"{name}: did not run to the end: {exc}", file=sys.stderr)
            return 1
    print()
    print(
        f"{'variant':<14} {'clients':<10} {'drains':>6} {'reloads':>7} {'served':>7} "
        f"{'failed':>6} {'retried':>7} {'web-1 out':>9} {'drained in':>10}  errors"
    )
    for r in rows:
        drains = VARIANTS[r.variant].drains
        drained = f"{r.drained_in:.2f} s" if r.drained_in is not None else "-"
        print(
            f"{r.variant:<14} {r.kind:<10} {drains:>6} {r.reloads:>7} {r.served:>7} "
            f"{r.failed:>6} {r.retried:>7} {r.out:>7.2f} s {drained:>10}  {_errors(r.errors)}"
            + "".join(f"  [{n}]" for n in r.notes)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
