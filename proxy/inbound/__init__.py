"""What happens to a request before it may be forwarded: the guard against hostile requests
(guard.py), who may call what (policy.py: client keys, CIDRs, connections, method and path
rules, read-only, the admin area), CSRF checks for the page's forms (csrf.py), and the access
middleware that applies them all before any token is fetched (access.py).

The rules are pure and are what config compiles a `[[clients]]` block into, so this package sits
below config: it imports only `proxy.core` (and aiohttp, in the middleware alone).
"""
