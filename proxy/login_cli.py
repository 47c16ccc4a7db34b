"""`nmbrs-proxy login`: link a connection from a terminal, without the proxy running.

The command prints the authorize URL, then takes whichever comes first: the browser arriving at
a tiny server listening on the redirect URI (when that address can be bound here), or the
redirected address pasted into the terminal. It checks the state, exchanges the code and saves
the token set through the connection's TokenManager, so the store's versioning stays the same
as when the proxy does it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, TextIO
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiohttp import web

from proxy.config import ConnectionSettings, Settings
from proxy.forwarding.connection import Connection, build_connection
from proxy.oauth.protocol import (
    GrantError,
    authorize_url,
    new_pkce_verifier,
    new_state,
    pkce_challenge,
)
from proxy.ops.layout import format_relative, format_utc
from proxy.ops.outcome_pages import linked_page, problem_page
from proxy.tokens.backends import open_store
from proxy.tokens.grants import AuthorizationCodeGrant
from proxy.tokens.store import StoreError, TokenStore

Clock = Callable[[], float]

# A person has this long to sign in; the identity service's code itself lives 5 minutes.
LOGIN_TIMEOUT_SECONDS: Final = 600.0


class _LoginFailed(Exception):
    """Ends the login with a message for the terminal (and the browser, when it is waiting)."""


@dataclass
class _Arrival:
    """The redirect's query parameters, and where the listener waits for the page to show."""

    params: dict[str, str]
    page: asyncio.Future[str] | None = field(default=None, repr=False)


async def run_login(
    settings: Settings,
    connection_name: str,
    *,
    stdin: TextIO,
    stdout: TextIO,
    listen: bool = True,
    clock: Clock = time.time,
) -> int:
    """Link `connection_name` interactively; 0 when the token set is saved, 1 otherwise."""

    def say(line: str = "") -> None:
        stdout.write(line + "\n")
        stdout.flush()

    chosen = connection_settings(settings, connection_name)
    if chosen is None:
        names = ", ".join(c.name for c in settings.connections) or "none"
        say(f"error: no connection is named {connection_name!r} (configured: {names})")
        return 1
    store = open_store(settings.store)
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:
            connection = build_connection(chosen, session=session, store=store, clock=clock)
            try:
                await _check_store(store)
                await _login(connection, stdin=stdin, say=say, listen=listen, clock=clock)
            except _LoginFailed as failure:
                say(f"error: {failure}")
                return 1
    finally:
        await store.close()
    return 0


async def _check_store(store: TokenStore) -> None:
    """Before anyone consents: the new refresh token must have somewhere to go."""
    try:
        await store.check()
    except StoreError as exc:
        raise _LoginFailed(f"the token store cannot be used: {exc}") from None


async def _login(
    connection: Connection,
    *,
    stdin: TextIO,
    say: Callable[[str], None],
    listen: bool,
    clock: Clock,
) -> None:
    settings = connection.settings
    grant = connection.consent
    if grant is None:
        raise _LoginFailed(
            f"connection {settings.name!r} uses machine credentials ({settings.provider}): "
            "the proxy fetches its tokens by itself, so there is nothing to link"
        )
    try:
        await connection.manager.load()  # so the new set's version follows the stored one
    except StoreError as exc:
        raise _LoginFailed(str(exc)) from None
    try:
        endpoints = await grant.discovery.endpoints()
    except GrantError as exc:
        raise _LoginFailed(
            f"cannot read the discovery document of {grant.discovery.issuer}: "
            f"{_grant_error(exc)}"
        ) from None

    state, verifier = new_state(), new_pkce_verifier()
    url = authorize_url(
        endpoints.authorization,
        client_id=grant.client_id,
        redirect_uri=grant.redirect_uri,
        scopes=grant.scopes,
        state=state,
        code_challenge=pkce_challenge(verifier),
    )
    say(f"To link connection {settings.name!r}, open this address in a browser and sign in:")
    say("")
    say(f"  {url}")
    say("")

    arrived: asyncio.Future[_Arrival] = asyncio.get_running_loop().create_future()
    runner = await _listen(grant.redirect_uri, arrived, say) if listen else None
    arrival: _Arrival | None = None
    try:
        if runner is None:
            say("Then paste the address the browser was sent to (it starts with ")
            say(f"{grant.redirect_uri}) here and press Enter:")
        else:
            say("Waiting for the browser to come back (or paste the address it was sent to):")
        arrival = await _wait(arrived, stdin, say, waiting_for_browser=runner is not None)
        page = await _finish(
            connection, grant, arrival.params, state=state, verifier=verifier, say=say,
            clock=clock,
        )
        _show(arrival, page)
    except _LoginFailed as failure:
        if arrival is not None:
            _show(arrival, problem_page("Linking failed", [str(failure)], back_link=False))
        raise
    finally:
        if arrival is not None:  # never leave the browser waiting (no-op once answered)
            _show(arrival, problem_page("Linking failed", ["See the terminal."]))
        if runner is not None:
            await runner.cleanup()


def _show(arrival: _Arrival, page: str) -> None:
    if arrival.page is not None and not arrival.page.done():
        arrival.page.set_result(page)


