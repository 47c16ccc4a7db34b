"""The page at /_proxy/: every connection's state, and the forms that change it.

GET  /_proxy/                   the cards: state, token expiry, scopes granted vs asked, last
                                refresh, refresh-token age and warnings, Connect / Reconnect
POST /_proxy/subscription-key   enter or replace a linked connection's subscription key
POST /_proxy/revoke             end the grant at the identity service and forget it here
(POST /_proxy/login, the Connect button, is in `proxy.ops.consent` with the rest of consent.)

Every form carries the CSRF token kept in the encrypted session cookie (`proxy.ops.session`),
checked by `proxy.ops.responses.checked_form`; after an action the browser is sent back to the
page (303) with a fixed notice code, never with text from the request.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote, urlsplit

from aiohttp import web

from proxy.forwarding.connection import Connection
from proxy.forwarding.state import PROXY_STATE
from proxy.inbound import csrf
from proxy.ops import actions, pages, views
from proxy.ops.layout import KEY_PATH, REVOKE_PATH, STATUS_PATH
from proxy.ops.responses import PAGE_HEADERS, checked_form, page_response, problem_response
from proxy.ops.session import CONSENT, SESSION_MAX_AGE_SECONDS, pending_logins, store_pending

# A page's CSRF token is replaced once its session is this old, so a form stays good for at
# least the other half of the session's life.
_RENEW_AFTER_SECONDS: Final = SESSION_MAX_AGE_SECONDS / 2

# What the page says after an action: the redirect names a code, never free text.
NOTICES: Final[Mapping[str, pages.Notice]] = {
    "key-saved": pages.Notice("ok", "Saved the subscription key of {name}."),
    "revoked": pages.Notice("ok", "Revoked the grant of {name}: it is no longer linked."),
    "revoked-unsaved": pages.Notice(
        "warn",
        "Revoked the grant of {name} at the identity service, but the token store could not "
        "be updated (see the log). The stored tokens no longer work.",
    ),
}


def setup_console(app: web.Application) -> None:
    app.router.add_get(STATUS_PATH, status_page)
    app.router.add_post(KEY_PATH, save_subscription_key)
    app.router.add_post(REVOKE_PATH, revoke)


def card(connection: Connection, now: float) -> pages.ConnectionCard:
    settings = connection.settings
    return pages.ConnectionCard(
        name=connection.name,
        provider=settings.provider,
        prefix=settings.prefix,
        upstream=settings.upstream,
        client_id=settings.client_id,
        scopes_asked=settings.scopes,
        report=connection.report(now),
        key_source=views.key_source(connection),
        refresh_token_lifetime=settings.refresh_token_lifetime_days * 86400,
        interactive=connection.consent is not None,
    )


def notice_for(query: Mapping[str, str], names: frozenset[str]) -> pages.Notice | None:
    """The notice a redirect asked for, when both its code and its connection are known."""
    found = NOTICES.get(query.get("done", ""))
    name = query.get("connection", "")
    if found is None or name not in names:
        return None
    return pages.Notice(found.kind, found.text.format(name=name))


def _issuer_origins(connections: Mapping[str, Connection]) -> list[str]:
    origins = set()
    for connection in connections.values():
        if connection.settings.issuer is not None:
            parts = urlsplit(connection.settings.issuer)
            origins.add(f"{parts.scheme}://{parts.netloc}")
    return sorted(origins)


def _status_headers(nonce: str, connections: Mapping[str, Connection]) -> dict[str, str]:
    # Connect posts here, then is redirected to the identity service: form-action covers both.
    form_action = " ".join(["'self'", *_issuer_origins(connections)])
    return {
        **PAGE_HEADERS,
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
            f"base-uri 'none'; form-action {form_action}; frame-ancestors 'none'"
        ),
    }


async def status_page(request: web.Request) -> web.Response:
    consent = request.app[CONSENT]
    state = request.app[PROXY_STATE]
    now = consent.clock()
    session = await consent.load(request)
    token = csrf.token_of(session)
    renew = token is None or time.time() - session.created > _RENEW_AFTER_SECONDS
    storage = consent.storages[request.secure]
    fresh = None
    if renew:
        # A new session (and token), carrying the logins still pending in this browser.
        fresh = await storage.new_session()
        pending = pending_logins(session)
        if pending:
            store_pending(fresh, pending)
        token = csrf.new_token()
        csrf.put_token(fresh, token)
    assert token is not None
    nonce = secrets.token_urlsafe(16)
    html = pages.status_page(
        [card(c, now) for c in state.connections.values()],
        now=now,
        csrf_token=token,
        nonce=nonce,
        notice=notice_for(request.query, frozenset(state.connections)),
    )
    response = page_response(html, headers=_status_headers(nonce, state.connections))
    if fresh is not None:
        await storage.save_session(request, response, fresh)
    return response


def _back(done: str, connection: str) -> web.Response:
    location = f"{STATUS_PATH}?done={done}&connection={quote(connection, safe='')}"
    return web.Response(status=303, headers={**PAGE_HEADERS, "Location": location})


async def _form_and_connection(
    request: web.Request,
) -> tuple[Mapping[str, str], Connection] | web.Response:
    fields = await checked_form(request)
    if isinstance(fields, web.Response):
        return fields
    name = fields.get("connection", "")
    connection = request.app[PROXY_STATE].connections.get(name)
    if connection is None:
        return problem_response(404, "No such connection", "Reload the list of connections.")
    return fields, connection


async def save_subscription_key(request: web.Request) -> web.Response:
    found = await _form_and_connection(request)
    if isinstance(found, web.Response):
        return found
    fields, connection = found
    key = fields.get("subscription_key", "").strip()
    try:
        await actions.replace_subscription_key(connection, key, by="page")
    except actions.Refused as refused:
        return problem_response(refused.status, refused.title, refused.detail)
    return _back("key-saved", connection.name)


async def revoke(request: web.Request) -> web.Response:
    found = await _form_and_connection(request)
    if isinstance(found, web.Response):
        return found
    _, connection = found
    try:
        revoked = await actions.revoke(connection, by="page")
    except actions.Refused as refused:
        return problem_response(refused.status, refused.title, refused.detail)
    return _back(revoked.value, connection.name)
