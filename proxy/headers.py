"""Which headers cross the proxy, in each direction: pure rules, no I/O.

RFC 9110 §7.6.1: hop-by-hop fields (and any field named in `Connection`) describe one connection
and are never forwarded. The client's own credentials for the upstream are never forwarded: the
proxy's replace them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from multidict import CIMultiDict, MultiMapping

VIA: Final = "1.1 nmbrs-proxy"
REQUEST_ID: Final = "X-Request-Id"

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

# Never forwarded upstream: the upstream's Host is set by the client library, the credentials
# are the proxy's (and the caller's key to the proxy is for the proxy only), `Expect` was
# answered by the proxy's own server, X-Forwarded-* are rebuilt.
_NOT_FORWARDED_UPSTREAM: Final = frozenset(
    {
        "host",
        "authorization",
        "x-proxy-key",
        "x-subscription-key",
        "expect",
        "x-forwarded-proto",
        "x-forwarded-host",
    }
)


# The proxy's own cookies (the consent session, proxy/oauth/routes.py) are for the proxy only.
PROXY_COOKIES: Final = frozenset({"nmbrs_proxy_session"})


def without_cookies(value: str, names: frozenset[str]) -> str:
    """A `Cookie` value (RFC 6265 §5.4, "a=1; b=2") without the cookies called `names`."""
    pairs = value.split(";")
    kept = [pair for pair in pairs if pair.partition("=")[0].strip() not in names]
    return ";".join(kept).strip() if len(kept) < len(pairs) else value


def connection_tokens(headers: MultiMapping[str]) -> frozenset[str]:
    """Field names listed in `Connection` (RFC 9110 §7.6.1), lower-cased."""
    return frozenset(
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
        if token.strip()
    )


def _end_to_end(headers: MultiMapping[str], also_drop: frozenset[str]) -> Iterable[tuple[str, str]]:
    drop = HOP_BY_HOP | connection_tokens(headers) | also_drop
    return ((name, value) for name, value in headers.items() if name.lower() not in drop)


def _without_proxy_cookies(headers: Iterable[tuple[str, str]]) -> Iterable[tuple[str, str]]:
    for name, value in headers:
        if name.lower() == "cookie":
            value = without_cookies(value, PROXY_COOKIES)  # noqa: PLW2901 - the cleaned value
            if not value:  # it held only ours
                continue
        yield name, value


def upstream_request_headers(
    inbound: MultiMapping[str],
    *,
    client_address: str | None,
    scheme: str,
    host: str | None,
    credentials: Mapping[str, str],
    defaults: Mapping[str, str] = {},
    request_id: str | None = None,
) -> CIMultiDict[str]:
    """The headers sent upstream: the client's end-to-end ones, forwarding info, our credentials.

    `request_id` replaces whatever `X-Request-Id` the client sent (the proxy keeps a sane one
    and makes up a new one otherwise), so both logs name the same request.
    """
    out: CIMultiDict[str] = CIMultiDict(_without_proxy_cookies(
        _end_to_end(inbound, _NOT_FORWARDED_UPSTREAM)
    ))
    if client_address:
        forwarded_for = ", ".join([*out.popall("X-Forwarded-For", []), client_address])
        out["X-Forwarded-For"] = forwarded_for
    out["X-Forwarded-Proto"] = scheme
    if host:
        out["X-Forwarded-Host"] = host
    out["Via"] = ", ".join([*out.popall("Via", []), VIA])
    for name, value in defaults.items():
        out.setdefault(name, value)
    if request_id is not None:
        out[REQUEST_ID] = request_id
    out.update(credentials)
    return out


def client_response_headers(
    upstream: MultiMapping[str], *, upstream_base: str = "", public_base: str = ""
) -> CIMultiDict[str]:
    """The headers sent back to the client: the upstream's end-to-end ones, plus `Via`.

    A `Location` under `upstream_base` is rewritten to the same place under `public_base` (as
    nginx's `proxy_redirect default` does), so a redirect keeps the client on the proxy.
    """
    out: CIMultiDict[str] = CIMultiDict(_end_to_end(upstream, frozenset()))
    out["Via"] = ", ".join([*out.popall("Via", []), VIA])
    location = out.get("Location")
    if location is not None and upstream_base:
        out["Location"] = rewrite_location(location, upstream_base, public_base)
    return out


def rewrite_location(location: str, upstream_base: str, public_base: str) -> str:
    """`upstream_base/x` → `public_base/x`; anything else (relative, other hosts) unchanged."""
    base = upstream_base.rstrip("/")
    if location == base or location.startswith((f"{base}/", f"{base}?")):
        tail = location[len(base) :]
        return public_base.rstrip("/") + (tail if tail.startswith("/") else f"/{tail}")
    return location
