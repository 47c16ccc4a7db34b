"""Consent routes: /_proxy/login (GET, or POST from the page) and the callback at each redirect
URI's path. The status page and its other forms are in `proxy.ops.console`.

A login keeps its `state`, PKCE verifier, connection, start time and (when the person entered
one with Connect) the subscription key in an encrypted session cookie (aiohttp-session's
EncryptedCookieStorage); the same cookie carries the page's CSRF token. The session is handled
by these handlers alone, never by an app-wide middleware: forwarded requests do not pay for it.

Every login starts a fresh session (a new cookie value; only other pending logins are carried
over, capped), and a callback removes the state it used, whatever the outcome, so a state is
good for one exchange only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp_session import Session
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet
from yarl import URL

from proxy.config import Settings
from proxy.core.secret import Secret
from proxy.forwarding.connection import Connection, valid_subscription_key
from proxy.forwarding.state import PROXY_STATE
from proxy.inbound import csrf
from proxy.oauth.protocol import (
    GrantError,
    authorize_url,
    new_pkce_verifier,
    new_state,
    pkce_challenge,
)
from proxy.oauth.token_set import TokenSet
from proxy.ops import pages
from proxy.tokens.grants import AuthorizationCodeGrant
from proxy.tokens.store import StoreError, write_atomically

log = logging.getLogger(__name__)

Clock = Callable[[], float]

SESSION_COOKIE: Final = "nmbrs_proxy_session"
# How long a started login may take, from the redirect to the callback.
LOGIN_MAX_AGE_SECONDS: Final = 600
# How long the cookie (and so a page's CSRF token) lives; each login has its own limit above.
SESSION_MAX_AGE_SECONDS: Final = 3600
# Logins started in other tabs that stay valid; the oldest beyond this are forgotten.
MAX_PENDING_LOGINS: Final = 5
SESSION_KEY_FILE: Final = "session.key"
_PENDING: Final = "pending"
# The IdP's `error` / `error_description` are shown, cut to this length.
_SHOWN_MAX: Final = 300
# Identity-service errors that mean "try later", not "this request was wrong".
_UNAVAILABLE_ERRORS: Final = frozenset({"temporarily_unavailable", "server_error"})

PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
}


class SessionKeyError(RuntimeError):
    """The session key file exists but cannot be used."""


# --- the session key ------------------------------------------------------------------------


def derive_session_key(secret: Secret) -> bytes:
    """A Fernet key (urlsafe base64 of 32 bytes) from the configured session secret."""
    digest = hashlib.sha256(secret.reveal().encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest)


def session_key_path(settings: Settings) -> Path:
    return settings.store.path.parent / SESSION_KEY_FILE


def load_or_create_session_key(path: Path) -> bytes:
    """The key kept at `path`; generated (0600, written atomically) the first time."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if _create_session_key(path):
            log.info("generated a new session key in %s", path)
        return load_or_create_session_key(path)  # ours, or the one another worker made first
    except OSError as exc:
        raise SessionKeyError(f"cannot read the session key {path}: {exc.strerror}") from None
    key = raw.strip()
    try:
        Fernet(key)
    except ValueError:
        raise SessionKeyError(
            f"{path} does not hold a session key; delete it to have a new one generated"
        ) from None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("the session key %s is readable by others (mode %o); chmod 600", path, mode)
    return key


def _create_session_key(path: Path) -> bool:
    """Write a new key unless one exists; several workers starting at once agree on one."""
    staged = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.new")
    write_atomically(staged, Fernet.generate_key() + b"\n", mode=0o600)
    try:
        path.hardlink_to(staged)  # fails when another process linked its key first
    except FileExistsError:
        return False
    finally:
        staged.unlink()
    return True


def session_key(settings: Settings) -> bytes:
    if settings.session.secret is not None:
        return derive_session_key(settings.session.secret)
    return load_or_create_session_key(session_key_path(settings))


# --- pending logins in the session ----------------------------------------------------------


@dataclass(frozen=True)
class PendingLogin:
    connection: str
    verifier: str = field(repr=False)
    created: float
    # Entered with Connect; kept with the token set once the login completes.
    subscription_key: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "connection": self.connection,
            "verifier": self.verifier,
            "created": self.created,
        }
        if self.subscription_key is not None:
            data["subscription_key"] = self.subscription_key
        return data

    @classmethod
    def from_json(cls, data: object) -> PendingLogin | None:
        if not isinstance(data, Mapping):
            return None
        connection, verifier, created = (
            data.get("connection"),
            data.get("verifier"),
            data.get("created"),
        )
        if not isinstance(connection, str) or not isinstance(verifier, str):
            return None
        if not isinstance(created, int | float) or isinstance(created, bool):
            return None
        key = data.get("subscription_key")
        return cls(
            connection=connection,
            verifier=verifier,
            created=float(created),
            subscription_key=key if isinstance(key, str) else None,
        )


