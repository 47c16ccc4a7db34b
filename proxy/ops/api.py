"""The admin API under /_proxy/api/: what the page shows and does, as JSON, for scripts.

GET  /_proxy/api/connections                       every connection and its health
GET  /_proxy/api/connections/{name}                one connection in detail
POST /_proxy/api/connections/{name}/revoke         end the grant (every replica stops at once)
POST /_proxy/api/connections/{name}/reconnect      the login URL a person opens to link again
PUT  /_proxy/api/connections/{name}/subscription-key  replace the key kept with the tokens
GET  /_proxy/api/config                            the configuration in force, secrets masked
POST /_proxy/api/reload                            re-read the file (proxy.ops.reload)
GET  /_proxy/api/openapi.json                      the OpenAPI 3.1 document of all of this

The access middleware lets only the admin networks (and the admin key, when one is set) in,
as for the page. A browser cannot be made to call it from another site: a change must come
from the same origin (Origin / Sec-Fetch-Site), and a body must be `application/json`, which
no HTML form can send. The actions are those of the page (proxy.ops.actions).

Reconnect answers with the proxy's own login URL, not the identity service's: the login's
`state` and PKCE verifier are kept in the cookie of the browser that opens it, so a link can be
sent to the person who consents and the callback can only complete in their browser.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from proxy.config.effective import effective_config
from proxy.forwarding.connection import Connection
from proxy.forwarding.state import PROXY_STATE
from proxy.inbound import csrf
from proxy.ops import actions, views
from proxy.ops.layout import LOGIN_PATH
from proxy.ops.openapi import OPENAPI_PATH, document
from proxy.ops.responses import api_problem

API_PATH = "/_proxy/api"
_JSON = "application/json"


def setup_api(app: web.Application) -> None:
    app.router.add_get(f"{API_PATH}/connections", list_connections)
    app.router.add_get(f"{API_PATH}/connections/{{name}}", show_connection)
    app.router.add_post(f"{API_PATH}/connections/{{name}}/revoke", revoke)
    app.router.add_post(f"{API_PATH}/connections/{{name}}/reconnect", reconnect)
    app.router.add_put(f"{API_PATH}/connections/{{name}}/subscription-key",
                       replace_subscription_key)
    app.router.add_get(f"{API_PATH}/config", show_config)
    app.router.add_get(OPENAPI_PATH, openapi)


def _answer(body: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


def _connection(request: web.Request) -> Connection | web.Response:
    name = request.match_info["name"]
    connection = request.app[PROXY_STATE].connections.get(name)
    if connection is None:
        return api_problem(404, "no-such-connection", "No such connection",
                           "No connection of that name is configured.")
    return connection


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    """The JSON object a change sends (an empty body is `{}`), or the problem that refuses it."""
    if not csrf.same_origin(request.headers, host=request.host):
        return api_problem(403, "forbidden", "Refused", "This request came from another site.")
    raw = await request.read()
    if not raw:
        return {}
    if request.content_type != _JSON:
        return api_problem(415, "unsupported-media-type", "Send JSON",
                           "A request body must be application/json.")
    try:
        body = json.loads(raw)
    except ValueError:
        return api_problem(400, "invalid-json", "The body is not JSON",
                           "Send a JSON object.")
    if not isinstance(body, dict):
        return api_problem(400, "invalid-json", "The body is not a JSON object",
                           "Send a JSON object.")
    return body


async def _change(request: web.Request) -> tuple[dict[str, Any], Connection] | web.Response:
    """A change's body and its connection, or the problem that refuses it (as the page's
    forms have `_form_and_connection`)."""
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    connection = _connection(request)
    if isinstance(connection, web.Response):
        return connection
    return body, connection


def _refused(refused: actions.Refused) -> web.Response:
    return api_problem(refused.status, refused.slug, refused.title, refused.detail)


async def list_connections(request: web.Request) -> web.Response:
    state = request.app[PROXY_STATE]
    now = state.clock()
    return _answer({"connections": [views.summary(c, now) for c in state.connections.values()]})


async def show_connection(request: web.Request) -> web.Response:
    connection = _connection(request)
    if isinstance(connection, web.Response):
        return connection
    return _answer(views.detail(connection, request.app[PROXY_STATE].clock()))


async def revoke(request: web.Request) -> web.Response:
    found = await _change(request)
    if isinstance(found, web.Response):
        return found
    _, connection = found
    try:
        revoked = await actions.revoke(connection, by="admin API")
    except actions.Refused as refused:
        return _refused(refused)
    return _answer({"connection": connection.name, "revoked": True,
                    "store_updated": revoked is actions.Revoked.DONE})


async def reconnect(request: web.Request) -> web.Response:
    found = await _change(request)
    if isinstance(found, web.Response):
        return found
    _, connection = found
    try:
        actions.check_reconnectable(connection)
    except actions.Refused as refused:
        return _refused(refused)
    url = request.url.with_path(LOGIN_PATH).with_query(connection=connection.name)
    return _answer({"connection": connection.name, "login_url": str(url)})


async def replace_subscription_key(request: web.Request) -> web.Response:
    found = await _change(request)
    if isinstance(found, web.Response):
        return found
    body, connection = found
    key = body.get("subscription_key")
    if not isinstance(key, str):
        return api_problem(400, "invalid-subscription-key", "No subscription key",
                           'Send {"subscription_key": "..."}. Nothing was changed.')
    try:
        await actions.replace_subscription_key(connection, key.strip(), by="admin API")
    except actions.Refused as refused:
        return _refused(refused)
    return _answer({"connection": connection.name, "subscription_key": "page"})


async def show_config(request: web.Request) -> web.Response:
    return _answer(effective_config(request.app[PROXY_STATE].settings))


async def openapi(_request: web.Request) -> web.Response:
    return _answer(document())
