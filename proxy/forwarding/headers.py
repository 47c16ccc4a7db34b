"""Which headers cross the proxy, in each direction: pure rules, no I/O.

RFC 9110 §7.6.1: hop-by-hop fields (and any field named in `Connection`) describe one connection
and are never forwarded. The client's own credentials for the upstream are never forwarded: the
proxy's replace them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Final

from multidict import CIMultiDict, MultiMapping

from proxy.core.http import HOP_BY_HOP
from proxy.core.traceparent import TRACEPARENT, TRACESTATE

VIA: Final = "1.1 nmbrs-proxy"
REQUEST_ID: Final = "X-Request-Id"

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


# The proxy's own cookies (the consent session, proxy/ops/session.py) are for the proxy only.
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


# The drop sets made for the `Connection` values seen so far (nearly always "keep-alive" or
# "close"): one lookup per message instead of a split and two new sets. Bounded: values past
# the first few dozen are worked out every time.
_DROPS_SEEN: dict[tuple[frozenset[str], str], frozenset[str]] = {}
_DROPS_KEPT: Final = 64


def dropped_with_connection(drop: frozenset[str], headers: MultiMapping[str]) -> frozenset[str]:
    """`drop` and the names `headers` list in `Connection` (hop-by-hop for this message)."""
    values = headers.getall("Connection", ())
    key = (drop, values[0] if len(values) == 1 else "\n".join(values))
    found = _DROPS_SEEN.get(key)
    if found is None:
        found = drop | connection_tokens(headers)
        if len(_DROPS_SEEN) < _DROPS_KEPT:
            _DROPS_SEEN[key] = found
    return found


# Precomputed: the names every request and every answer drops, before any `Connection` tokens.
_DROP_UPSTREAM: Final = HOP_BY_HOP | _NOT_FORWARDED_UPSTREAM | {"content-length"}
# With a trace context of the proxy's: the client's `traceparent` is replaced, and its
# `tracestate` goes too when the client's trace was not continued (W3C Trace Context §3.3).
_DROP_TRACED: Final = _DROP_UPSTREAM | {TRACEPARENT}
_DROP_RESTARTED: Final = _DROP_TRACED | {TRACESTATE}


def upstream_request_fields(
    inbound: MultiMapping[str],
    *,
    client_address: str | None,
    scheme: str,
    host: str | None,
    credentials: Mapping[str, str],
    replaced: frozenset[str] | None = None,
    defaults: Mapping[str, str] = {},
    request_id: str | None = None,
    traceparent: str | None = None,
    keep_tracestate: bool = True,
) -> tuple[list[str], str | None]:
    """What goes upstream of the client's request: `upstream_request_lines` with the
    credentials' lines added, and the client's Content-Length (the upstream client frames a
    streamed body by it). `replaced`: the credentials' names in lower case, when the caller
    keeps them (a connection does); else they are worked out here."""
    if replaced is None:
        replaced = frozenset(name.lower() for name in credentials)
    lines = upstream_request_lines(
        inbound, client_address=client_address, scheme=scheme, host=host, replaced=replaced,
        defaults=defaults, request_id=request_id, traceparent=traceparent,
        keep_tracestate=keep_tracestate,
    )
    lines.extend(map(": ".join, credentials.items()))
    return lines, inbound.get("Content-Length")


def upstream_request_lines(
    inbound: MultiMapping[str],
    *,
    client_address: str | None,
    scheme: str,
    host: str | None,
    replaced: frozenset[str] = frozenset(),
    defaults: Mapping[str, str] = {},
    request_id: str | None = None,
    traceparent: str | None = None,
    keep_tracestate: bool = True,
) -> list[str]:
    """The header lines ("Name: value") sent upstream: the client's end-to-end fields, the
    forwarding info, the defaults the client did not send. Not the credentials: their names
    are `replaced` (lower case), the client's fields of those names are dropped and the caller
    adds its own; nor Content-Length, which is framing (the upstream client writes it).

    `request_id` replaces whatever `X-Request-Id` the client sent (the proxy keeps a sane one
    and makes up a new one otherwise), so both logs name the same request. Likewise
    `traceparent` (proxy.telemetry.tracing decides it) replaces the client's; the client's
    `tracestate` goes on with it only when `keep_tracestate` (its trace was continued).

    One pass over the client's fields (this runs for every request): what is dropped, what is
    rebuilt (X-Forwarded-For, Via) and what is cleaned (Cookie) is decided per field, and the
    line is made there.
    """
    drop = _drop_set(replaced, traced=traceparent is not None, keep_tracestate=keep_tracestate,
                     identified=request_id is not None)
    if "Connection" in inbound:
        drop = dropped_with_connection(drop, inbound)
    lines, forwarded_for, via = _client_lines(
        inbound, drop, rebuild_forwarded_for=bool(client_address))
    add = lines.append
    if client_address:
        forwarded_for.append(client_address)
        add("X-Forwarded-For: " + ", ".join(forwarded_for))
    add("X-Forwarded-Proto: " + scheme)
    if host:
        add("X-Forwarded-Host: " + host)
    via.append(VIA)
    add("Via: " + ", ".join(via))
    for name, value in defaults.items():
        lower = name.lower()
        if lower not in replaced and (lower in drop or name not in inbound):
            add(f"{name}: {value}")  # the client sent none, or one that is not forwarded
    if request_id is not None:
        add(f"{REQUEST_ID}: {request_id}")
    if traceparent is not None:
        add(f"{TRACEPARENT}: {traceparent}")
    return lines


def _client_lines(
    inbound: MultiMapping[str], drop: frozenset[str], *, rebuild_forwarded_for: bool
) -> tuple[list[str], list[str], list[str]]:
    """The lines of the client's fields that go on as they are; and the X-Forwarded-For (when
    it is rebuilt) and Via values, which are extended."""
    lines: list[str] = []
    add = lines.append
    forwarded_for: list[str] = []
    via: list[str] = []
    for name, value in inbound.items():
        lower = name.lower()
        if lower in drop:
            continue
        if lower == "x-forwarded-for" and rebuild_forwarded_for:
            forwarded_for.append(value)
        elif lower == "via":
            via.append(value)
        elif lower == "cookie":
            cleaned = without_cookies(value, PROXY_COOKIES)
            if cleaned:  # else it held only ours
                add(f"{name}: {cleaned}")
        else:
            add(f"{name}: {value}")
    return lines, forwarded_for, via


@functools.lru_cache(maxsize=256)  # a few per connection: its credential names, four cases
def _drop_set(replaced: frozenset[str], *, traced: bool, keep_tracestate: bool,
              identified: bool) -> frozenset[str]:
    """The client's fields that never go upstream, before any `Connection` tokens."""
    drop = _DROP_UPSTREAM | replaced
    if traced:
        drop |= _DROP_TRACED if keep_tracestate else _DROP_RESTARTED
    if identified:
        drop |= {REQUEST_ID.lower()}
    return drop


