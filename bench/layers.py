"""The proxy with layers taken off, to see what each costs per request (bench part `layers`).

    python bench/layers.py VARIANT CONFIG PORT

VARIANT is one of:
  lean            the floor of the design: aiohttp's low-level server (as the data plane
                  runs on) handing every forwarded request to a handler that only sends it on
                  through the same upstream client with the token and key added, and answers
                  with the body: no rules, no request id, no metrics, no access line
  full            the proxy as `serve` runs it: its data plane forwards the requests, JSON logs
                  at info level, one access line per request, every line through the redaction
                  filter
  app             the same requests through the application's router and middleware chain,
                  as every request went before the data plane (and as /_proxy/ requests go)
  no-access-line  as app, with the access lines off (as `--log-level warning` does)
  no-audit        ... and without the audit middleware
  no-access       ... and without the guard and access-policy middleware
  bare            ... and without the problem middleware: request ids and metrics (the observe
                  middleware, which the forwarder reads) in front of the forwarder
  minimal         as bare, with a handler that only sends the request on through the same
                  upstream client and answers with the body (no header rules, no retries, no
                  cache): what forwarding itself costs on aiohttp's server
From `app` on, each variant leaves out what the one before it kept. None but `full` is a way
to run the proxy: they exist to be measured.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

from proxy import app as composition
from proxy.acceptor import AcceptingSite, bound_sockets
from proxy.config import load
from proxy.core import redact
from proxy.core.secret import revealed_in
from proxy.forwarding.dataplane import DATA_PLANE, Handler
from proxy.forwarding.forward import forward
from proxy.forwarding.state import PROXY_STATE, ProxyState
from proxy.server import LISTEN_BACKLOG, ProxyRunner
from proxy.telemetry.logs import setup_logging
from proxy.workers import new_event_loop

VARIANTS = ("lean", "full", "app", "no-access-line", "no-audit", "no-access", "bare", "minimal")
_DROPPED = {"no-audit": {"audit"}, "no-access": {"audit", "access"},
            "bare": {"audit", "access", "problems"}, "minimal": {"audit", "access", "problems"}}


def build(variant: str, config: Path) -> web.Application:
    settings = load(config, {})
    redact.install(revealed_in(settings))
    if variant not in {"full", "app"}:
        logging.getLogger("proxy.access").setLevel(logging.WARNING)
    app = composition.create_app(settings)
    dropped = _DROPPED.get(variant, set())
    kept = [m for m in app.middlewares if getattr(m, "__name__", "") not in dropped]
    app._middlewares = type(app.middlewares)(kept)  # noqa: SLF001 - a measuring variant
    if variant in {"minimal", "lean"}:
        _send_on_only(app, settings.connections[0].name, lean=variant == "lean")
    return app


def _send_on_only(app: web.Application, name: str, *, lean: bool) -> None:
    """`minimal` and `lean`: forwarded requests only sent on, through the router or not."""
    fixed = CIMultiDict([("Accept", "application/json"),
                         ("X-Subscription-Key", "demo-subscription-key")])

    async def send_on(request: web.BaseRequest, state: ProxyState) -> web.StreamResponse:
        conn = state.connections[name]
        headers = CIMultiDict(fixed)
        headers["Authorization"] = f"Bearer {await conn.manager.bearer()}"
        answer = await state.pool.request(
            conn.origin, request.method, request.raw_path, headers, None,
            connect_timeout=5, read_timeout=5)
        try:
            body = answer.buffered()
            if body is None:
                body = await answer.read()
        finally:
            answer.release()
        return web.Response(body=body, status=answer.status,
                            content_type=answer.headers.get("Content-Type"))

    async def minimal(request: web.Request) -> web.StreamResponse:
        return await send_on(request, request.app[PROXY_STATE])

    def serve_lean(started: web.Application, app_handler: Handler) -> Handler:
        state = started[PROXY_STATE]

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            if request.path.startswith("/_proxy/"):  # the bench's health check
                return await app_handler(request)
            return await send_on(request, state)

        return handle

    if lean:
        app[DATA_PLANE] = serve_lean
    for route in app.router.routes():
        if route.handler is forward:
            route._handler = minimal  # noqa: SLF001 - a measuring variant


async def serve_full(app: web.Application, port: int) -> None:
    """As `serve` listens: ProxyRunner hands each request to the data plane first."""
    runner = ProxyRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    for sock in bound_sockets("127.0.0.1", port, backlog=LISTEN_BACKLOG):
        await AcceptingSite(runner, sock).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    variant, config, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")
    logs = setup_logging("info", "json")  # as `serve` logs, to stderr (the bench's log file)
    try:
        if variant in {"full", "lean"}:
            with asyncio.Runner(loop_factory=new_event_loop) as loop_runner:
                loop_runner.run(serve_full(build(variant, config), port))
        else:
            web.run_app(build(variant, config), host="127.0.0.1", port=port,
                        loop=new_event_loop(), access_log=None, print=None,
                        handler_cancellation=True)
    finally:
        logs.close()
