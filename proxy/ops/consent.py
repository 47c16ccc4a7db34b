"""Consent routes: /_proxy/login (GET, or POST from the page) and the callback at each redirect
URI's path. The status page and its other forms are in `proxy.ops.console`; the session cookie
the login keeps its `state` and PKCE verifier in is `proxy.ops.session`.

Every login starts a fresh session (a new cookie value; only other pending logins are carried
over, capped), and a callback removes the state it used, whatever the outcome, so a state is
good for one exchange only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Final

from aiohttp import web
from yarl import URL

from proxy.config import Settings
from proxy.forwarding.connection import Connection, valid_subscription_key
from proxy.forwarding.state import PROXY_STATE
from proxy.oauth.protocol import (
    GrantError,
    authorize_url,
    new_pkce_verifier,
    new_state,
    pkce_challenge,
)
from proxy.oauth.token_set import TokenSet
from proxy.ops.layout import LOGIN_PATH, STATUS_PATH
from proxy.ops.outcome_pages import linked_page
from proxy.ops.responses import PAGE_HEADERS, checked_form, page_response, problem_response
from proxy.ops.session import (
    CONSENT,
    LOGIN_MAX_AGE_SECONDS,
    Clock,
    Consent,
    PendingLogin,
    capped,
    match_state,
    pending_logins,
    store_pending,
    unexpired,
)
from proxy.tokens.grants import AuthorizationCodeGrant
from proxy.tokens.store import StoreError

log = logging.getLogger(__name__)

# The IdP's `error` / `error_description` are shown, cut to this length.
_SHOWN_MAX: Final = 300
# Identity-service errors that mean "try later", not "this request was wrong".
_UNAVAILABLE_ERRORS: Final = frozenset({"temporarily_unavailable", "server_error"})


def callback_path(redirect_uri: str) -> str:
    """The path the callback is served at, in the form aiohttp's router matches."""
    return URL(redirect_uri).path_safe or "/"


def setup_consent(app: web.Application, settings: Settings, *, clock: Clock = time.time) -> None:
    """Register the login (GET and POST) and a callback per redirect-URI path."""
    consent = Consent(settings=settings, clock=clock)
    app[CONSENT] = consent
    app.on_startup.append(consent.startup)
    app.router.add_get("/_proxy", _to_status_page)
    app.router.add_get(LOGIN_PATH, login)
    app.router.add_post(LOGIN_PATH, login_form)
    redirect_uris = {c.redirect_uri for c in settings.connections if c.redirect_uri is not None}
    consent.callback_paths = frozenset(callback_path(uri) for uri in redirect_uris)
    for path in sorted(consent.callback_paths):
        # A plain resource: a path with "{" in it is not mistaken for a route pattern.
        resource = web.PlainResource(path)
        app.router.register_resource(resource)
        resource.add_route("GET", callback)


def _shown(text: str, *, hide: tuple[str, ...] = ()) -> str:
    """Text from the identity service or the address bar, cut short, with known values hidden."""
    for value in hide:
        if value:
            text = text.replace(value, "[hidden]")
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 1] + "…"


def _secret_values(connection: Connection) -> tuple[str, ...]:
    settings = connection.settings
    keys = (*(key.reveal() for key in settings.subscription_keys),
            connection.manager.subscription_key)
    return (settings.client_secret.reveal(), *(key for key in keys if key))


# --- handlers -------------------------------------------------------------------------------


async def _to_status_page(_request: web.Request) -> web.Response:
    return web.Response(status=301, headers={"Location": STATUS_PATH})


async def login(request: web.Request) -> web.Response:
    return await _start_login(request, request.query.get("connection", ""), None)


async def login_form(request: web.Request) -> web.Response:
    """Connect / Reconnect from the page: a POST, so a subscription key can come along."""
    fields = await checked_form(request)
    if isinstance(fields, web.Response):
        return fields
    key = fields.get("subscription_key", "").strip() or None
    if key is not None and not valid_subscription_key(key):
        return problem_response(
            400,
            "That subscription key cannot be right",
            "A subscription key is up to 256 visible characters, without spaces.",
            "Nothing was changed.",
        )
    return await _start_login(request, fields.get("connection", ""), key)


