"""The door: every request passes the guard (proxy/guard.py) and the access policy
(proxy/policy.py) here, before any handler runs, so before any token is fetched or added.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp import web
from yarl import URL

from proxy import guard
from proxy.audit import ACCESS_NOTE, AccessNote
from proxy.config import Settings
from proxy.policy import (
    AccessPolicy,
    Area,
    area_of,
    authorize_admin,
    authorize_callback,
    check_forward,
    identify_caller,
    presented_key,
    source_address,
)
from proxy.routing import match_prefix, split_target
from proxy.state import PROXY_STATE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Door:
    policy: AccessPolicy
    callback_paths: frozenset[str]  # in the decoded form aiohttp's router matches


DOOR = web.AppKey("door", Door)


def setup_access(app: web.Application, settings: Settings) -> None:
    app[DOOR] = Door(
        policy=settings.access_policy(),
        callback_paths=frozenset(
            URL(c.redirect_uri).path_safe or "/"
            for c in settings.connections
            if c.redirect_uri is not None
        ),
    )


@web.middleware
async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse what must not go on (400/431), then who may not (401/403); else handle."""
    guard.check_request(
        request.method,
        request.raw_path,
        (request.version.major, request.version.minor),
        request.headers.items(),
    )
    door = request.app[DOOR]
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
        client = identify_caller(door.policy, presented_key(request.headers))
        connection, upstream_path = _route(request)
        note.client = client.name if client is not None else None
        note.connection = connection
        if client is not None:
            check_forward(client, source=source, connection=connection,
                          method=request.method, path=upstream_path)
    return await handler(request)


def _route(request: web.Request) -> tuple[str | None, str]:
    """The connection the forwarder will pick (the same rule, on the raw path) and the decoded
    path its upstream will see."""
    state = request.app[PROXY_STATE]
    path, _ = split_target(request.raw_path)
    prefix = match_prefix(state.prefixes, path)
    if prefix is None:
        return None, unquote(path)
    return state.by_prefix[prefix].name, unquote(path[len(prefix) - 1 :] or "/")
