"""The catch-all handler: one client request becomes one upstream request, streamed both ways.

The client's request target goes upstream byte for byte with its prefix stripped; bodies are
never buffered whole, except a small one that is kept so that a request rejected with 401 can be
replayed once after a forced token refresh.
"""

from __future__ import annotations

import logging
from typing import Final

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.connection import Connection
from proxy.errors import BadGateway, GatewayTimeout, NoConnection
from proxy.headers import client_response_headers, upstream_request_headers
from proxy.routing import match_prefix, split_target, upstream_url
from proxy.state import PROXY_STATE

log = logging.getLogger(__name__)

# A body up to this size is read before sending, so a 401 can be replayed with it.
REPLAYABLE_BODY_LIMIT: Final = 64 * 1024
CHUNK_SIZE: Final = 64 * 1024

Body = bytes | aiohttp.StreamReader | None


def _rejects_token(response: aiohttp.ClientResponse) -> bool:
    """RFC 6750 §3: the API (not a gateway) refused the token itself."""
    challenge = response.headers.get("WWW-Authenticate", "")
    return response.status == 401 and challenge.lower().startswith("bearer")


async def forward(request: web.Request) -> web.StreamResponse:
    state = request.app[PROXY_STATE]
    raw_target = request.raw_path
    path, _ = split_target(raw_target)
    prefix = match_prefix(state.prefixes, path)
    if prefix is None:
        raise NoConnection(f"no connection serves the path {path!r}")
    connection = state.by_prefix[prefix]
    url = URL(upstream_url(connection.settings.upstream, prefix, raw_target), encoded=True)

    body: Body = None
    if request.body_exists:
        length = request.content_length
        if length is not None and length <= REPLAYABLE_BODY_LIMIT:
            body = await request.read()
        else:
            body = request.content

    token = await connection.manager.bearer()
    upstream = await _send(request, connection, url, body, token)
    if _rejects_token(upstream):
        if isinstance(body, aiohttp.StreamReader):
            # The body is gone; the client gets the 401, the next request a fresh token.
            connection.manager.refresh_after_rejection_soon(token)
        else:
            upstream.release()
            log.info("upstream rejected the token of %s; refreshing once", connection.name)
            token = await connection.manager.after_rejection(token)
            upstream = await _send(request, connection, url, body, token)
    public_base = f"{request.scheme}://{request.host}{prefix.rstrip('/')}"
    try:
        return await _relay(request, upstream, connection.settings.upstream, public_base)
    finally:
        upstream.release()


async def _send(
    request: web.Request, connection: Connection, url: URL, body: Body, token: str
) -> aiohttp.ClientResponse:
    session = request.app[PROXY_STATE].session
    headers = upstream_request_headers(
        request.headers,
        client_address=request.remote,
        scheme=request.scheme,
        host=request.host,
        credentials=connection.credentials(token),
        defaults=connection.default_headers,
    )
    try:
        return await session.request(
            request.method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=connection.timeout,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        )
    except TimeoutError:
        raise GatewayTimeout(
            f"the upstream of connection {connection.name!r} did not answer in time",
            connection=connection.name,
        ) from None
    except aiohttp.ClientError as exc:
        raise BadGateway(
            f"the upstream of connection {connection.name!r} could not be reached "
            f"({type(exc).__name__})",
            connection=connection.name,
        ) from None


async def _relay(
    request: web.Request, upstream: aiohttp.ClientResponse, upstream_base: str, public_base: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        status=upstream.status,
        reason=upstream.reason,
        headers=client_response_headers(
            upstream.headers, upstream_base=upstream_base, public_base=public_base
        ),
    )
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_chunked(CHUNK_SIZE):
            await response.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Headers are gone already: the only honest signal left is an aborted connection.
        log.warning("upstream broke off a response to %s %s (%s)", request.method,
                    request.path, type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()  # the server then drops the connection quietly
        return response
    await response.write_eof()
    return response
