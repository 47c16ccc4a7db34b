"""The proxy's own endpoints under /_proxy/, for the person who links an account and for the
operator: the status page (`pages`, HTML rendered from plain data on the shared `layout`) and
its forms (`console`), the OAuth consent flow (`consent`: login, callback, and the pages it ends
on in `outcome_pages`) with its encrypted session cookie and key file (`session`), the HTML
responses and form check they share (`responses`), and the health, readiness and metrics
endpoints (`endpoints`). It may import `proxy.forwarding` (the per-connection runtime and the
app state), `proxy.telemetry`, `proxy.tokens`, `proxy.oauth`, `proxy.config`, `proxy.inbound`
(CSRF) and `proxy.core`; never `proxy.server`, `proxy.app` or `proxy.cli`, which sit above it.
`pages`, `layout` and `outcome_pages` stay pure: no aiohttp, no I/O.
"""
