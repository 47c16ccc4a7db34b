"""The catch-all handler: one client request becomes one upstream request, streamed both ways.

The client's request target goes upstream byte for byte with its prefix stripped; bodies are
never buffered whole, except a small one that is kept so that a request can be sent again: after
a 401 (exchange.py) or a retryable answer (retry.py). Only answers the response cache
(cache.py) stores are read whole before they are sent on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from proxy.core.errors import BadGateway, GatewayTimeout, NoConnection
from proxy.core.http import match_prefix, split_target, upstream_url
from proxy.forwarding import upstream
from proxy.forwarding.cache import Plan, ResponseCache, invalidates, served_headers
from proxy.forwarding.connection import Connection
from proxy.forwarding.exchange import Answer, Send, exchange, read_head
from proxy.forwarding.headers import client_response_headers, upstream_request_fields
from proxy.forwarding.observe import OBSERVATION, Observation
from proxy.forwarding.state import PROXY_STATE, ProxyState
from proxy.telemetry.tracing import ServerSpan

log = logging.getLogger(__name__)

# A body up to this size is read before sending, so that it can be sent again.
REPLAYABLE_BODY_LIMIT: Final = 64 * 1024
CHUNK_SIZE: Final = 64 * 1024

Body = bytes | AsyncIterator[bytes] | None
# Called with each response just before it is prepared (data plane: request id, draining).
PrepareHook = Callable[[web.StreamResponse], None]


def _no_hook(_response: web.StreamResponse) -> None:
    """The application's own on_response_prepare signal does this work on routed requests."""


async def forward(request: web.Request) -> web.StreamResponse:
    """The catch-all route of the application (requests the data plane hands it)."""
    return await forward_request(request, request.app[PROXY_STATE], request[OBSERVATION])


async def forward_request(
    request: web.BaseRequest,
    state: ProxyState,
    observation: Observation,
    prepare_hook: PrepareHook = _no_hook,
) -> web.StreamResponse:
    raw_target = request.raw_path
    path, _ = split_target(raw_target)
    prefix = match_prefix(state.prefixes, path)
    if prefix is None:
        raise NoConnection(f"no connection serves the path {path!r}")
    connection = state.by_prefix[prefix]
    observation.connection = connection
    target = upstream_url("", prefix, raw_target)  # path and query below the upstream's base

    body: Body = None
    if request.body_exists:
        length = request.content_length
        if length is not None and length <= REPLAYABLE_BODY_LIMIT:
            body = await request.read()
        else:
            body = request.content.iter_chunked(CHUNK_SIZE)

    public_base = f"{request.scheme}://{request.host}{prefix.rstrip('/')}"
    send = _Sender(request, state, observation, connection=connection,
                   target=connection.base_path + target, body=body).send
    replayable = body is None or isinstance(body, bytes)
    cache = connection.cache
    if cache is not None:
        plan = cache.plan(request.method, target, request.headers, has_body=request.body_exists)
        if plan is not None:
            return await _through_cache(
                request, observation, prepare_hook, connection=connection, cache=cache,
                plan=plan, send=send, public_base=public_base,
            )
    answer = await exchange(connection, request.method, send, replayable=replayable)
    if cache is not None and invalidates(request.method, answer.response.status):
        cache.invalidate(split_target(target)[0])
    try:
        response = answer.response
        headers = client_response_headers(
            response.headers, upstream_base=connection.settings.upstream, public_base=public_base)
        whole = _whole_answer(request, response, headers, observation, answer.head)
        if whole is not None:
            return whole
        return await _relay(request, response, headers, observation=observation,
                            prepare_hook=prepare_hook, head=answer.head)
    finally:
        answer.release()


async def _through_cache(
    request: web.BaseRequest,
    observation: Observation,
    prepare_hook: PrepareHook,
    *,
    connection: Connection,
    cache: ResponseCache,
    plan: Plan,
    send: Send,
    public_base: str,
) -> web.StreamResponse:
    """A GET the cache may answer: a hit, the entry a concurrent miss fetched, or a miss."""
    upstream_base = connection.settings.upstream
    entry = await cache.lookup(plan)
    if entry is None:
        answer: Answer | None = None
        try:
            answer = await exchange(connection, request.method, send, replayable=True)
            upstream = answer.response
            ttl = cache.storable(plan, upstream.status, upstream.headers)
            if ttl is not None and not answer.head:
                limit = cache.settings.max_body_bytes
                answer.head, complete = await read_head(connection, answer, limit)
                if complete:
                    entry = cache.store(plan, upstream.status, upstream.headers, answer.head, ttl)
            if entry is None:
                cache.done(plan)  # waiters fetch on their own while this answer streams
                headers = client_response_headers(
                    upstream.headers, upstream_base=upstream_base, public_base=public_base)
                headers["X-Cache"] = "MISS"
                whole = _whole_answer(request, upstream, headers, observation, answer.head)
                if whole is not None:
                    return whole
                return await _relay(request, upstream, headers, observation=observation,
                                    prepare_hook=prepare_hook, head=answer.head)
        finally:
            cache.done(plan)
            if answer is not None:
                answer.release()
        outcome = "MISS"
    else:
        outcome = "HIT"
    headers = client_response_headers(
        entry.headers, upstream_base=upstream_base, public_base=public_base
    )
    headers.update(served_headers(entry, cache.now(), outcome))
    return web.Response(status=entry.status, headers=headers, body=entry.body)


