"""A fake of Nomba's token endpoints and of its API, strict about Nomba's request shapes.

    POST /v1/auth/token/issue    accountId; {"grant_type": "client_credentials",
                                             "client_id", "client_secret"}
    POST /v1/auth/token/refresh  accountId, Bearer <current, unexpired access token>;
                                 {"grant_type": "refresh_token", "refresh_token"}
    POST /v1/auth/token/revoke   accountId; {"clientId", "access_token"}
    *    /v1/...                 the API: Bearer token and the matching accountId

Answers are envelopes: `{"code": "00", "description": "Success", "data": {...}}`; failures carry
another code and a description. `expiresAt` is ISO 8601 UTC to the second, and the token really
ends then. Refresh tokens are single use; revoking an access token ends its refresh token too.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ._grants import fingerprint
from ._machine import Issued, MachineClient, MachineSandbox, bearer, check_secret

ACCOUNT_HEADER = "accountId"
Handler = Callable[[web.Request, bytes], web.Response]
_JSON = "application/json"


class NombaError(Exception):
    """A refusal, answered as an envelope with `code` and `description`."""

    def __init__(self, status: int, description: str, *, reason: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.reason = reason  # what the stats count it as

    def response(self) -> web.Response:
        return web.json_response(
            {"code": str(self.status), "description": self.description}, status=self.status
        )


def _envelope(data: Mapping[str, Any] | None = None, description: str = "Success") -> web.Response:
    body: dict[str, Any] = {"code": "00", "description": description}
    if data is not None:
        body["data"] = dict(data)
    return web.json_response(body)


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_object(request: web.Request, body: bytes, fields: tuple[str, ...]) -> dict[str, str]:
    """The JSON body, which must hold exactly `fields`, each a non-empty string."""
    if request.content_type != _JSON:
        raise NombaError(400, f"Content-Type must be {_JSON}", reason="bad_request")
    try:
        data = json.loads(body)
    except ValueError:
        raise NombaError(400, "The body is not valid JSON", reason="bad_request") from None
    if not isinstance(data, dict):
        raise NombaError(400, "The body must be a JSON object", reason="bad_request")
    unexpected = sorted(set(data) - set(fields))
    if unexpected:
        raise NombaError(400, f"Unexpected field {unexpected[0]}", reason="bad_request")
    for name in fields:
        value = data.get(name)
        if not isinstance(value, str) or not value:
            raise NombaError(400, f"{name} is required", reason="bad_request")
    return data


def _account(request: web.Request) -> str:
    account = request.headers.get(ACCOUNT_HEADER, "").strip()
    if not account:
        raise NombaError(400, "accountId header is required", reason="no_account")
    return account


class NombaSandbox(MachineSandbox):
    kind = "Nomba"
    endpoints = (("token_url", "/v1/auth/token"), ("API", "/v1/accounts/balance"))

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/auth/token/issue", self.issue_endpoint)
        router.add_post("/v1/auth/token/refresh", self.refresh_endpoint)
        router.add_post("/v1/auth/token/revoke", self.revoke_endpoint)
        router.add_route("*", "/v1/{tail:.*}", self.api)

    # -- token endpoints -------------------------------------------------------------------

    async def issue_endpoint(self, request: web.Request) -> web.Response:
        return await self.token_call(request, "issue", self._refusing(self._check_issue))

    async def refresh_endpoint(self, request: web.Request) -> web.Response:
        return await self.token_call(request, "refresh", self._refusing(self._check_refresh))

    def _refusing(self, handle: Handler) -> Callable[[web.Request, bytes], Awaitable[web.Response]]:
        """`handle` with a refusal answered as its envelope and counted by its reason."""

        async def run(request: web.Request, body: bytes) -> web.Response:
            try:
                return handle(request, body)
            except NombaError as exc:
                self.stats.token_errors[exc.reason] += 1
                return exc.response()

        return run

    def _check_issue(self, request: web.Request, body: bytes) -> web.Response:
        account = _account(request)
        data = _json_object(request, body, ("grant_type", "client_id", "client_secret"))
        if data["grant_type"] != "client_credentials":
            raise NombaError(400, "grant_type must be client_credentials", reason="bad_request")
        client = self.clients.get(data["client_id"])
        if not check_secret(client, data["client_secret"]):
            raise NombaError(401, "Invalid client credentials", reason="invalid_client")
        assert client is not None
        if client.account_id != account:
            raise NombaError(403, "accountId does not belong to this client", reason="bad_account")
        return self._token_answer(client)

    def _check_refresh(self, request: web.Request, body: bytes) -> web.Response:
        account = _account(request)
        current = bearer(request)
        if current is None:
            raise NombaError(401, "A bearer token is required", reason="bad_bearer")
        issued, problem = self.token_problem(current)
        if problem is not None or issued is None or issued.account_id != account:
            raise NombaError(401, "Unauthorized", reason="bad_bearer")
        data = _json_object(request, body, ("grant_type", "refresh_token"))
        if data["grant_type"] != "refresh_token":
            raise NombaError(400, "grant_type must be refresh_token", reason="bad_request")
        record = self.refresh_record(data["refresh_token"])
        if (
            record is None
            or record.used
            or self.clock() >= record.expires_at
            or record.client_id != issued.client_id
            or record.account_id != account
        ):
            raise NombaError(400, "Invalid or expired refresh token", reason="bad_refresh")
        record.used = True
        self.stats.refresh_redemptions[fingerprint(data["refresh_token"])] += 1
        return self._token_answer(self.clients[record.client_id])

    def _token_answer(self, client: MachineClient) -> web.Response:
        issued: Issued = self.issue(client, with_refresh=True, whole_seconds=True)
        return _envelope(
            {
                "businessId": client.account_id,
                "access_token": issued.access_token,
                "refresh_token": issued.refresh_token,
                "expiresAt": _iso(issued.expires_at),
            }
        )

    async def revoke_endpoint(self, request: web.Request) -> web.Response:
        try:
            account = _account(request)
            data = _json_object(request, await request.read(), ("clientId", "access_token"))
            record, _ = self.token_problem(data["access_token"])
            if (
                record is None
                or record.client_id != data["clientId"]
                or record.account_id != account
            ):
                raise NombaError(400, "Token not found", reason="bad_revoke")  # noqa: TRY301
        except NombaError as exc:
            return exc.response()
        self.revoke(data["access_token"])
        self.stats.revocations += 1
        return _envelope(description="Token revoked successfully")

    # -- the API ---------------------------------------------------------------------------

    async def api(self, request: web.Request) -> web.Response:
        record = self.record_api(request)
        try:
            response = self._api(request)
        except NombaError as exc:
            response = exc.response()
        return self.api_done(record, response)

    def _api(self, request: web.Request) -> web.Response:
        token = bearer(request)
        issued, problem = self.token_problem(token) if token is not None else (None, "none")
        if problem is not None or issued is None:
            raise NombaError(401, "Unauthorized", reason="api")
        account = _account(request)
        if account != issued.account_id:
            raise NombaError(403, "The token does not belong to this accountId", reason="api")
        response = _envelope(
            {"accountId": account, "method": request.method, "path": request.path}
        )
        response.headers["X-Rate-Limit-Limit"] = "100"
        response.headers["X-Rate-Limit-Remaining"] = "99"
        return response
