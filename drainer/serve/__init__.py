"""``drainer serve``: a load-balancer host's adapters, offered over HTTP to the sidecars.

A sidecar on a backend VM cannot edit the nginx host's files. ``drainer serve`` runs on
the load-balancer host, builds the adapters its own configuration names (nginx, nginx
Plus, HAProxy: each type whose plugin declares ``node_keys``) and lets each node act on
its own server of them, and on nothing else. The sidecar's ``remote`` adapter
(drainer/adapters/remote.py) is the client; the API is drawn in drainer/serve/protocol.py.
Status codes of an error (its body: ``{"error": message, "kind": ...}``)::

    400 bad body   401 unknown node or wrong token   403 not this node's   404 no such path
    405 method  411 no Content-Length  413 body too large
    429 this node's rate, this address's wrong tokens, or too many connections from this
        address not yet authenticated (Retry-After)
    431 request head too large   422 the adapter refused for good (PermanentAdapterError)
    503 the load balancer failed this time (TransientAdapterError), or every connection
        slot is taken: retry (Retry-After)

Invariants:

- A request names a load balancer, never a server. The server is the one the
  configuration gives the node (``nodes.<node>.servers.<lb>``), merged into the load
  balancer's entry when ``drainer serve`` starts. A node entry may set only the keys that
  name its server (its plugin's ``node_keys``; every other key comes from
  ``load_balancers``, and a type without such keys cannot be served), and two nodes of
  one load balancer never name the same server (compared by those keys, an HAProxy
  ``address`` by IP and port; nodes that name it in different ways are refused, as
  nobody can tell them apart). Whatever a node sends, it acts on its own server only.
- Every request is authenticated: ``X-Drainer-Node: <node>`` and
  ``Authorization: Bearer <token>``, header names and the scheme in any case (an
  HTTP/2 proxy lowercases them), each header at most once. Tokens are read once at start
  from a file or an environment variable, compared in constant time
  (``hmac.compare_digest`` of SHA-256 digests, and an unknown node costs the same
  comparison), and never logged or echoed.
- It listens on loopback unless told otherwise; a non-loopback address needs TLS
  (``tls.cert``/``tls.key``) or an explicit ``allow_plaintext: true``.
- Limits (drainer/serve/http.py): a body over ``limits.max_body`` bytes is refused
  unread; each node gets ``limits.rate`` requests per second (burst ``limits.burst``),
  counted by its token, and each client address as many wrong tokens, after which the
  address is refused before anything is compared. At most ``limits.max_connections``
  connections at once, and at most ``limits.max_connections_per_client`` from one
  address that have not yet shown a valid token, so a stranger cannot take every slot
  while a fleet behind one NAT address can; a refusal is written after the TLS
  handshake, with ``Retry-After``. The TLS handshake, then each request (headers and
  body), must arrive within ``limits.timeout``, or the connection is shut down
  unanswered: trickling bytes cannot hold a slot, and a request is acted on only if it
  was read whole in time. Connections are kept between requests (HTTP/1.1) and closed
  after ``limits.idle`` without one. The call to the adapter that follows is not bounded
  by it (it may wait for ``nginx -t`` and a reload).
- State reads are shared (drainer/serve/shared.py): the nodes of one HAProxy instance
  get their state from one read of the backend per ``shared_read``, ended by any write.
- Calls on one node's load balancer are serialized; the adapters serialize the rest
  (the nginx adapter holds a file lock around each transaction).

Crash behaviour: the server keeps no state of its own. On SIGTERM it stops accepting and
waits for the calls in progress (each may be a transaction at the load balancer), and for
connections still sending a request until their deadline at most; a call cut short by a
crash is retried by the sidecar, and every adapter call is idempotent.

Modules: ``protocol`` (the API above, shared with the client), ``config`` (the file and each
node's entries), ``app`` (one request read in full -> one reply: authentication, rate,
routing, the adapter call), ``shared`` (one HAProxy read for every node), ``http`` (the
event loop, TLS, keep-alive, connection limits, ``serve()``).
"""
