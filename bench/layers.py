"""The proxy with layers taken off, to see what each costs per request (bench part `layers`).

    python bench/layers.py VARIANT CONFIG PORT

VARIANT is one of:
  full         the proxy as `serve` runs it
  no-audit     without the audit middleware
  no-access    without the guard and access-policy middleware
  bare         no middleware at all: the forwarder alone, behind aiohttp's router
  minimal      no middleware, and a handler that only sends the request on through the same
               upstream client and answers with the body (no headers rules, no tokens, no
               retries): what forwarding itself costs on aiohttp's server
None of these but `full` is a way to run the proxy: they exist to be measured.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

from proxy import app as composition
from proxy.cli import new_event_loop
from proxy.config import load
from proxy.forward import forward
from proxy.state import PROXY_STATE

VARIANTS = ("full", "no-audit", "no-access", "bare", "minimal")


def build(variant: str, config: Path) -> web.Application:
    settings = load(config, {})
    app = composition.create_app(settings)
    dropped = {"no-audit": {"audit"}, "no-access": {"access"},
               "bare": {"audit", "problems", "access"},
               "minimal": {"audit", "problems", "access"}}.get(variant, set())
    kept = [m for m in app.middlewares if getattr(m, "__name__", "") not in dropped]
    app._middlewares = type(app.middlewares)(kept)  # noqa: SLF001 - a measuring variant
    if variant == "minimal":
        connection = settings.connections[0]
        fixed = CIMultiDict([("Accept", "application/json"),
                             ("X-Subscription-Key", "demo-subscription-key")])

        async def minimal(request: web.Request) -> web.StreamResponse:
            state = request.app[PROXY_STATE]
            conn = state.connections[connection.name]
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

        for route in app.router.routes():
            if route.handler is forward:
                route._handler = minimal  # noqa: SLF001 - a measuring variant
    return app


if __name__ == "__main__":
    variant, config, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")
    web.run_app(build(variant, config), host="127.0.0.1", port=port, loop=new_event_loop(),
                access_log=None, print=None, handler_cancellation=True)