async def _start_login(
    request: web.Request, name: str, subscription_key: str | None
) -> web.Response:
    consent = request.app[CONSENT]
    connections = request.app[PROXY_STATE].connections
    if not name:
        return problem_response(
            400,
            "Which connection?",
            "The login needs a connection name: /_proxy/login?connection=NAME.",
            "Pick one on the list of connections.",
        )
    connection = connections.get(name)
    if connection is None:
        return problem_response(
            404,
            "No such connection",
            f"No connection is configured with the name {_shown(name)!r}.",
            "Configured: " + (", ".join(sorted(connections)) or "none") + ".",
        )
    grant = connection.consent
    if grant is None:
        return problem_response(
            400,
            "No consent needed",
            f"Connection {name!r} uses machine credentials ({connection.settings.provider}): "
            "the proxy fetches its tokens by itself, so there is nothing to link.",
        )
    try:
        endpoints = await grant.discovery.endpoints()
    except GrantError as exc:
        return problem_response(
            502,
            "The identity service cannot be reached",
            f"Reading the discovery document of {grant.discovery.issuer} failed: "
            f"{exc.error}"
            + (
                f" ({_shown(exc.description, hide=_secret_values(connection))})"
                if exc.description
                else ""
            )
            + ".",
            "Try again in a moment.",
            retry_connection=name,
        )

    now = consent.clock()
    old = await consent.load(request)
    pending = unexpired(pending_logins(old), now)
    state, verifier = new_state(), new_pkce_verifier()
    pending[state] = PendingLogin(
        connection=name, verifier=verifier, created=now, subscription_key=subscription_key
    )
    # A fresh session, never the one the browser brought: a new cookie value on every login.
    session = await consent.storage_for(connection).new_session()
    store_pending(session, capped(pending))

    location = authorize_url(
        endpoints.authorization,
        client_id=grant.client_id,
        redirect_uri=grant.redirect_uri,
        scopes=grant.scopes,
        state=state,
        code_challenge=pkce_challenge(verifier),
    )
    # 303: after a POST from the page the browser follows with a GET, as for a plain link.
    response = web.Response(
        status=303 if request.method == "POST" else 302,
        headers={**PAGE_HEADERS, "Location": location},
    )
    await consent.storage_for(connection).save_session(request, response, session)
    log.info("consent started for connection %s", name)
    return response


class _Refusal(Exception):
    """A callback that cannot complete; it becomes an HTML page with `status`."""

    def __init__(
        self, status: int, title: str, *lines: str, retry_connection: str | None = None
    ) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.lines = lines
        self.retry_connection = retry_connection

    def response(self) -> web.Response:
        return problem_response(
            self.status, self.title, *self.lines, retry_connection=self.retry_connection
        )


async def callback(request: web.Request) -> web.Response:
    consent = request.app[CONSENT]
    session = await consent.load(request)
    pending = pending_logins(session)
    state = request.query.get("state", "")
    matched = match_state(pending, state) if state else None
    started = pending.pop(matched) if matched is not None else None
    connection = (
        request.app[PROXY_STATE].connections.get(started.connection)
        if started is not None
        else None
    )
    try:
        response = await _complete(request, consent, started, connection)
    except _Refusal as refusal:
        response = refusal.response()
    if started is not None:  # the state is used up, whatever happened
        store_pending(session, pending)
        storage = (
            consent.storage_for(connection)
            if connection is not None
            else consent.storages[request.secure]
        )
        await storage.save_session(request, response, session)
    return response


