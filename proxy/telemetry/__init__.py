"""What the proxy records: Prometheus metrics (one registry per app), the log pipeline (JSON or
text, written in batches by one thread) and the audit log (JSON lines from a thread that drops
and counts rather than block on a stalled disk).

Handlers and middlewares above record into it; it reads token health from `proxy.tokens` and
its settings from `proxy.config`, and imports nothing of forwarding, ops, the app or the CLI.
"""
