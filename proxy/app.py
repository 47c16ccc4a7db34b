"""Composition root: settings in, a runnable aiohttp application out.

Order matters and is spelled out here: middlewares (observe outermost, so it sees the final
status of everything; audit; problems; then the door: guard and access policy), the proxy's own
routes under /_proxy/ and the callback path, then the catch-all forwarder. Long-lived resources
(the one upstream ClientSession, the token refreshers, the audit log's writer) are created and
torn down in cleanup_ctx; the metrics registry belongs to the app. Traces are exported (when the
OTEL_* variables ask: proxy.telemetry.tracing) from its start to its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from proxy.config import Settings
from proxy.core.errors import ProxyError
from proxy.forwarding.connection import build_connection
from proxy.forwarding.dataplane import DATA_PLANE, data_plane, http_problem, problem_response
from proxy.forwarding.forward import forward
from proxy.forwarding.observe import (
    METRICS,
    PROXY_APP,
    TRAFFIC,
    Traffic,
    observe_middleware,
    response_hook,
)
from proxy.forwarding.state import PROXY_STATE, ProxyState
from proxy.forwarding.upstream import Pool
from proxy.inbound.access import DOOR, QUOTAS, Doorway, access
from proxy.inbound.quotas import ClientQuotas
from proxy.ops.api import setup_api
from proxy.ops.consent import setup_consent
from proxy.ops.console import setup_console
from proxy.ops.endpoints import healthz, metrics, readyz
from proxy.ops.reload import SettingsSource, door_for, setup_reload
from proxy.telemetry import tracing
from proxy.telemetry.audit import audit_middleware, setup_audit
from proxy.telemetry.metrics import Metrics
from proxy.tokens.backends import open_store
from proxy.tokens.store import TokenStore

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STORE = web.AppKey("store", TokenStore)


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error a client sees is application/problem+json, never a stack trace."""
    try:
        return await handler(request)
    except ProxyError as error:
        return problem_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_problem(exc)


async def _not_found(_request: web.Request) -> web.StreamResponse:
    """Under /_proxy/ nothing is forwarded: a path the proxy does not serve is a 404."""
    raise web.HTTPNotFound


async def _tracing(_app: web.Application) -> AsyncIterator[None]:
    """Spans exported while the app runs, if the OTEL_* variables ask for them (and the spans
    still queued sent at its end)."""
    exporting = tracing.setup()
    yield
    if exporting:
        await asyncio.to_thread(tracing.shutdown)


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    store: TokenStore | None = None,
    reload_from: SettingsSource | None = None,
) -> web.Application:
    """The proxy's application; `reload_from` reads the configuration file again (reload)."""
    traffic = Traffic()
    registry = Metrics()
    registry.count_in_flight(lambda: traffic.in_flight)
    app = web.Application(
        middlewares=[
            observe_middleware(registry, traffic),
            audit_middleware(),
            problems,
            access,
        ],
        client_max_size=1024**2,
    )
    app[DOOR] = Doorway(door_for(settings))
    quotas = app[QUOTAS] = ClientQuotas(
        on_refused=lambda client, limit: registry.client_quota_refused.labels(client, limit).inc())
    quotas.configure(settings.clients)
    app[DATA_PLANE] = data_plane  # forwarded requests skip the router (proxy.server.ProxyRunner)
    app.cleanup_ctx.append(_tracing)
    setup_audit(app, settings.audit)
    owns_store = store is None
    app[STORE] = store if store is not None else open_store(settings.store)
    app[TRAFFIC] = traffic
    app[METRICS] = registry
    app.on_response_prepare.append(response_hook(traffic))

    async def proxy_state(app: web.Application) -> AsyncIterator[None]:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,  # bytes pass through untouched, Content-Encoding stays true
            cookie_jar=aiohttp.DummyCookieJar(),  # one client's cookies never reach another's
            trust_env=False,
        )
        connections = {
            c.name: build_connection(
                c, session=session, store=app[STORE], clock=clock, metrics=registry
            )
            for c in settings.connections
        }
        store = app[STORE]
        pool = Pool(keepalive_timeout=30)
        # Made (and so subscribed to the store) before loading, so that no set saved in
        # between goes unnoticed.
        state = app[PROXY_STATE] = ProxyState(
            settings=settings,
            store=store,
            session=session,
            pool=pool,
            connections=connections,
            clock=clock,
        )
        try:
            for connection in connections.values():
                await connection.manager.load()
        except BaseException:
            await _close(session, store if owns_store else None)
            raise
        registry.watch(lambda: [c.report(clock()) for c in state.connections.values()])
        for connection in connections.values():
            state.start_refresher(connection)
        watcher = asyncio.create_task(store.watch(), name="store-watcher")
        yield
        tasks = [*state.refreshers.values(), *state.retiring, watcher]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for connection in state.connections.values():
            await connection.manager.close()
        await pool.close()
        await _close(session, store if owns_store else None)

    app.cleanup_ctx.append(proxy_state)
    app.router.add_get("/_proxy/healthz", healthz)
    app.router.add_get("/_proxy/readyz", readyz)
    app.router.add_get("/_proxy/metrics", metrics)
    setup_consent(app, settings, clock=clock)
    setup_reload(app, reload_from)
    setup_api(app)
    setup_console(app)
    app.router.add_route("*", "/_proxy/{tail:.*}", _not_found)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def create_ops_app(proxy: web.Application) -> web.Application:
    """The ops listener's application: health, readiness and metrics of `proxy`, nothing else.

    It forwards nothing and serves no page or action, so it can face the network (probes,
    Prometheus) while the proxy itself stays on loopback.
    """
    ops = web.Application()
    ops[PROXY_APP] = proxy
    ops.router.add_get("/_proxy/healthz", healthz)
    ops.router.add_get("/_proxy/readyz", readyz)
    ops.router.add_get("/_proxy/metrics", metrics)
    return ops


async def _close(session: aiohttp.ClientSession, store: TokenStore | None) -> None:
    await session.close()
    if store is not None:
        await store.close()
