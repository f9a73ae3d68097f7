"""A webhook receiver on 127.0.0.1 for the notification tests, over real HTTP.

It answers ``status`` (flip it from the test: 500 fails, 200 recovers) and, while
``stall()`` is in force, holds each request unanswered until ``release()`` (after
``drip()``, answering it meanwhile one header byte every ``DRIP`` seconds: a tarpit, which
no per-read timeout cuts short). Every
request is kept in ``attempts`` (headers and parsed body), the answered 2xx ones in
``delivered``; ``arrived`` counts every request as it comes, ``waiting`` those held
right now.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from drainer._http import Handler, Served, Server
from drainer.testing import wait_until

STALL_LIMIT = 30.0  # seconds a stalled request is held at most (a test that forgot release)
DRIP = 0.05  # seconds between two bytes of a dripped answer


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: Any
    status: int  # what it was answered (0: not answered, the client gave up)


class _Hook(Handler, methods=("POST",)):
    server: Server[Receiver]

    def _serve(self, method: str) -> None:
        owner = self.server.app
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        with owner.lock:
            owner.arrived += 1
            owner.waiting += 1
            dripping = owner.dripping
        try:
            if dripping:
                self._drip(owner)
            else:
                owner.released.wait(STALL_LIMIT)
        except OSError:
            pass  # the client hung up: answered below, which fails the same way
        with owner.lock:
            owner.waiting -= 1
            status = owner.status
        try:
            if dripping:
                self.wfile.write(b"\r\nContent-Length: 0\r\n\r\n")
            else:
                self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
        except OSError:
            status = 0  # the client hung up (its timeout)
        with owner.lock:
            request = Request(self.path, headers, body, status)
            owner.attempts.append(request)
            if 200 <= status < 300:
                owner.delivered.append(request)

    def _drip(self, owner: Receiver) -> None:
        self.wfile.write(f"HTTP/1.1 {owner.status} OK\r\nX-Drip: ".encode())
        for _ in range(int(STALL_LIMIT / DRIP)):
            if owner.released.wait(DRIP):
                return
            self.wfile.write(b"a")
            self.wfile.flush()


class Receiver(Served[Server["Receiver"]]):
    _thread_name = "webhook-receiver"

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.released.set()
        self.dripping = False
        self.waiting = 0
        self.arrived = 0  # requests received, answered or not
        self.attempts: list[Request] = []
        self.delivered: list[Request] = []

    def _server(self) -> Server[Receiver]:
        return Server(("127.0.0.1", 0), _Hook, self)

    def _stopping(self) -> None:
        self.released.set()

    def stall(self) -> None:
        self.released.clear()

    def drip(self) -> None:
        self.dripping = True
        self.released.clear()

    def release(self) -> None:
        self.dripping = False
        self.released.set()

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.body for r in self.delivered]

    def wait_delivered(self, count: int, timeout: float = 15.0) -> list[Any]:
        wait_until(
            lambda: len(self.delivered) >= count,
            timeout=timeout,
            what=f"{count} notices delivered",
            describe=lambda: f"attempts: {[(r.status, r.body) for r in self.attempts]}",
        )
        return self.bodies()
