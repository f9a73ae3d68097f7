"""The HTTP API between the ``remote`` adapter (its client) and ``drainer serve``.

One module for both sides, so the paths, the header names and the bodies cannot drift::

    GET  /v1/load-balancers                  {"node": n, "load_balancers": [name, ...]}
    GET  /v1/load-balancers/<name>           {"status", "sessions", "detail"}
    POST /v1/load-balancers/<name>/drain     {} -> {"ok": true}
    POST /v1/load-balancers/<name>/take-out  {"kill": false} -> {"ok": true}
    POST /v1/load-balancers/<name>/put-back  {} -> {"serving": true}
    GET  /v1/load-balancers/<name>/preflight {"checks": [{"name", "ok", "detail"}, ...]}

    errors: {"error": message, "kind": "refused" | "transient" | "permanent"}

Every request carries ``X-Drainer-Node: <node>`` and ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from drainer.model import LBStatus, LBView

__all__ = [
    "NODE_HEADER",
    "OPERATIONS",
    "PREFIX",
    "RETRY_STATUS",
    "error_body",
    "lb_path",
    "view_from_json",
    "view_to_json",
]

NODE_HEADER = "X-Drainer-Node"
PREFIX = "/v1/load-balancers"
OPERATIONS = ("drain", "take-out", "put-back", "preflight")  # after /<name>/; GET /<name>: state
READS = ("state", "preflight")  # GET; the other operations are POST
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})  # worth the same request again


def lb_path(name: str, op: str = "") -> str:
    """The path of load balancer ``name`` (its state), or of one of its ``OPERATIONS``."""
    path = f"{PREFIX}/{quote(name, safe='')}"
    return f"{path}/{op}" if op else path


def error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": message, "kind": kind}


def view_to_json(view: LBView) -> dict[str, Any]:
    return {"status": view.status.value, "sessions": view.sessions, "detail": view.detail}


def view_from_json(data: Any) -> LBView:
    """The ``LBView`` a state reply holds; KeyError, ValueError or TypeError if none."""
    return LBView(LBStatus(data["status"]), int(data["sessions"]), str(data["detail"]))
