"""The ``nginx`` adapter (open source)."""

from drainer.adapters.nginx.adapter import (
    PLUGIN,
    NginxConfig,
    NginxLoadBalancer,
    ServerLine,
    create,
    find_servers,
    set_down,
)

__all__ = [
    "PLUGIN",
    "NginxConfig",
    "NginxLoadBalancer",
    "ServerLine",
    "create",
    "find_servers",
    "set_down",
]
