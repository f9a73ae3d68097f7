"""What the fake services share: a server in a thread whose ``stop()`` also wakes the
requests still waiting in a "slow" fault, ``serve_forever`` for a CLI, one request
handler with its replies, and the checking of quirk switches.

A fake subclasses ``FakeService``, sets ``_host``, ``_port`` and ``_stopping_event`` in
its ``__init__`` and answers every request in ``_handle(method, target, headers, body)``
with a ``Reply``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from email.message import Message
from typing import Any

from drainer._http import Handler, Served, Server

__all__ = ["FakeService", "Reply", "check_quirks"]


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False  # close the connection without an answer


class FakeService(Served[Server["FakeService"]]):
    _host: str
    _port: int
    _stopping_event: threading.Event  # set by stop(): requests sleeping in "slow" wake up
    server_version = "Fake/1.0"  # the Server header

    def _handle(self, method: str, target: str, headers: Message, body: bytes) -> Reply:
        raise NotImplementedError

    def _server(self) -> Server[FakeService]:
        self._stopping_event = threading.Event()
        return Server((self._host, self._port), _Handler, self)

    def _stopping(self) -> None:
        self._stopping_event.set()

    def serve_forever(self) -> None:
        """Serve until KeyboardInterrupt or stop() from another thread (for a CLI)."""
        if self._running is None:
            self.start()
        stopping = self._stopping_event
        try:
            while not stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


def check_quirks(flags: dict[str, Any], known: tuple[str, ...]) -> dict[str, bool]:
    """``flags`` if it switches known quirks on or off; ValueError naming what is not."""
    unknown = sorted(set(flags) - set(known))
    if unknown:
        raise ValueError(f"unknown quirks: {', '.join(unknown)} (known: {', '.join(known)})")
    for name, on in flags.items():
        if not isinstance(on, bool):
            raise ValueError(f"quirk {name} must be true or false, got {on!r}")
    return dict(flags)


class _Handler(Handler, methods=("GET", "PUT", "POST")):
    server: Server[FakeService]

    def version_string(self) -> str:
        return self.server.app.server_version

    def _serve(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._send(Reply(400, b'{"error": "bad Content-Length"}'))
            return
        body = self.rfile.read(length)
        self._send(self.server.app._handle(method, self.path, self.headers, body))

    def _send(self, reply: Reply) -> None:
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)
