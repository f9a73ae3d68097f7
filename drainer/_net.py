"""The one parser for ``host:port`` text: every listen address and every endpoint.

Accepted: ``127.0.0.1:9464``, ``localhost:9464``, ``[::1]:9464``, ``:9464`` (any
address, when the caller allows it). A bare IPv6 address needs brackets: ``::1:9464``
is ambiguous and refused. Errors are ``ValueError`` with a message for a person, so a
pydantic validator or a caller can put its own key path in front.
"""

from __future__ import annotations

import ipaddress


def split_host_port(text: str, *, default_host: str | None = None) -> tuple[str, int]:
    """``(host, port)`` from ``host:port``; ``default_host`` fills an empty host (else an
    empty host is an error). IPv6 hosts come back without their brackets."""
    raw = text.strip()
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"not host:port: {text!r} (write IPv6 as [::1]:9464)")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"not an IPv6 address in {text!r}: {host!r}") from exc
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep:
            raise ValueError(f"not host:port: {text!r} (a port is needed, as in 127.0.0.1:9464)")
        if ":" in host:
            raise ValueError(f"not host:port: {text!r} (write IPv6 as [::1]:9464)")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"not host:port: {text!r} (the port must be 1 to 65535)")
    if not host:
        if default_host is None:
            raise ValueError(f"not host:port: {text!r} (a host is needed, as in 127.0.0.1:9464)")
        host = default_host
    return host, int(port_text)
