"""``drainer serve``: a load-balancer host's adapters, offered over HTTP to the sidecars."""