async def _finish(
    connection: Connection,
    grant: AuthorizationCodeGrant,
    params: Mapping[str, str],
    *,
    state: str,
    verifier: str,
    say: Callable[[str], None],
    clock: Clock,
) -> str:
    """Check the redirect, exchange the code, save the tokens; the page for the browser."""
    error = params.get("error")
    if error is not None:
        description = params.get("error_description")
        raise _LoginFailed(
            f"the identity service did not grant access: {error}"
            + (f" ({description})" if description else "")
        )
    returned = params.get("state", "")
    if not returned or not hmac.compare_digest(returned.encode(), state.encode()):
        raise _LoginFailed(
            "the address does not belong to this login (its state does not match); "
            "run the command again and use the address it prints"
        )
    code = params.get("code", "")
    if not code:
        raise _LoginFailed("the address has no authorization code")
    settings = connection.settings
    try:
        tokens = await grant.exchange_code(
            code, redirect_uri=grant.redirect_uri, code_verifier=verifier
        )
    except GrantError as exc:
        hint = " (codes are single use and expire within minutes)" if exc.fatal else ""
        raise _LoginFailed(
            f"exchanging the code failed: {_grant_error(exc, hide=code)}{hint}"
        ) from None
    try:
        await connection.manager.adopt(tokens)
    except StoreError as exc:
        raise _LoginFailed(f"the token could not be saved: {exc}") from None
    now = clock()
    scopes = " ".join(tokens.scopes) or "none reported"
    say(
        f"Linked connection {settings.name!r}: scopes {scopes}; the access token is valid until "
        f"{format_utc(tokens.expires_at)} "
        f"({format_relative(tokens.expires_at, now)}); saved to the token store."
    )
    return linked_page(
        connection=settings.name,
        scopes=tokens.scopes,
        expires_at=tokens.expires_at,
        now=now,
        back_link=False,
    )


def _grant_error(exc: GrantError, *, hide: str = "") -> str:
    description = exc.description.replace(hide, "[hidden]") if hide else exc.description
    return f"{exc.error} ({description})" if description else exc.error


# --- waiting for the redirect ---------------------------------------------------------------


async def _wait(
    arrived: asyncio.Future[_Arrival],
    stdin: TextIO,
    say: Callable[[str], None],
    *,
    waiting_for_browser: bool,
) -> _Arrival:
    """The first redirect to come: from the listener or pasted; ends on timeout or no input."""
    deadline = asyncio.get_running_loop().time() + LOGIN_TIMEOUT_SECONDS
    line: asyncio.Future[str] | None = _read_line(stdin)
    while True:
        waiting: set[asyncio.Future[_Arrival] | asyncio.Future[str]] = {arrived}
        if line is not None:
            waiting.add(line)
        remaining = deadline - asyncio.get_running_loop().time()
        done, _ = await asyncio.wait(waiting, timeout=remaining, return_when="FIRST_COMPLETED")
        if not done:
            raise _LoginFailed(f"no answer within {LOGIN_TIMEOUT_SECONDS / 60:.0f} minutes")
        if arrived in done:
            return arrived.result()
        assert line is not None
        text = line.result()
        if not text:  # end of input
            if not waiting_for_browser:
                raise _LoginFailed("no address was pasted")
            line = None
            continue
        params = parse_pasted(text)
        if params is None:
            if text.strip():
                say("That does not look like the address the browser was sent to; try again:")
            line = _read_line(stdin)
            continue
        return _Arrival(params)


def parse_pasted(text: str) -> dict[str, str] | None:
    """The query of a pasted redirect address (or of its query alone); None if it has none."""
    text = text.strip()
    if not text:
        return None
    parts = urlsplit(text)
    query = parts.query if parts.scheme or parts.query else text.removeprefix("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    if "code" not in params and "error" not in params:
        return None
    return params


def _read_line(stdin: TextIO) -> asyncio.Future[str]:
    """One line of `stdin`, read in a daemon thread: a blocked read never delays exit."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[str] = loop.create_future()

    def deliver(text: str) -> None:
        if not result.done():
            result.set_result(text)

    def read() -> None:
        try:
            text = stdin.readline()
        except (OSError, ValueError):  # closed or unreadable: treated as end of input
            text = ""
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(deliver, text)

    threading.Thread(target=read, name="login-stdin", daemon=True).start()
    return result


async def _listen(
    redirect_uri: str, arrived: asyncio.Future[_Arrival], say: Callable[[str], None]
) -> web.AppRunner | None:
    """Serve the redirect URI's path on its host and port; None when that is not possible."""
    parts = urlsplit(redirect_uri)
    if parts.scheme != "http":
        say(f"(The redirect URI is {parts.scheme}: this command cannot receive it itself.)")
        return None
    host = parts.hostname or "localhost"
    port = parts.port or 80

    async def receive(request: web.Request) -> web.Response:
        if arrived.done():
            return _html(
                problem_page(
                    "Already handled", ["This login has already been answered."], back_link=False
                ),
                409,
            )
        page: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        arrived.set_result(_Arrival(dict(request.query), page))
        return _html(await page)

    app = web.Application()
    app.router.add_get(parts.path or "/", receive)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        reason = exc.strerror or type(exc).__name__
        say(f"(Cannot listen on {host}:{port} for the browser: {reason}. Paste the address.)")
        return None
    return runner


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def connection_settings(settings: Settings, name: str) -> ConnectionSettings | None:
    return next((c for c in settings.connections if c.name == name), None)
