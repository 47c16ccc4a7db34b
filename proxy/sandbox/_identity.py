"""The fake identity service: discovery, JWKS, authorize (+ consent), token, revocation.

It decodes and checks requests the way a strict IdentityServer would, so that a client-side
bug (an unencoded Basic header, a lost PKCE verifier, a reused refresh token) fails here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import re
import secrets
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from aiohttp import web
from multidict import MultiMapping

from ._grants import AuthCode, OAuthError, fingerprint
from ._keys import ACCESS_TOKEN_AUDIENCE
from ._settings import NMBRS_SCOPES, SandboxClient
from ._stats import recorded_token_call

if TYPE_CHECKING:
    from ._server import Sandbox

FORM = "application/x-www-form-urlencoded"
_PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_CONSENT_LIFETIME = 600.0
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass
class _AuthorizeRequest:
    client: SandboxClient
    redirect_uri: str
    scopes: tuple[str, ...]
    state: str | None
    code_challenge: str | None
    expires_at: float  # only used while waiting for consent


def parse_form(body: bytes) -> dict[str, str]:
    """Strict x-www-form-urlencoded parsing: UTF-8, no repeated parameter; blank = omitted."""
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except ValueError as exc:  # UnicodeDecodeError included
        raise OAuthError("invalid_request", "The body is not valid UTF-8 form data.") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"Parameter {name!r} is repeated.")
        form[name] = value
    # RFC 6749 section 3.1: parameters sent without a value are treated as omitted.
    return {name: value for name, value in form.items() if value != ""}


def decode_basic(credentials: str) -> tuple[str, str]:
    """RFC 6749 section 2.3.1: base64, split at the first ':', then form-urldecode each part."""
    try:
        raw = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise OAuthError("invalid_client", "Malformed Basic credentials.", status=401) from exc
    if ":" not in raw:
        raise OAuthError("invalid_client", "Malformed Basic credentials.", status=401)
    raw_id, raw_secret = raw.split(":", 1)
    try:
        return (
            urllib.parse.unquote_plus(raw_id, errors="strict"),
            urllib.parse.unquote_plus(raw_secret, errors="strict"),
        )
    except UnicodeDecodeError as exc:
        raise OAuthError("invalid_client", "Malformed Basic credentials.", status=401) from exc


def client_credentials_of(request: web.Request, form: Mapping[str, str]) -> tuple[str, str, str]:
    """(client_id, secret, method) of a token or revocation request, RFC 6749 §2.3.1: HTTP
    Basic or the form body, never both; the method is client_secret_basic or _post."""
    header = request.headers.get("Authorization")
    if header is None:
        client_id = form.get("client_id", "")
        secret = form.get("client_secret", "")
        if not client_id or not secret:
            raise OAuthError("invalid_client", "No client authentication.", status=401)
        return client_id, secret, "client_secret_post"
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError("invalid_client", "Unsupported authentication scheme.", status=401)
    client_id, secret = decode_basic(credentials)
    if "client_secret" in form:
        raise OAuthError("invalid_request", "Use one client authentication method only.")
    if "client_id" in form and form["client_id"] != client_id:
        raise OAuthError("invalid_request", "client_id differs from the Basic credentials.")
    return client_id, secret, "client_secret_basic"


def secret_matches(expected: str | None, secret: str) -> bool:
    """Constant-time comparison, taking as long when the client is unknown (`expected` None)."""
    reference = expected if expected is not None else secrets.token_urlsafe(16)
    return hmac.compare_digest(secret.encode("utf-8"), reference.encode("utf-8"))


def error_json(exc: OAuthError) -> web.Response:
    headers = dict(_NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="nmbrs-sandbox"'
    return web.json_response(
        {"error": exc.error, "error_description": exc.description},
        status=exc.status,
        headers=headers,
    )


def _html_page(title: str, body: str, *, status: int = 200) -> web.Response:
    page = (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(text=page, status=status, content_type="text/html", headers=_NO_STORE)


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
        status=302, headers={"Location": f"{redirect_uri}{separator}{query}", **_NO_STORE}
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


class IdentityService:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._pending: dict[str, _AuthorizeRequest] = {}

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/.well-known/openid-configuration", self.discovery)
        router.add_get("/.well-known/openid-configuration/jwks", self.jwks)
        router.add_get("/connect/authorize", self.authorize)
        router.add_post("/connect/authorize/consent", self.consent)
        router.add_post("/connect/token", self.token)
        router.add_post("/connect/revocation", self.revocation)

    # -- discovery -----------------------------------------------------------------------

    async def discovery(self, request: web.Request) -> web.Response:
        issuer = self.sandbox.issuer_for(request)
        scopes = list(NMBRS_SCOPES)
        for client in self.sandbox.clients.values():
            scopes += sorted(client.allowed_scopes - set(scopes))
        auth_methods = ["client_secret_basic", "client_secret_post"]
        return web.json_response(
            {
                "issuer": issuer,
                "jwks_uri": f"{issuer}/.well-known/openid-configuration/jwks",
                "authorization_endpoint": f"{issuer}/connect/authorize",
                "token_endpoint": f"{issuer}/connect/token",
                "revocation_endpoint": f"{issuer}/connect/revocation",
                "scopes_supported": scopes,
                "claims_supported": ["sub", "client_id", "scope", "auth_time"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "token_endpoint_auth_methods_supported": auth_methods,
                "revocation_endpoint_auth_methods_supported": auth_methods,
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "request_parameter_supported": False,
            }
        )

    async def jwks(self, _request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.sandbox.signing_key.jwk()]})

    # -- authorize -----------------------------------------------------------------------

    async def authorize(self, request: web.Request) -> web.Response:
        self.sandbox.stats.authorize_requests += 1
        query = request.query
        client = self.sandbox.clients.get(query.get("client_id", ""))
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
        if self.sandbox.settings.auto_consent:
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
            expires_at=self.sandbox.clock() + _CONSENT_LIFETIME,
        )

    def _approve(self, parsed: _AuthorizeRequest) -> web.Response:
        now = self.sandbox.clock()
        code = self.sandbox.grants.new_code(
            AuthCode(
                client_id=parsed.client.client_id,
                redirect_uri=parsed.redirect_uri,
                scopes=parsed.scopes,
                code_challenge=parsed.code_challenge,
                sub=self.sandbox.user_sub,
                auth_time=now,
                expires_at=now + self.sandbox.settings.code_lifetime,
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
        if parsed is None or self.sandbox.clock() >= parsed.expires_at:
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

    # -- client authentication -----------------------------------------------------------

    def _authenticate(self, request: web.Request, form: Mapping[str, str]) -> SandboxClient:
        client_id, secret, _ = client_credentials_of(request, form)
        client = self.sandbox.clients.get(client_id)
        if not secret_matches(client.client_secret if client is not None else None, secret):
            raise OAuthError("invalid_client", "Unknown client or wrong secret.", status=401)
        assert client is not None
        return client

    # -- token ---------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        sandbox = self.sandbox
        stats = sandbox.stats
        body = await request.read()
        form: dict[str, str] = {}
        form_error: OAuthError | None = None
        if request.content_type != FORM:
            form_error = OAuthError("invalid_request", f"Content-Type must be {FORM}.")
        else:
            try:
                form = parse_form(body)
            except OAuthError as exc:
                form_error = exc

        async def respond() -> web.Response:
            try:
                if form_error is not None:
                    raise form_error
                client = self._authenticate(request, form)
                answer = self._grant(request, client, form)
            except OAuthError as exc:
                stats.token_errors[exc.error] += 1
                return error_json(exc)
            return web.json_response(answer, headers=_NO_STORE)

        return await recorded_token_call(sandbox, request, form.get("grant_type", ""), respond)

    def _grant(
        self, request: web.Request, client: SandboxClient, form: Mapping[str, str]
    ) -> dict[str, Any]:
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise OAuthError("invalid_request", "grant_type is required.")
        if grant_type == "authorization_code":
            return self._authorization_code(request, client, form)
        if grant_type == "refresh_token":
            return self._refresh_token(request, client, form)
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported.")

    def _authorization_code(
        self, request: web.Request, client: SandboxClient, form: Mapping[str, str]
    ) -> dict[str, Any]:
        sandbox = self.sandbox
        value = form.get("code")
        if value is None:
            raise OAuthError("invalid_request", "code is required.")
        now = sandbox.clock()
        code = sandbox.grants.redeem_code(
            value,
            client_id=client.client_id,
            redirect_uri=form.get("redirect_uri"),
            code_verifier=form.get("code_verifier"),
            now=now,
        )
        grant = sandbox.grants.new_grant(
            client_id=client.client_id, scopes=code.scopes, sub=code.sub, auth_time=code.auth_time
        )
        code.grant_id = grant.grant_id
        return sandbox.mint(
            grant,
            scopes=code.scopes,
            issuer=sandbox.issuer_for(request),
            now=now,
            with_refresh="offline_access" in code.scopes,
        )

    def _refresh_token(
        self, request: web.Request, client: SandboxClient, form: Mapping[str, str]
    ) -> dict[str, Any]:
        sandbox = self.sandbox
        value = form.get("refresh_token")
        if value is None:
            raise OAuthError("invalid_request", "refresh_token is required.")
        now = sandbox.clock()
        grant = sandbox.grants.check_refresh_token(value, client_id=client.client_id, now=now)
        scopes = grant.scopes
        if "scope" in form:
            wanted = tuple(dict.fromkeys(form["scope"].split()))
            extra = [scope for scope in wanted if scope not in grant.scopes]
            if extra or not wanted:
                # The refresh token stays unspent: a bad scope parameter is a plain mistake.
                raise OAuthError("invalid_scope", f"Scope not in the grant: {' '.join(extra)}")
            scopes = wanted
        sandbox.grants.spend_refresh_token(value)
        sandbox.stats.refresh_redemptions[fingerprint(value)] += 1
        return sandbox.mint(
            grant, scopes=scopes, issuer=sandbox.issuer_for(request), now=now, with_refresh=True
        )

    # -- revocation ----------------------------------------------------------------------

    async def revocation(self, request: web.Request) -> web.Response:
        sandbox = self.sandbox
        if request.content_type != FORM:
            return error_json(OAuthError("invalid_request", f"Content-Type must be {FORM}."))
        try:
            form = parse_form(await request.read())
            client = self._authenticate(request, form)
        except OAuthError as exc:
            return error_json(exc)
        token = form.get("token")
        if token is None:
            return error_json(OAuthError("invalid_request", "token is required."))
        hint = form.get("token_type_hint")
        finders = [self._revoke_refresh, self._revoke_access]
        if hint == "access_token":
            finders.reverse()
        for finder in finders:
            if finder(client, token):
                break
        sandbox.stats.revocations += 1
        return web.Response(status=200, headers=_NO_STORE)

    def _revoke_refresh(self, client: SandboxClient, token: str) -> bool:
        grant = self.sandbox.grants.grant_of_refresh_token(token)
        if grant is None:
            return False
        if grant.client_id == client.client_id:
            self.sandbox.grants.revoke_grant(grant.grant_id)
        return True

    def _revoke_access(self, client: SandboxClient, token: str) -> bool:
        try:
            claims = self.sandbox.signing_key.verify_signature(token)
        except jwt.InvalidTokenError:
            return False
        if claims.get("aud") != ACCESS_TOKEN_AUDIENCE:
            return False
        jti = str(claims["jti"])
        grant = self.sandbox.grants.grant_of_access_token(jti)
        if grant is None:
            return False
        if grant.client_id == client.client_id:
            self.sandbox.grants.revoke_access_token(jti)
            self.sandbox.grants.revoke_grant(grant.grant_id)
        return True
