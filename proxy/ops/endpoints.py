"""The proxy's own probes: health, readiness, and the Prometheus scrape.

Readiness also reports the token store, but does not depend on it: while Redis restarts,
every replica keeps serving with the token it holds, and taking them all out of rotation at
once would turn a store hiccup into an outage. A connection whose token ran out while the
store was away is not ready, and says why in `last_error`.

They answer on the proxy's listener and on the ops listener (server.py), whose small app points
at the proxy's app through PROXY_APP.
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from proxy.forwarding.observe import METRICS, TRAFFIC, proxy_app
from proxy.forwarding.state import PROXY_STATE
from proxy.ops.views import health
from proxy.tokens.backends import describe_store
from proxy.tokens.store import StoreError

# Probes give up after a second or so: the store's answer must not make readiness time out.
STORE_CHECK_SECONDS: Final = 0.5


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = proxy_app(request)
    state = app[PROXY_STATE]
    draining = app[TRAFFIC].draining
    now = state.clock()
    connections = {}
    for name, connection in state.connections.items():
        connections[name] = {**health(connection.report(now)), "quota": connection.quota_stats()}
    ready = not draining and all(c["ready"] for c in connections.values())
    store: dict[str, object] = {"where": describe_store(state.settings.store), "ok": True}
    try:
        async with asyncio.timeout(STORE_CHECK_SECONDS):
            await state.store.check()
    except StoreError as exc:
        store.update(ok=False, error=str(exc))
    except TimeoutError:
        store.update(ok=False, error=f"no answer within {STORE_CHECK_SECONDS} s")
    return web.json_response(
        {"ready": ready, "draining": draining, "connections": connections, "store": store},
        status=200 if ready else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    body, content_type = proxy_app(request)[METRICS].render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})
