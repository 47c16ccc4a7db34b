"""A fake of Nitro's token endpoint and of an API behind it.

    POST /oauth/token  application/json  {"clientID", "clientSecret"}
                       → {"accessToken", "tokenType": "Bearer", "expiresIn"}
                         (or RFC 6749 snake_case when the settings say `snake_case`)
    *    /v1/...       the API: Bearer tokens from /oauth/token

Strict: a JSON object with exactly those two string fields; no refresh token is ever issued.
Failures are `{"error": "...", "message": "..."}` with 400 or 401.
"""

from __future__ import annotations

import json

from aiohttp import web

from ._grants import expires_in
from ._machine import MachineSandbox, bearer, check_secret

_JSON = "application/json"
_FIELDS = ("clientID", "clientSecret")


class NitroError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> web.Response:
        error = "Unauthorized" if self.status == 401 else "Bad Request"
        return web.json_response({"error": error, "message": self.message}, status=self.status)


class NitroSandbox(MachineSandbox):
    kind = "Nitro"
    endpoints = (("token_url", "/oauth/token"), ("API", "/v1/"))

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post("/oauth/token", self.token)
        router.add_route("*", "/v1/{tail:.*}", self.api)

    async def token(self, request: web.Request) -> web.Response:
        return await self.token_call(request, "token", self._token)

    async def _token(self, request: web.Request, body: bytes) -> web.Response:
        try:
            client_id, secret = _credentials(request, body)
            client = self.clients.get(client_id)
            if not check_secret(client, secret):
                raise NitroError(401, "Invalid client credentials")  # noqa: TRY301
        except NitroError as exc:
            self.stats.token_errors[str(exc.status)] += 1
            return exc.response()
        assert client is not None
        issued = self.issue(client)
        lifetime = expires_in(self.settings.access_token_lifetime)
        if self.settings.snake_case:
            answer = {
                "access_token": issued.access_token,
                "token_type": "Bearer",
                "expires_in": lifetime,
            }
        else:
            answer = {
                "accessToken": issued.access_token,
                "tokenType": "Bearer",
                "expiresIn": lifetime,
            }
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    async def api(self, request: web.Request) -> web.Response:
        record = self.record_api(request)
        token = bearer(request)
        issued, problem = self.token_problem(token) if token is not None else (None, "No token.")
        if problem is not None or issued is None:
            return self.api_done(record, NitroError(401, problem or "Unknown token.").response())
        body = {"clientID": issued.client_id, "method": request.method, "path": request.path}
        return self.api_done(record, web.json_response(body))


def _credentials(request: web.Request, body: bytes) -> tuple[str, str]:
    if request.content_type != _JSON:
        raise NitroError(400, f"Content-Type must be {_JSON}")
    try:
        data = json.loads(body)
    except ValueError:
        raise NitroError(400, "The body is not valid JSON") from None
    if not isinstance(data, dict):
        raise NitroError(400, "The body must be a JSON object")
    unexpected = sorted(set(data) - set(_FIELDS))
    if unexpected:
        raise NitroError(400, f"Unexpected field {unexpected[0]}")
    values = [data.get(name) for name in _FIELDS]
    for name, value in zip(_FIELDS, values, strict=True):
        if not isinstance(value, str) or not value:
            raise NitroError(400, f"{name} is required")
    client_id, secret = values
    assert isinstance(client_id, str)
    assert isinstance(secret, str)
    return client_id, secret
