"""What the proxy knows of HTTP itself: pure string rules that every layer shares.

Which connection serves a request target and where upstream it goes: the target is used as the
client sent it (raw, still percent-encoded), so that paths and query strings reach the upstream
byte for byte. The access policy routes by the same rule as the forwarder, and the audit and
access lines split targets the same way, so the rules live here, below all three.

RFC 9110 §7.6.1: hop-by-hop fields describe one connection and are never forwarded (config
refuses them as configured headers, the forwarder drops them).
"""

from __future__ import annotations

from collections.abc import Container
from typing import Final

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def split_target(raw_target: str) -> tuple[str, str]:
    """("/path", "?query") from an origin-form request target; the query keeps its "?"."""
    path, mark, query = raw_target.partition("?")
    return path, mark + query


def match_prefix(prefixes: Container[str], path: str) -> str | None:
    """The longest prefix (each ends with "/") that serves `path`; "/acme/" also serves "/acme".

    A prefix that serves `path` is `path + "/"` or `path` cut just after one of its slashes, so
    those candidates are looked up, longest first: as many lookups as the path has segments,
    however many connections there are (pass a set or a dict).
    """
    candidate = path + "/"
    if candidate in prefixes:
        return candidate
    end = len(path)
    while (end := path.rfind("/", 0, end)) >= 0:
        candidate = path[: end + 1]
        if candidate in prefixes:
            return candidate
    return None


def upstream_url(upstream: str, prefix: str, raw_target: str) -> str:
    """The upstream URL for a target served by `prefix`: prefix stripped, the rest untouched."""
    path, query = split_target(raw_target)
    tail = path[len(prefix) - 1 :] or "/"
    return f"{upstream}{tail}{query}"
