"""The forwarding client: the proxy's own HTTP/1.1 client to the upstream, keep-alive pools of
asyncio protocols whose answers llhttp (httptools) parses, streamed both ways with flow
control, with connect and read timeouts, verified TLS with SNI and one retry of a stale
connection; `Pool` (pool.py) is the way in, and the modules are, from the bottom: errors.py and
origin.py (plain vocabulary), response.py (the answer and its body), protocol.py (one
connection: parsing, buffering, timers), request.py (the request head and body on the wire),
pool.py (keep-alive per origin, connecting, TLS, the retry). It is self-contained: it imports
nothing of proxy above `proxy.core`, so the forwarder uses it and it knows nothing of
forwarding's rules."""

from __future__ import annotations

from proxy.forwarding.upstream.errors import (
    ConnectError,
    ConnectTimeout,
    EgressProxyError,
    EgressProxyTimeout,
    ProtocolError,
    ReadTimeout,
    UpstreamError,
)
from proxy.forwarding.upstream.origin import Origin, Route
from proxy.forwarding.upstream.pool import IDEMPOTENT, MAX_IDLE_PER_ORIGIN, Pool
from proxy.forwarding.upstream.protocol import HIGH_WATER, LOW_WATER
from proxy.forwarding.upstream.request import Body, HeaderLines
from proxy.forwarding.upstream.response import Response

__all__ = [
    "HIGH_WATER",
    "IDEMPOTENT",
    "LOW_WATER",
    "MAX_IDLE_PER_ORIGIN",
    "Body",
    "ConnectError",
    "ConnectTimeout",
    "EgressProxyError",
    "EgressProxyTimeout",
    "HeaderLines",
    "Origin",
    "Pool",
    "ProtocolError",
    "ReadTimeout",
    "Response",
    "Route",
    "UpstreamError",
]
