"""The door: every request passes the guard (proxy/inbound/guard.py) and the access policy
(proxy/inbound/policy.py) here, before any handler runs, so before any token is fetched or added.

`caller` is who a forwarded request acts for, here and on the data plane
(proxy/forwarding/dataplane.py) alike: its key, and its TLS client certificate when some client
is identified by one. A connection's certificate is read and hashed once, at its first
request: the listener allows no renegotiation, so it cannot change afterwards.
"""

from __future__ import annotations

import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

from aiohttp import web

from proxy.core.http import match_prefix, split_target
from proxy.inbound import guard
from proxy.inbound.certificates import PeerCertificate
from proxy.inbound.policy import (
    AccessPolicy,
    Area,
    Client,
    area_of,
    authorize_admin,
    authorize_callback,
    check_forward,
    identify_caller,
    presented_key,
    source_address,
)
from proxy.inbound.quotas import ClientQuotas

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Each TLS connection's client certificate (None: it presented none), for as long as the
# connection lives: keyed by its SSLObject, one per connection, on asyncio's loop and uvloop's.
_PEERS: Final[weakref.WeakKeyDictionary[ssl.SSLObject, PeerCertificate | None]] = (
    weakref.WeakKeyDictionary())


def peer_certificate(request: web.BaseRequest) -> PeerCertificate | None:
    """The verified client certificate of the request's TLS connection; None without one."""
    transport = request.transport
    if transport is None:
        return None
    connection = transport.get_extra_info("ssl_object")
    if not isinstance(connection, ssl.SSLObject):
        return None
    try:
        return _PEERS[connection]
    except KeyError:
        pass
    der = connection.getpeercert(binary_form=True)
    peer = None if der is None else PeerCertificate.from_der(der)
    _PEERS[connection] = peer
    return peer


def caller(policy: AccessPolicy, request: web.BaseRequest) -> Client | None:
    """`identify_caller` for this request: its key, and its certificate if a client may be
    identified by one (otherwise the connection is not looked at)."""
    peer = peer_certificate(request) if policy.by_certificate else None
    return identify_caller(policy, presented_key(request.headers), peer)


@dataclass
class AccessNote:
    """What access control learned about a request, for the audit line."""

    client: str | None = None
    connection: str | None = None


ACCESS_NOTE = web.RequestKey("access_note", AccessNote)


@dataclass(frozen=True)
class Door:
    policy: AccessPolicy
    callback_paths: frozenset[str]  # in the decoded form aiohttp's router matches
    connections: Mapping[str, str]  # prefix → the name of the connection it routes to
    prefixes: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefixes", frozenset(self.connections))

    def route(self, path: str) -> tuple[str | None, str]:
        """The connection the forwarder will pick for the raw `path` (the same rule) and the
        decoded path its upstream will see."""
        prefix = match_prefix(self.prefixes, path)
        if prefix is None:
            return None, unquote(path)
        return self.connections[prefix], unquote(path[len(prefix) - 1 :] or "/")


@dataclass
class Doorway:
    """The door in force: a reload replaces it whole; each request reads it once."""

    door: Door


DOOR = web.AppKey("door", Doorway)
QUOTAS = web.AppKey("client_quotas", ClientQuotas)


@web.middleware
async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse what must not go on (400/431), then who may not (401/403); else handle."""
    guard.check_request(
        request.method,
        request.raw_path,
        (request.version.major, request.version.minor),
        request.headers.items(),
    )
    door = request.app[DOOR].door
    note = request.get(ACCESS_NOTE)
    if note is None:
        note = request[ACCESS_NOTE] = AccessNote()
    source = source_address(request.remote)
    area = area_of(request.rel_url.path_safe, door.callback_paths)
    if area is Area.CALLBACK:
        authorize_callback(door.policy, source=source)
    elif area is Area.ADMIN:
        authorize_admin(door.policy, key=presented_key(request.headers, basic=True),
                        source=source)
    elif area is Area.FORWARD:
        client = caller(door.policy, request)
        connection, upstream_path = door.route(split_target(request.raw_path)[0])
        note.client = client.name if client is not None else None
        note.connection = connection
        if client is not None:
            check_forward(client, source=source, connection=connection,
                          method=request.method, path=upstream_path)
            release = request.app[QUOTAS].admit(client, time.monotonic())
            if release is not None:
                try:
                    return await handler(request)
                finally:
                    release()
    return await handler(request)
