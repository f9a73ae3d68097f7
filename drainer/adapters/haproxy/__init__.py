"""HAProxy, two ways: ``client`` speaks its runtime API (the stats socket, the master
CLI); ``runtime`` (``type: haproxy``) drains through that API; ``agent`` (``type:
haproxy-agent``) answers HAProxy's agent-check from this VM, with no admin access."""
