"""What an operator sees of each request: its request id, its access line, its metrics.

The `observe` middleware is the outermost one. For each request it picks the request id (the
client's `X-Request-Id` when it is sane, else a new one: `telemetry.audit.request_id`; the
audit line uses the same), counts the request in flight, and when the answer is known writes one
access-log line and counts it by connection, method and status class. `forward` fills in the
request's `Observation` (which connection, time spent upstream, when the response headers went
out), from which the proxy-added latency follows.

The request id goes upstream (see `forward`) and back to the client on every response, set in
`on_response_prepare` so that streamed responses carry it too. The trace (`begin_trace`, see
proxy.telemetry.tracing) is picked beside it: its id is on the access and audit lines, its
`traceparent` goes upstream, and a forwarded request is a span when traces are exported.

The endpoints that report on it (health, readiness, metrics) are in proxy/ops/endpoints.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.core.http import split_target
from proxy.forwarding.connection import Connection
from proxy.forwarding.headers import REQUEST_ID as REQUEST_ID_HEADER
from proxy.inbound.access import ACCESS_NOTE, DOOR
from proxy.inbound.policy import Area, area_of
from proxy.telemetry import tracing
from proxy.telemetry.audit import REQUEST_ID as REQUEST_ID_KEY
from proxy.telemetry.audit import TRACE_ID as TRACE_ID_KEY
from proxy.telemetry.audit import request_id as pick_request_id
from proxy.telemetry.logs import CURRENT_REQUEST_ID, access_line
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.records import ACCESS_LOGGER
from proxy.telemetry.tracing import Trace

CLIENT_CLOSED_REQUEST: Final = 499  # nginx's code for "the client went away first"
# Probes and scrapes come every few seconds: their access lines are debug, not info.
QUIET_PATHS: Final = frozenset({"/_proxy/healthz", "/_proxy/readyz", "/_proxy/metrics"})

access_log = logging.getLogger(ACCESS_LOGGER)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Observation:
    """One request's observations, filled in as it goes."""

    __slots__ = ("body_bytes", "connection", "headers_sent", "request_id", "started", "trace",
                 "upstream_seconds")

    def __init__(self, request_id: str, started: float, trace: Trace) -> None:
        self.request_id = request_id
        self.started = started
        self.trace = trace  # its trace id, what goes upstream, its span when exporting
        self.connection: Connection | None = None
        self.upstream_seconds = 0.0
        self.headers_sent: float | None = None
        self.body_bytes: int | None = None  # of a relayed (streamed) response


OBSERVATION: Final = web.RequestKey("observation", Observation)


@dataclass
class Traffic:
    """Requests in flight, and whether the server is draining them before it stops."""

    in_flight: int = 0
    last_change: float = 0.0  # time.perf_counter() of the last arrival or departure
    draining: bool = False


TRAFFIC: Final = web.AppKey("traffic", Traffic)
METRICS: Final = web.AppKey("metrics", Metrics)
# On the ops listener's own small app: the proxy's app it reports on.
PROXY_APP: Final = web.AppKey("proxy_app", web.Application)


def proxy_app(request: web.Request) -> web.Application:
    """The proxy's application: the one serving `request`, or the one an ops app watches."""
    return request.app.get(PROXY_APP, request.app)


def observe_middleware(metrics: Metrics, traffic: Traffic) -> Middleware:
    clock = time.perf_counter

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = clock()
        # One id for the request: the audit line, the access line, upstream and the answer.
        request_id = pick_request_id(request.headers.get(REQUEST_ID_HEADER))
        request[REQUEST_ID_KEY] = request_id
        # A span for what the router sends to the forwarder; the pages get a trace id only.
        if tracing.exporting() and _forwarded(request):
            trace = begin_trace(request, request_id)
        else:
            trace = tracing.context_of(request.headers)
        request[TRACE_ID_KEY] = trace.trace_id
        observation = Observation(request_id, started, trace)
        request[OBSERVATION] = observation
        CURRENT_REQUEST_ID.set(request_id)  # a task per request: no reset needed
        traffic.in_flight += 1
        status = 500
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            status = response.status
            return response  # noqa: TRY300 - the finally below needs `response`
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED_REQUEST
            raise
        finally:
            ended = clock()
            traffic.in_flight -= 1
            traffic.last_change = ended
            count_request(metrics, request.method, status, observation)
            if trace.server is not None:
                note = request.get(ACCESS_NOTE)
                finish_trace(observation, status, None if note is None else note.client)
            level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
            if access_log.isEnabledFor(level):
                log_access(level, request, observation, status=status, seconds=ended - started,
                            response=response)

    return observe


def _forwarded(request: web.Request) -> bool:
    """Whether the router sends `request` to the forwarder (the access middleware's rule)."""
    doorway = request.app.get(DOOR)
    if doorway is None:
        return False
    return area_of(request.rel_url.path_safe, doorway.door.callback_paths) is Area.FORWARD


def begin_trace(request: web.BaseRequest, request_id: str) -> Trace:
    """A forwarded request's trace, a span when exporting (see proxy.telemetry.tracing)."""
    if not tracing.exporting():
        return tracing.context_of(request.headers)
    return tracing.begin(
        request.headers, method=request.method, path=split_target(request.raw_path)[0],
        scheme=request.scheme, client_address=request.remote, request_id=request_id,
    )


def finish_trace(observation: Observation, status: int, client: str | None) -> None:
    """The request's span (if it has one) ends, with what is known of it now."""
    trace = observation.trace
    if trace.server is None:
        return
    connection = observation.connection
    tracing.finish(trace, status=status, client=client,
                   connection=None if connection is None else connection.name)


def count_request(metrics: Metrics, method: str, status: int, observation: Observation) -> None:
    """A finished request in the metrics: by connection (or unrouted), method and status
    class, and the latency the proxy added to it."""
    connection = observation.connection
    if connection is None:
        metrics.unrouted.request_done(method, status)
        return
    bound = connection.metrics
    bound.request_done(method, status)
    if observation.headers_sent is not None:
        added = observation.headers_sent - observation.started - observation.upstream_seconds
        bound.added_latency.observe(max(0.0, added))


def log_access(
    level: int,
    request: web.BaseRequest,
    observation: Observation,
    *,
    status: int,
    seconds: float,
    response: web.StreamResponse | None,
) -> None:
    path = split_target(request.raw_path)[0]  # never the query: its values may be personal
    connection = observation.connection
    sent = observation.body_bytes
    if sent is None and response is not None and not response.prepared:
        sent = response.content_length  # a whole response, written after this middleware
    access_line(level, (  # in the order of ACCESS_FIELDS
        observation.request_id, observation.trace.trace_id, request.remote, request.method,
        path, status, round(seconds * 1000, 3), round(observation.upstream_seconds * 1000, 3),
        None if connection is None else connection.name, sent,
    ))


def response_hook(traffic: Traffic) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
        observation = request.get(OBSERVATION)
        if observation is not None:
            response.headers[REQUEST_ID_HEADER] = observation.request_id
        if traffic.draining:
            # The connection closes after this answer, and says so (RFC 9112 §9.6): the client
            # opens its next one to a server that is still accepting. (aiohttp has chosen the
            # Connection header before this hook runs, so it is set here as well.)
            response.force_close()
            response.headers["Connection"] = "close"

    return on_response_prepare