async def _complete(
    request: web.Request,
    consent: Consent,
    started: PendingLogin | None,
    connection: Connection | None,
) -> web.Response:
    retry = started.connection if started is not None and connection is not None else None
    _check_error_answer(request.query, retry)
    started, connection, grant = _check_login(request, consent, started, connection)
    code = request.query.get("code", "")
    if not code:
        raise _Refusal(
            400,
            "This sign-in cannot be completed",
            "The identity service came back without an authorization code.",
            retry_connection=retry,
        )
    tokens = await _exchange(connection, grant, code, started.verifier)
    warning = None
    try:
        await connection.manager.adopt(tokens, subscription_key=started.subscription_key)
    except StoreError:
        warning = (
            "The token could not be saved to the token store (see the proxy's log). It serves "
            "from memory meanwhile and saving is retried; a restart before that succeeds "
            "would need a new login."
        )
    log.info("connection %s linked", connection.name)
    return page_response(
        linked_page(
            connection=connection.name,
            scopes=tokens.scopes,
            expires_at=tokens.expires_at,
            now=consent.clock(),
            warning=warning,
        )
    )


def _check_error_answer(query: Mapping[str, str], retry: str | None) -> None:
    """RFC 6749 §4.1.2.1: the identity service answered with an error instead of a code."""
    error = query.get("error")
    if error is None:
        return
    lines = [f"The identity service did not grant access: {_shown(error)}."]
    description = query.get("error_description", "")
    if description:
        lines.append(f"It said: {_shown(description)}")
    if error == "access_denied":
        lines.append("Consent was declined or cancelled; nothing was changed.")
    raise _Refusal(400, "Access was not granted", *lines, retry_connection=retry)


def _check_login(
    request: web.Request,
    consent: Consent,
    started: PendingLogin | None,
    connection: Connection | None,
) -> tuple[PendingLogin, Connection, AuthorizationCodeGrant]:
    """The login this callback answers, still valid and for a configured connection."""
    if not request.query.get("state"):
        raise _Refusal(
            400,
            "This sign-in cannot be completed",
            "The identity service came back without a state parameter, so this answer "
            "cannot be tied to a login started here.",
            "Start the login again from the list of connections.",
        )
    if started is None:
        raise _Refusal(
            400,
            "This sign-in cannot be completed",
            "The state in this address does not belong to a login started in this browser: "
            "it was already used, it expired, or the login began at another host name "
            "(the callback must reach the same host name as /_proxy/login).",
            "If you started the login from a terminal (nmbrs-proxy login), paste this "
            "page's address there instead.",
            "Otherwise, start the login again from the list of connections.",
        )
    grant = connection.consent if connection is not None else None
    if connection is None or grant is None:
        raise _Refusal(
            400,
            "No such connection",
            f"The connection {started.connection!r} is no longer configured for consent.",
        )
    if consent.clock() - started.created >= LOGIN_MAX_AGE_SECONDS:
        raise _Refusal(
            400,
            "This sign-in took too long",
            f"A login must come back within {LOGIN_MAX_AGE_SECONDS // 60} minutes.",
            retry_connection=connection.name,
        )
    if callback_path(grant.redirect_uri) != request.rel_url.path_safe:
        raise _Refusal(
            400,
            "This sign-in came back to the wrong address",
            f"The login for {connection.name!r} expects its callback at {grant.redirect_uri}.",
            retry_connection=connection.name,
        )
    return started, connection, grant


async def _exchange(
    connection: Connection, grant: AuthorizationCodeGrant, code: str, verifier: str
) -> TokenSet:
    try:
        return await grant.exchange_code(
            code, redirect_uri=grant.redirect_uri, code_verifier=verifier
        )
    except GrantError as exc:
        log.warning("code exchange for connection %s failed: %s", connection.name, exc.error)
        hide = (code, verifier, *_secret_values(connection))
        lines = [f"Exchanging the authorization code for a token failed: {_shown(exc.error)}."]
        if exc.description:
            lines.append(f"The identity service said: {_shown(exc.description, hide=hide)}")
        if exc.error == "invalid_grant":
            lines.append(
                "Authorization codes are single use and expire within minutes: "
                "start the login again."
            )
        elif exc.error == "invalid_client":
            lines.append("Check the connection's client_id and client_secret.")
        raise _Refusal(
            502 if exc.error in _UNAVAILABLE_ERRORS else 400,
            "The token could not be obtained",
            *lines,
            retry_connection=connection.name,
        ) from None