def client_response_headers(
    upstream: MultiMapping[str], *, upstream_base: str = "", public_base: str = ""
) -> CIMultiDict[str]:
    """The headers sent back to the client: the upstream's end-to-end ones, plus `Via`.

    A `Location` under `upstream_base` is rewritten to the same place under `public_base` (as
    nginx's `proxy_redirect default` does), so a redirect keeps the client on the proxy.
    """
    drop = HOP_BY_HOP
    if "Connection" in upstream:
        drop = dropped_with_connection(drop, upstream)
    out: CIMultiDict[str] = CIMultiDict()
    add = out.add
    via: list[str] = []
    for name, value in upstream.items():
        lower = name.lower()
        if lower in drop:
            continue
        if lower == "via":
            via.append(value)
        else:
            add(name, value)
    via.append(VIA)
    add("Via", ", ".join(via))
    if upstream_base:
        location = out.get("Location")
        if location is not None:
            out["Location"] = rewrite_location(location, upstream_base, public_base)
    return out


def rewrite_location(location: str, upstream_base: str, public_base: str) -> str:
    """`upstream_base/x` → `public_base/x`; anything else (relative, other hosts) unchanged."""
    base = upstream_base.rstrip("/")
    if location == base or location.startswith((f"{base}/", f"{base}?")):
        tail = location[len(base) :]
        return public_base.rstrip("/") + (tail if tail.startswith("/") else f"/{tail}")
    return location
