"""The ``nginx`` adapter (open source): an edit of one ``server`` line, as a transaction.

Split as certbot's nginx plugin splits a parser from its configurator: ``upstream``
reads and edits the text (pure functions), ``process`` reads nginx's processes from
/proc and runs ``nginx -t`` and the reload, and ``adapter`` holds the configuration,
the record and the transaction around them.
"""

from drainer.adapters.nginx.adapter import PLUGIN, NginxConfig, NginxLoadBalancer, create
from drainer.adapters.nginx.upstream import ServerLine, find_servers, set_down

__all__ = [
    "PLUGIN",
    "NginxConfig",
    "NginxLoadBalancer",
    "ServerLine",
    "create",
    "find_servers",
    "set_down",
]
