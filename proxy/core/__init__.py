"""The vocabulary every layer speaks, and nothing else: `Secret` (a value that never shows in a
repr or a log), the problem+json error types clients see, log redaction, and the proxy's HTTP
facts (request targets, prefix routing, hop-by-hop fields).

It sits below everything and imports nothing of the proxy; it is pure (no aiohttp, no I/O), so
config and the pure rules above it stay pure too.
"""
