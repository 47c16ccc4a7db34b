"""Health and readiness: is the process up, and can every connection serve a request now."""

from __future__ import annotations

from aiohttp import web

from proxy.state import PROXY_STATE


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[PROXY_STATE]
    connections = {}
    for name, connection in state.connections.items():
        status = connection.manager.status()
        connections[name] = {
            "ready": status.ready,
            "state": status.state.value,
            "needs_consent": status.needs_consent,
            "last_error": status.last_error,
            "quota": connection.quota_stats(),
        }
    ready = all(c["ready"] for c in connections.values())
    return web.json_response(
        {"ready": ready, "connections": connections}, status=200 if ready else 503
    )
