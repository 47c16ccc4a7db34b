"""Where requests go: an origin names itself in the Host header; a route says how it is
reached (directly or through an HTTP proxy, verified with which TLS context) and is a pool's
key."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from proxy.core.egress import EgressProxy


@dataclass(frozen=True)
class Origin:
    """Where requests go: scheme, host and port, and the Host header that names them."""

    scheme: str
    host: str
    port: int
    host_header: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {url!r}")
        default = 443 if parts.scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if port == default else f"{shown}:{port}"
        return cls(parts.scheme, host, port, host_header)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


@dataclass(frozen=True, eq=False)  # compared (and hashed) by identity: one per connection
class Route:
    """How an origin is reached: `via` an HTTP proxy or directly, with `tls` (None: the pool's
    default context)."""

    origin: Origin
    via: EgressProxy | None = None
    tls: ssl.SSLContext | None = None
    # A plain origin through a proxy: absolute-form targets, and the proxy's credentials.
    target_prefix: str = field(init=False, default="")
    proxy_header: str = field(init=False, default="", repr=False)

    def __post_init__(self) -> None:
        if self.via is not None and not self.origin.tls:
            object.__setattr__(self, "target_prefix", f"http://{self.origin.host_header}")
            if self.via.authorization is not None:
                object.__setattr__(self, "proxy_header",
                                   "Proxy-Authorization: " + self.via.authorization.reveal())

    @property
    def tunnelled(self) -> bool:
        return self.via is not None and self.origin.tls
