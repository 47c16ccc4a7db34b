"""What the proxy records: Prometheus metrics (one registry per app), the log pipeline (JSON or
text, written in batches by one thread), the audit log (JSON lines from a thread that drops
and counts rather than block on a stalled disk), and traces (tracing.py: each request's W3C
trace context; OpenTelemetry spans through otel.py, imported only when they are exported).

Handlers and middlewares above record into it; it reads token health from `proxy.tokens` and
its settings from `proxy.config`, and imports nothing of forwarding, ops, the app or the CLI.
"""
