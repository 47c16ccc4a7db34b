"""The fake authorize endpoint: request checks, the consent page, and code issuance.

`GET /connect/authorize` checks the client and its registered redirect URI first (and never
redirects anywhere else, RFC 6749 §4.1.2.1), then the rest of the request (response_type,
scopes, PKCE S256); it either approves at once (`auto_consent`) or shows a consent page that
posts to `/connect/authorize/consent`. Approval redirects with a single-use code that expires
after `code_lifetime`.
"""

from __future__ import annotations

import html
import re
import secrets
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from multidict import MultiMapping

from ._client_auth import FORM, NO_STORE, parse_form
from ._grants import AuthCode, GrantStore, OAuthError
from ._settings import SandboxClient, SandboxSettings
from ._stats import SandboxStats

_PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_CONSENT_LIFETIME = 600.0


class AuthorizeHost(Protocol):
    """What the authorize endpoint reads of the sandbox, at each request (tests change it)."""

    settings: SandboxSettings
    clock: Callable[[], float]
    stats: SandboxStats
    grants: GrantStore
    user_sub: str  # the "person" who consents

    @property
    def clients(self) -> Mapping[str, SandboxClient]: ...


@dataclass
class _AuthorizeRequest:
    client: SandboxClient
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None
    code_challenge: str | None
    expires_at: float  # only used while waiting for consent


def _html_page(title: str, body: str, *, status: int = 200) -> web.Response:
    page = (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(text=page, status=status, content_type="text/html", headers=NO_STORE)


def _redirect(redirect_uri: str, params: Mapping[str, str | None]) -> web.Response:
    """302 to the client; spaces as %20 (as IdentityServer does), existing query kept."""
    query = urllib.parse.urlencode(
        {name: value for name, value in params.items() if value is not None},
        quote_via=urllib.parse.quote,
    )
    separator = "&" if urllib.parse.urlsplit(redirect_uri).query else "?"
    if redirect_uri.endswith(("?", "&")):
        separator = ""
    return web.Response(
        status=302, headers={"Location": f"{redirect_uri}{separator}{query}", **NO_STORE}
    )


def _check_challenge(challenge: str | None, method: str | None) -> None:
    if challenge is None:
        if method is not None:
            raise OAuthError("invalid_request", "code_challenge_method without code_challenge.")
        return
    if method != "S256":
        raise OAuthError("invalid_request", "Transform algorithm not supported (S256 only).")
    if not _PKCE_CHALLENGE.fullmatch(challenge):
        raise OAuthError("invalid_request", "code_challenge is malformed.")


class AuthorizeEndpoint:
    """`/connect/authorize` and its consent form; keeps the requests awaiting a decision."""

    def __init__(self, host: AuthorizeHost) -> None:
        self.host = host
        self._pending: dict[str, _AuthorizeRequest] = {}

    async def authorize(self, request: web.Request) -> web.Response:
        self.host.stats.authorize_requests += 1
        query = request.query
        client = self.host.clients.get(query.get("client_id", ""))
        if client is None or len(query.getall("client_id")) != 1:
            return _html_page(
                "Error", "<p>Unknown client or no client_id (unauthorized_client).</p>", status=400
            )
        redirect_uri = query.get("redirect_uri")
        if redirect_uri not in client.redirect_uris or len(query.getall("redirect_uri")) != 1:
            # RFC 6749 section 4.1.2.1: never redirect to an unregistered URI.
            return _html_page("Error", "<p>Invalid redirect_uri for this client.</p>", status=400)
        state = query.get("state") or None
        try:
            parsed = self._check_authorize(query, client, redirect_uri, state)
        except OAuthError as exc:
            return _redirect(
                redirect_uri,
                {"error": exc.error, "error_description": exc.description, "state": state},
            )
        if self.host.settings.auto_consent:
            return self._approve(parsed)
        request_id = secrets.token_urlsafe(24)
        self._pending[request_id] = parsed
        return self._consent_page(request_id, parsed)

    def _check_authorize(
        self,
        query: MultiMapping[str],
        client: SandboxClient,
        redirect_uri: str,
        state: str | None,
    ) -> _AuthorizeRequest:
        for name in set(query):
            if len(query.getall(name)) > 1:
                raise OAuthError("invalid_request", f"Parameter {name!r} is repeated.")
        response_type = query.get("response_type")
        if not response_type:
            raise OAuthError("invalid_request", "response_type is required.")
        if response_type != "code":
            raise OAuthError("unsupported_response_type", "Only response_type=code is supported.")
        scopes = tuple(dict.fromkeys(query.get("scope", "").split()))
        if not scopes:
            raise OAuthError("invalid_request", "scope is required.")
        refused = [scope for scope in scopes if scope not in client.allowed_scopes]
        if refused:
            raise OAuthError("invalid_scope", f"Scope not allowed: {' '.join(refused)}")
        challenge = query.get("code_challenge")
        _check_challenge(challenge, query.get("code_challenge_method"))
        return _AuthorizeRequest(
            client=client,
            redirect_uri=redirect_uri,
            scopes=scopes,
            state=state,
            code_challenge=challenge,
            expires_at=self.host.clock() + _CONSENT_LIFETIME,
        )

    def _approve(self, parsed: _AuthorizeRequest) -> web.Response:
        now = self.host.clock()
        code = self.host.grants.new_code(
            AuthCode(
                client_id=parsed.client.client_id,
                redirect_uri=parsed.redirect_uri,
                scopes=parsed.scopes,
                code_challenge=parsed.code_challenge,
                sub=self.host.user_sub,
                auth_time=now,
                expires_at=now + self.host.settings.code_lifetime,
            ),
            now,
        )
        return _redirect(
            parsed.redirect_uri,
            {"code": code, "scope": " ".join(parsed.scopes), "state": parsed.state},
        )

    def _consent_page(self, request_id: str, parsed: _AuthorizeRequest) -> web.Response:
        items = "".join(f"<li><code>{html.escape(scope)}</code></li>" for scope in parsed.scopes)
        body = (
            f'<p>The application <strong id="client-id">{html.escape(parsed.client.client_id)}'
            "</strong> asks for access to your Nmbrs data:</p>"
            f'<ul id="scopes">{items}</ul>'
            '<form method="post" action="/connect/authorize/consent">'
            f'<input type="hidden" name="request_id" value="{html.escape(request_id)}">'
            '<button type="submit" name="decision" value="allow">Allow</button> '
            '<button type="submit" name="decision" value="deny">Deny</button>'
            "</form>"
        )
        return _html_page("Nmbrs sandbox: consent", body)

    async def consent(self, request: web.Request) -> web.Response:
        if request.content_type != FORM:
            return _html_page("Error", "<p>Expected a form post.</p>", status=400)
        try:
            form = parse_form(await request.read())
        except OAuthError:
            return _html_page("Error", "<p>Malformed form.</p>", status=400)
        parsed = self._pending.pop(form.get("request_id", ""), None)
        if parsed is None or self.host.clock() >= parsed.expires_at:
            return _html_page("Error", "<p>Unknown or expired consent request.</p>", status=400)
        decision = form.get("decision")
        if decision == "allow":
            return self._approve(parsed)
        if decision == "deny":
            return _redirect(
                parsed.redirect_uri,
                {
                    "error": "access_denied",
                    "error_description": "The user denied the request.",
                    "state": parsed.state,
                },
            )
        return _html_page("Error", "<p>decision must be allow or deny.</p>", status=400)
