"""Forwarding owns what happens to a request between the access check and the upstream: the
header rules (headers.py), the forwarder (forward.py), attempts, retries and replays
(exchange.py, with retry.py's pure rules), the upstream client and its keep-alive pools
(upstream/), outbound shaping (shaping.py), the GET cache (cache.py), subscription-key rotation
(credentials.py), the per-connection runtime (connection.py: grant, token manager, shaper,
cache, key ring, metrics), the typed app state (state.py), and the observe middleware
(observe.py: request ids, access lines, metrics). It may import proxy.telemetry, proxy.tokens,
proxy.oauth, proxy.config, proxy.inbound and proxy.core; never proxy.ops, proxy.server,
proxy.app or proxy.cli."""
