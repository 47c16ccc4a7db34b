"""The fake identity service: discovery, JWKS and revocation here, with the authorize endpoint
(`_authorize`) and the token endpoint (`_token`) mounted beside them.

It decodes and checks requests the way a strict IdentityServer would, so that a client-side
bug (an unencoded Basic header, a lost PKCE verifier, a reused refresh token) fails here.
"""

from __future__ import annotations

from typing import Protocol

import jwt
from aiohttp import web

from ._authorize import AuthorizeEndpoint, AuthorizeHost
from ._client_auth import FORM, NO_STORE, authenticate, error_json, parse_form
from ._grants import OAuthError
from ._keys import ACCESS_TOKEN_AUDIENCE, SigningKey
from ._settings import NMBRS_SCOPES, SandboxClient
from ._token import TokenEndpoint, TokenHost


class IdentityHost(AuthorizeHost, TokenHost, Protocol):
    """Everything the identity service reads of the sandbox: the endpoints' needs, and the
    signing key that discovery publishes and revocation checks access tokens with."""

    signing_key: SigningKey


class IdentityService:
    def __init__(self, host: IdentityHost) -> None:
        self.host = host
        self._authorize = AuthorizeEndpoint(host)
        self._token = TokenEndpoint(host)

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/.well-known/openid-configuration", self.discovery)
        router.add_get("/.well-known/openid-configuration/jwks", self.jwks)
        router.add_get("/connect/authorize", self._authorize.authorize)
        router.add_post("/connect/authorize/consent", self._authorize.consent)
        router.add_post("/connect/token", self._token.token)
        router.add_post("/connect/revocation", self.revocation)

    # -- discovery -----------------------------------------------------------------------

    async def discovery(self, request: web.Request) -> web.Response:
        issuer = self.host.issuer_for(request)
        scopes = list(NMBRS_SCOPES)
        for client in self.host.clients.values():
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
        return web.json_response({"keys": [self.host.signing_key.jwk()]})

    # -- revocation ----------------------------------------------------------------------

    async def revocation(self, request: web.Request) -> web.Response:
        if request.content_type != FORM:
            return error_json(OAuthError("invalid_request", f"Content-Type must be {FORM}."))
        try:
            form = parse_form(await request.read())
            client = authenticate(self.host.clients, request, form)
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
        self.host.stats.revocations += 1
        return web.Response(status=200, headers=NO_STORE)

    def _revoke_refresh(self, client: SandboxClient, token: str) -> bool:
        grant = self.host.grants.grant_of_refresh_token(token)
        if grant is None:
            return False
        if grant.client_id == client.client_id:
            self.host.grants.revoke_grant(grant.grant_id)
        return True

    def _revoke_access(self, client: SandboxClient, token: str) -> bool:
        try:
            claims = self.host.signing_key.verify_signature(token)
        except jwt.InvalidTokenError:
            return False
        if claims.get("aud") != ACCESS_TOKEN_AUDIENCE:
            return False
        jti = str(claims["jti"])
        grant = self.host.grants.grant_of_access_token(jti)
        if grant is None:
            return False
        if grant.client_id == client.client_id:
            self.host.grants.revoke_access_token(jti)
            self.host.grants.revoke_grant(grant.grant_id)
        return True