def pending_logins(session: Session) -> dict[str, PendingLogin]:
    """The well-formed pending logins in `session`, by state (expired ones included)."""
    raw = session.get(_PENDING)
    if not isinstance(raw, Mapping):
        return {}
    found: dict[str, PendingLogin] = {}
    for state, data in raw.items():
        login = PendingLogin.from_json(data)
        if isinstance(state, str) and login is not None:
            found[state] = login
    return found


def _unexpired(pending: Mapping[str, PendingLogin], now: float) -> dict[str, PendingLogin]:
    return {s: p for s, p in pending.items() if now - p.created < LOGIN_MAX_AGE_SECONDS}


def _capped(pending: Mapping[str, PendingLogin]) -> dict[str, PendingLogin]:
    newest = sorted(pending.items(), key=lambda item: item[1].created)[-MAX_PENDING_LOGINS:]
    return dict(newest)


def _store_pending(session: Session, pending: Mapping[str, PendingLogin]) -> None:
    if pending:
        session[_PENDING] = {state: login.to_json() for state, login in pending.items()}
    else:
        session.invalidate()  # nothing left: the cookie is deleted


def match_state(pending: Mapping[str, PendingLogin], state: str) -> str | None:
    """The pending state equal to `state`, compared in constant time against every one."""
    found = None
    for candidate in pending:
        if hmac.compare_digest(candidate.encode(), state.encode()):
            found = candidate
    return found


# --- app wiring -----------------------------------------------------------------------------


@dataclass
class Consent:
    """Per-app consent state: the cookie storages (made at startup) and the clock."""

    settings: Settings
    clock: Clock
    # One storage per value of the cookie's Secure flag; both use the same key.
    storages: dict[bool, EncryptedCookieStorage] = field(default_factory=dict, repr=False)

    async def startup(self, _app: web.Application) -> None:
        key = await asyncio.to_thread(session_key, self.settings)
        fernet = Fernet(key)
        for secure in (False, True):
            self.storages[secure] = EncryptedCookieStorage(
                fernet,
                cookie_name=SESSION_COOKIE,
                max_age=SESSION_MAX_AGE_SECONDS,
                path="/",
                secure=secure or None,
                httponly=True,
                samesite="Lax",
            )

    def storage_for(self, connection: Connection) -> EncryptedCookieStorage:
        """Secure cookies when the browser comes back over https."""
        grant = connection.consent
        return self.storages[grant is not None and URL(grant.redirect_uri).scheme == "https"]

    async def load(self, request: web.Request) -> Session:
        return await self.storages[False].load_session(request)


CONSENT = web.AppKey("consent", Consent)


def callback_path(redirect_uri: str) -> str:
    """The path the callback is served at, in the form aiohttp's router matches."""
    return URL(redirect_uri).path_safe or "/"


def setup_consent(app: web.Application, settings: Settings, *, clock: Clock = time.time) -> None:
    """Register the login (GET and POST) and a callback per redirect-URI path."""
    consent = Consent(settings=settings, clock=clock)
    app[CONSENT] = consent
    app.on_startup.append(consent.startup)
    app.router.add_get("/_proxy", _to_status_page)
    app.router.add_get(pages.LOGIN_PATH, login)
    app.router.add_post(pages.LOGIN_PATH, login_form)
    redirect_uris = {c.redirect_uri for c in settings.connections if c.redirect_uri is not None}
    for path in sorted({callback_path(uri) for uri in redirect_uris}):
        # A plain resource: a path with "{" in it is not mistaken for a route pattern.
        resource = web.PlainResource(path)
        app.router.register_resource(resource)
        resource.add_route("GET", callback)


def page_response(
    text: str, status: int = 200, *, headers: Mapping[str, str] = PAGE_HEADERS
) -> web.Response:
    return web.Response(
        text=text, status=status, content_type="text/html", charset="utf-8", headers=headers
    )


def problem_response(
    status: int, title: str, *lines: str, retry_connection: str | None = None
) -> web.Response:
    page = pages.problem_page(title, lines, retry_connection=retry_connection)
    return page_response(page, status)


async def checked_form(request: web.Request) -> Mapping[str, str] | web.Response:
    """The fields of a POST from the /_proxy/ page, or the page that refuses it (CSRF)."""
    if not csrf.same_origin(request.headers, host=request.host):
        return problem_response(403, "Refused", "This form was sent from another site.")
    form = await request.post()
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    session = await request.app[CONSENT].load(request)
    if not csrf.tokens_match(csrf.token_of(session), fields.get(csrf.FORM_FIELD)):
        return problem_response(
            403,
            "This form has expired",
            "The page this form came from is too old, or was opened in another browser.",
            "Reload the list of connections and try again.",
        )
    return fields


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
    return web.Response(status=301, headers={"Location": pages.STATUS_PATH})


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
    pending = _unexpired(pending_logins(old), now)
    state, verifier = new_state(), new_pkce_verifier()
    pending[state] = PendingLogin(
        connection=name, verifier=verifier, created=now, subscription_key=subscription_key
    )
    # A fresh session, never the one the browser brought: a new cookie value on every login.
    session = await consent.storage_for(connection).new_session()
    _store_pending(session, _capped(pending))

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
        _store_pending(session, pending)
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
        pages.linked_page(
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
