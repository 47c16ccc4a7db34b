"""Where requests go: an origin is a pool's key, and names itself in the Host header."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


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
