"""Token sets, their lifetimes, the grants that renew them and the stores that keep them.

This package owns the token state model (`model`: FRESH, STALE, INVALID) and the rules of a
refresh (`rules`, pure); the token manager (`manager`) with its single flight and background
refresher (`refresher`), the lease protocol every store shares (`lease`), the in-memory set it
serves (`holder`) and what it shows and reports (`status`, plain data); the stores (`store` for
files, `redis_store`, `seal` for encryption at rest, chosen in `backends`); the grant clients per
provider (`grants`, reaching the identity service through `endpoints`); and the health
judgement (`health`). It may import `proxy.oauth`, `proxy.config` and `proxy.core`, never
`proxy.forwarding`, `proxy.telemetry`, `proxy.ops` or anything above them.
"""
