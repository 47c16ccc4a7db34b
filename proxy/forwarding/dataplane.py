"""The data plane: a forwarded request's whole way through the proxy, in one coroutine.

aiohttp's low-level server hands every request to `DataPlane.__call__`. A request for the
proxy itself (`/_proxy/…`, an OAuth callback path), one whose path is percent-encoded (whose
area only the router's decoding may decide) and one that sends `Expect` goes to the
application (`web.Application`: routing, the middleware chain, the pages), unchanged. Every
other request is forwarded here, doing in order what those middlewares do for it — request id
and trace, in-flight count, audit line, problem+json for errors, the guard, the access policy,
then the forwarder, the metrics, the trace's span and the access line — without the router's
resolution, the middleware wrappers or the response-prepare signal. What they decide is the
same: the same functions decide it (guard, policy, forwarder), and the suite runs every
forwarding test through here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web

from proxy.core.errors import PROBLEM_CONTENT_TYPE, ProxyError
from proxy.core.http import split_target
from proxy.forwarding.forward import forward_request
from proxy.forwarding.headers import REQUEST_ID as REQUEST_ID_HEADER
from proxy.forwarding.observe import (
    CLIENT_CLOSED_REQUEST,
    METRICS,
    TRAFFIC,
    Observation,
    begin_trace,
    count_request,
    finish_trace,
    log_access,
)
from proxy.forwarding.state import PROXY_STATE
from proxy.inbound import guard
from proxy.inbound.access import DOOR, QUOTAS, AccessNote, Door, caller
from proxy.inbound.policy import PROXY_PATH, check_forward, source_address
from proxy.telemetry.audit import AUDITING, PROBLEM, Auditing, audited
from proxy.telemetry.audit import request_id as pick_request_id
from proxy.telemetry.logs import CURRENT_REQUEST_ID
from proxy.telemetry.records import ACCESS_LOGGER

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# Given the started application and its own handler, the listener's handler.
DataPlaneFactory = Callable[[web.Application, Handler], Handler]

access_log = logging.getLogger(ACCESS_LOGGER)

# The application's handler, wrapped by the data plane (set by the runner, see server.py).
DATA_PLANE: Final = web.AppKey[DataPlaneFactory]("data_plane")


def problem_response(error: ProxyError) -> web.Response:
    """The problem+json answer of an error a client is told about."""
    response = web.json_response(
        error.problem(), status=error.status, headers=error.headers,
        content_type=PROBLEM_CONTENT_TYPE,
    )
    response[PROBLEM] = error.slug
    return response


def http_problem(exc: web.HTTPException) -> web.Response:
    """aiohttp's own HTTP error (a 404 of the router, a 413 of a body) as problem+json."""
    body = {
        "type": f"urn:nmbrs-proxy:problem:http-{exc.status}",
        "title": exc.reason,
        "status": exc.status,
        "detail": exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else "",
    }
    # The exception's own Content-Type/Length describe its text body, not this one.
    headers = {k: v for k, v in exc.headers.items()
               if k.lower() not in {"content-type", "content-length"}}
    response = web.json_response(
        body, status=exc.status, headers=headers, content_type=PROBLEM_CONTENT_TYPE
    )
    response[PROBLEM] = f"http-{exc.status}"
    return response


