"""A fake RFC 6749 §4.4 token endpoint (and RFC 7009 revocation) with an API behind it.

    POST /oauth2/token    grant_type=client_credentials [scope] [audience] [extra fields]
    POST /oauth2/revoke   token [token_type_hint]
    *    /v1/...          the API: Bearer tokens from /oauth2/token

Strict like a careful server: form bodies only, no repeated parameter, exactly the client
authentication method the client is registered for (and never two at once), only
`client_credentials`, only scopes the client may have, the configured audience and required
fields. The answer carries no refresh token (RFC 6749 §4.4.3).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from ._client_auth import FORM, NO_STORE, client_credentials_of, error_json, parse_form
from ._grants import OAuthError, expires_in
from ._machine import MachineClient, MachineSandbox, bearer, check_secret


class ClientCredentialsSandbox(MachineSandbox):
    kind = "OAuth 2.0 client credentials"
    token_path = "/oauth2/token"  # noqa: S105 - a path
    revocation_path = "/oauth2/revoke"
    endpoints = (("token_url", token_path), ("revocation_url", revocation_path), ("API", "/v1/"))

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post(self.token_path, self.token)
        router.add_post(self.revocation_path, self.revocation)
        router.add_route("*", "/v1/{tail:.*}", self.api)

    # -- client authentication -------------------------------------------------------------

    def _authenticated_form(
        self, request: web.Request, body: bytes
    ) -> tuple[dict[str, str], MachineClient]:
        """The form of a token or revocation request, and the client it authenticates as
        (with exactly the method that client is registered for)."""
        if request.content_type != FORM:
            raise OAuthError("invalid_request", f"Content-Type must be {FORM}.")
        form = parse_form(body)
        client_id, secret, method = client_credentials_of(request, form)
        client = self.clients.get(client_id)
        if not check_secret(client, secret):
            raise OAuthError("invalid_client", "Unknown client or wrong secret.", status=401)
        assert client is not None
        if method != client.auth_method:
            raise OAuthError(
                "invalid_client", f"This client must use {client.auth_method}.", status=401
            )
        return form, client

    # -- token -----------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        return await self.token_call(request, "client_credentials", self._token)

    async def _token(self, request: web.Request, body: bytes) -> web.Response:
        try:
            client, scopes, audience = self._check_token_request(request, body)
        except OAuthError as exc:
            self.stats.token_errors[exc.error] += 1
            return error_json(exc)
        issued = self.issue(client, scopes=scopes, audience=audience)
        answer: dict[str, object] = {
            "access_token": issued.access_token,
            "token_type": "Bearer",
            "expires_in": expires_in(self.settings.access_token_lifetime),
        }
        if scopes:
            answer["scope"] = " ".join(scopes)
        return web.json_response(answer, headers=NO_STORE)

    def _check_token_request(
        self, request: web.Request, body: bytes
    ) -> tuple[MachineClient, tuple[str, ...], str | None]:
        form, client = self._authenticated_form(request, body)
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise OAuthError("invalid_request", "grant_type is required.")
        if grant_type != "client_credentials":
            raise OAuthError(
                "unsupported_grant_type", f"grant_type {grant_type!r} is not supported."
            )
        scopes = self._scopes(client, form)
        audience = self._audience(form)
        self._required_params(form)
        return client, scopes, audience

    @staticmethod
    def _scopes(client: MachineClient, form: Mapping[str, str]) -> tuple[str, ...]:
        if "scope" not in form:
            return client.default_scopes
        wanted = tuple(dict.fromkeys(form["scope"].split()))
        refused = [scope for scope in wanted if scope not in client.scopes]
        if refused or not wanted:
            raise OAuthError("invalid_scope", f"Scope not allowed: {' '.join(refused)}")
        return wanted

    def _audience(self, form: Mapping[str, str]) -> str | None:
        expected = self.settings.audience
        given = form.get("audience")
        if expected is None:
            if given is not None:
                raise OAuthError("invalid_target", "This server takes no audience.")
            return None
        if given is None:
            raise OAuthError("invalid_request", "audience is required.")
        if given != expected:
            raise OAuthError("invalid_target", "Unknown audience.")
        return given

    def _required_params(self, form: Mapping[str, str]) -> None:
        for name, value in self.settings.required_params:
            if name not in form:
                raise OAuthError("invalid_request", f"{name} is required.")
            if form[name] != value:
                raise OAuthError("invalid_request", f"{name} has a wrong value.")

    # -- revocation (RFC 7009) -------------------------------------------------------------

    async def revocation(self, request: web.Request) -> web.Response:
        try:
            client, token = self._check_revocation(request, await request.read())
        except OAuthError as exc:
            return error_json(exc)
        record, _ = self.token_problem(token)
        if record is not None and record.client_id == client.client_id:
            self.revoke(token)
        self.stats.revocations += 1
        return web.Response(status=200, headers=NO_STORE)  # also for unknown tokens (§2.2)

    def _check_revocation(self, request: web.Request, body: bytes) -> tuple[MachineClient, str]:
        form, client = self._authenticated_form(request, body)
        token = form.get("token")
        if token is None:
            raise OAuthError("invalid_request", "token is required.")
        return client, token

    # -- the API ---------------------------------------------------------------------------

    async def api(self, request: web.Request) -> web.Response:
        record = self.record_api(request)
        return self.api_done(record, self._api(request))

    def _api(self, request: web.Request) -> web.Response:
        token = bearer(request)
        if token is None:
            return _invalid_token("No bearer token.", error=None)
        issued, problem = self.token_problem(token)
        if problem is not None or issued is None:
            return _invalid_token(problem or "The token is unknown.")
        if issued.audience != self.settings.audience:
            return _invalid_token("The token is for another audience.")
        return web.json_response(
            {
                "client_id": issued.client_id,
                "scopes": list(issued.scopes),
                "method": request.method,
                "path": request.path,
            }
        )


def _invalid_token(description: str, *, error: str | None = "invalid_token") -> web.Response:
    challenge = "Bearer" if error is None else f'Bearer error="{error}"'
    return web.json_response(
        {"error": error or "unauthorized", "error_description": description},
        status=401,
        headers={"WWW-Authenticate": challenge},
    )