class _Sender:
    """What every attempt of one request sends (exchange.py makes the attempts): the request,
    where to, its body; each attempt brings its own credentials."""

    __slots__ = ("body", "connection", "observation", "request", "state", "target")

    def __init__(self, request: web.BaseRequest, state: ProxyState, observation: Observation,
                 *, connection: Connection, target: str, body: Body) -> None:
        self.request, self.state, self.observation = request, state, observation
        self.connection, self.target, self.body = connection, target, body

    def send(self, credentials: Mapping[str, str]) -> Awaitable[upstream.Response]:
        """One attempt upstream; a span of its own when traces are exported."""
        trace = self.observation.trace
        if trace.server is None:
            return self._once(credentials, trace.traceparent)  # no coroutine around it
        return self._traced(credentials, trace.server)

    async def _traced(self, credentials: Mapping[str, str], server: ServerSpan
                      ) -> upstream.Response:
        trace = self.observation.trace
        origin = self.connection.origin
        attempt = server.attempt(
            method=self.request.method, scheme=origin.scheme, host=origin.host,
            port=origin.port, origin=f"{origin.scheme}://{origin.host_header}",
            path=split_target(self.target)[0], connection=self.connection.name,
            resend_count=trace.attempts,
        )
        trace.attempts += 1
        try:
            response = await self._once(credentials, attempt.traceparent)
        except BaseException as exc:
            attempt.end(status=None, error=type(exc).__name__)
            raise
        attempt.end(status=response.status)
        return response

    async def _once(self, credentials: Mapping[str, str], traceparent: str
                    ) -> upstream.Response:
        request, connection, observation = self.request, self.connection, self.observation
        lines, length = upstream_request_fields(
            request.headers,
            client_address=request.remote,
            scheme=request.scheme,
            host=request.host,
            credentials=credentials,
            replaced=connection.credential_names,
            defaults=connection.default_headers,
            request_id=observation.request_id,
            traceparent=traceparent,
            keep_tracestate=observation.trace.keep_tracestate,
        )
        headers = upstream.HeaderLines(lines, length)
        sent = time.perf_counter()
        try:
            response = await self.state.pool.request(
                connection.route,
                request.method,
                self.target,
                headers,
                self.body,
                connect_timeout=connection.settings.connect_timeout_seconds,
                read_timeout=connection.settings.read_timeout_seconds,
            )
        except upstream.EgressProxyError as exc:
            observation.upstream_seconds += time.perf_counter() - sent
            log.warning("connection %s: %s", connection.name, exc)
            error = GatewayTimeout if isinstance(exc, TimeoutError) else BadGateway
            raise error(
                f"the upstream of connection {connection.name!r} could not be reached: {exc}",
                connection=connection.name,
                unsent=True,
            ) from None
        except TimeoutError as exc:
            observation.upstream_seconds += time.perf_counter() - sent
            raise GatewayTimeout(
                f"the upstream of connection {connection.name!r} did not answer in time",
                connection=connection.name,
                unsent=isinstance(exc, upstream.ConnectTimeout),
            ) from None
        except (upstream.UpstreamError, ValueError) as exc:
            observation.upstream_seconds += time.perf_counter() - sent
            raise BadGateway(
                f"the upstream of connection {connection.name!r} could not be reached "
                f"({type(exc).__name__})",
                connection=connection.name,
                unsent=isinstance(exc, upstream.ConnectError),
            ) from None
        waited = time.perf_counter() - sent
        observation.upstream_seconds += waited
        metrics = connection.metrics
        metrics.upstream_latency.observe(waited)
        if response.status == 429:
            metrics.rate_limited.inc()
        return response


def _whole_answer(request: web.BaseRequest, answer: upstream.Response,
                  headers: CIMultiDict[str], observation: Observation, head: bytes
                  ) -> web.Response | None:
    """The client's response when the whole answer is here already (a small one usually
    arrives with its headers): one write, no stream machinery. None: it is relayed."""
    rest = answer.buffered()
    if rest is None or request.method == "HEAD":
        return None
    headers.popall("Content-Length", None)
    observation.headers_sent = time.perf_counter()
    return web.Response(status=answer.status, reason=answer.reason, headers=headers,
                        body=head + rest if head else rest)


async def _relay(
    request: web.BaseRequest,
    answer: upstream.Response,
    headers: CIMultiDict[str],
    *,
    observation: Observation,
    prepare_hook: PrepareHook,
    head: bytes = b"",
) -> web.StreamResponse:
    """Stream the answer to the client (`headers` are the client's); `head` is the start of
    its body, read already."""
    response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
    prepare_hook(response)
    await response.prepare(request)
    observation.headers_sent = time.perf_counter()
    sent = len(head)
    try:
        if head:
            await response.write(head)
        async for chunk in answer.iter_chunks():
            sent += len(chunk)
            await response.write(chunk)
    except upstream.UpstreamError as exc:
        # Headers are gone already: the only honest signal left is an aborted connection.
        log.warning("upstream broke off a response to %s %s (%s)", request.method,
                    request.path, type(exc).__name__)
        if request.transport is not None:
            request.transport.abort()  # the server then drops the connection quietly
        return response
    finally:
        observation.body_bytes = sent
    await response.write_eof()
    return response
