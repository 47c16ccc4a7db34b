"""The fake token endpoint: `POST /connect/token`, authorization_code and refresh_token.

The client authenticates (HTTP Basic decoded per RFC 6749 §2.3.1, or the form; see
`_client_auth`), then the grant is checked against the store: a code is single-use, bound to
its client, redirect URI and PKCE challenge, and expires; a refresh token is single-use and
rotates, and presenting a spent one revokes its whole grant (invalid_grant). Every call is
counted, logged and held by the sandbox's `token_delay` and `token_gate`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from ._client_auth import FORM, NO_STORE, authenticate, error_json, parse_form
from ._grants import Grant, GrantStore, OAuthError, fingerprint
from ._settings import SandboxClient
from ._stats import TokenEndpointOwner, recorded_token_call


class TokenHost(TokenEndpointOwner, Protocol):
    """What the token endpoint reads of the sandbox, at each request (tests change it)."""

    clock: Callable[[], float]
    grants: GrantStore

    @property
    def clients(self) -> Mapping[str, SandboxClient]: ...

    def issuer_for(self, request: web.Request) -> str: ...

    def mint(
        self, grant: Grant, *, scopes: Sequence[str], issuer: str, now: float, with_refresh: bool
    ) -> dict[str, Any]: ...


class TokenEndpoint:
    def __init__(self, host: TokenHost) -> None:
        self.host = host

    async def token(self, request: web.Request) -> web.Response:
        host = self.host
        stats = host.stats
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
                client = authenticate(host.clients, request, form)
                answer = self._grant(request, client, form)
            except OAuthError as exc:
                stats.token_errors[exc.error] += 1
                return error_json(exc)
            return web.json_response(answer, headers=NO_STORE)

        return await recorded_token_call(host, request, form.get("grant_type", ""), respond)

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
        host = self.host
        value = form.get("code")
        if value is None:
            raise OAuthError("invalid_request", "code is required.")
        now = host.clock()
        code = host.grants.redeem_code(
            value,
            client_id=client.client_id,
            redirect_uri=form.get("redirect_uri"),
            code_verifier=form.get("code_verifier"),
            now=now,
        )
        grant = host.grants.new_grant(
            client_id=client.client_id, scopes=code.scopes, sub=code.sub, auth_time=code.auth_time
        )
        code.grant_id = grant.grant_id
        return host.mint(
            grant,
            scopes=code.scopes,
            issuer=host.issuer_for(request),
            now=now,
            with_refresh="offline_access" in code.scopes,
        )

    def _refresh_token(
        self, request: web.Request, client: SandboxClient, form: Mapping[str, str]
    ) -> dict[str, Any]:
        host = self.host
        value = form.get("refresh_token")
        if value is None:
            raise OAuthError("invalid_request", "refresh_token is required.")
        now = host.clock()
        grant = host.grants.check_refresh_token(value, client_id=client.client_id, now=now)
        scopes = grant.scopes
        if "scope" in form:
            wanted = tuple(dict.fromkeys(form["scope"].split()))
            extra = [scope for scope in wanted if scope not in grant.scopes]
            if extra or not wanted:
                # The refresh token stays unspent: a bad scope parameter is a plain mistake.
                raise OAuthError("invalid_scope", f"Scope not in the grant: {' '.join(extra)}")
            scopes = wanted
        host.grants.spend_refresh_token(value)
        host.stats.refresh_redemptions[fingerprint(value)] += 1
        return host.mint(
            grant, scopes=scopes, issuer=host.issuer_for(request), now=now, with_refresh=True
        )