class DataPlane:
    """The request handler of the proxy's listener; made once the application has started."""

    __slots__ = ("_app_handler", "_auditing", "_doorway", "_metrics", "_quotas", "_state",
                 "_traffic")

    def __init__(self, app: web.Application, app_handler: Handler) -> None:
        self._app_handler = app_handler
        # Holders a reload fills anew (proxy.ops.reload): read once per request.
        self._doorway = app[DOOR]
        self._auditing = app[AUDITING]
        self._quotas = app[QUOTAS]
        self._state = app[PROXY_STATE]
        self._metrics = app[METRICS]
        self._traffic = app[TRAFFIC]

    def __call__(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
        """The coroutine that answers `request` (this call itself is not one: a frame less)."""
        path = split_target(request.raw_path)[0]
        door = self._doorway.door
        if ("%" in path or path.startswith(PROXY_PATH) or path in door.callback_paths
                or hdrs.EXPECT in request.headers):
            return self._app_handler(request)
        return self._forward(request, path, door)

    async def _forward(self, request: web.BaseRequest, path: str, door: Door
                       ) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = pick_request_id(request.headers.get(REQUEST_ID_HEADER))
        trace = begin_trace(request, request_id)
        observation = Observation(request_id, started, trace)
        CURRENT_REQUEST_ID.set(request_id)  # a task per request: no reset needed
        self._traffic.in_flight += 1
        note = AccessNote()
        auditing = self._auditing  # as it is when the request arrives, a reload or not
        audit_at = None if auditing.log is None else time.time()
        status = 500
        response: web.StreamResponse | None = None
        try:
            try:
                release = self._admit(request, path, door, note)
                try:
                    response = await forward_request(request, self._state, observation,
                                                     self._finish_with(request_id))
                finally:
                    if release is not None:
                        release()
            except ProxyError as error:
                response = problem_response(error)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = http_problem(exc)
            if not response.prepared:
                self._finish(response, request_id)
                if audit_at is not None:  # send it now, so that its size is known
                    await response.prepare(request)
                    await response.write_eof()
            status = response.status
            return response  # noqa: TRY300 - the finally below needs `response`
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED_REQUEST
            raise
        finally:
            self._record(request, observation, note=note, status=status, response=response,
                         auditing=auditing, audit_at=audit_at)

    def _record(self, request: web.BaseRequest, observation: Observation, *,
                note: AccessNote, status: int, response: web.StreamResponse | None,
                auditing: Auditing, audit_at: float | None) -> None:
        """The request is over: out of the in-flight count, into the metrics, the trace, the
        audit log (when on) and the access log."""
        ended = time.perf_counter()
        traffic = self._traffic
        traffic.in_flight -= 1
        traffic.last_change = ended
        count_request(self._metrics, request.method, status, observation)
        finish_trace(observation, status, note.client)
        seconds = ended - observation.started
        if audit_at is not None:  # audited when it arrived
            auditing.write(audited(
                request, at=audit_at, request_id=observation.request_id,
                trace_id=observation.trace.trace_id, note=note, status=status,
                include_query=auditing.settings.include_query, duration=seconds,
                bytes_out=0 if response is None else response.body_length,
                problem=None if response is None else response.get(PROBLEM),
            ))
        if access_log.isEnabledFor(logging.INFO):
            log_access(logging.INFO, request, observation, status=status, seconds=seconds,
                       response=response)

    def _admit(self, request: web.BaseRequest, path: str, door: Door, note: AccessNote
               ) -> Callable[[], None] | None:
        """The guard, then the policy (as the access middleware applies them); what releases
        the client's quota when the request is done (None: it has none)."""
        guard.check_request(request.method, request.raw_path,
                            (request.version.major, request.version.minor),
                            request.headers.items())
        client = caller(door.policy, request)  # its key, or its TLS client certificate
        connection, upstream_path = door.route(path)
        note.client = client.name if client is not None else None
        note.connection = connection
        if client is None:
            return None
        check_forward(client, source=source_address(request.remote), connection=connection,
                      method=request.method, path=upstream_path)
        return self._quotas.admit(client, time.monotonic())

    def _finish_with(self, request_id: str) -> Callable[[web.StreamResponse], None]:
        return functools.partial(self._finish, request_id=request_id)

    def _finish(self, response: web.StreamResponse, request_id: str) -> None:
        """What the application's on_response_prepare hook does for a routed request."""
        response.headers[REQUEST_ID_HEADER] = request_id
        if self._traffic.draining:
            response.force_close()
            response.headers["Connection"] = "close"



def data_plane(app: web.Application, app_handler: Handler) -> Handler:
    """The listener's handler for `app`, once it has started (see DATA_PLANE)."""
    return DataPlane(app, app_handler)
