"""The machine-credential fakes (client credentials, Nomba, Nitro): strict like real servers.

Driven with plain HTTP from here; the Basic encoder comes from sandbox_helpers, written from the
RFC independently of both the sandbox and the proxy.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from proxy.sandbox import (
    ClientCredentialsSandbox,
    MachineClient,
    MachineSandbox,
    MachineSettings,
    NitroSandbox,
    NombaSandbox,
)
from tests.clock import FakeClock
from tests.sandbox.sandbox_helpers import basic, naive_basic

Client = TestClient[web.Request, web.Application]

BASIC_CLIENT = MachineClient(
    client_id="reporting*$app",
    client_secret="s3:cr%+t",
    scopes=frozenset({"items.read", "items.write"}),
    default_scopes=("items.read",),
    account_id="acc-1",
)
POST_CLIENT = MachineClient(
    client_id="poster", client_secret="post-secret", auth_method="client_secret_post",
    account_id="acc-2",
)  # fmt: skip
AUDIENCE = "https://api.example.test"
SETTINGS = MachineSettings(clients=(BASIC_CLIENT, POST_CLIENT), access_token_lifetime=600)

MakeFake = Callable[..., Awaitable[tuple[Any, Client]]]


@pytest.fixture
def make_fake(aiohttp_client: AiohttpClient, clock: FakeClock) -> MakeFake:
    async def make(
        kind: type[MachineSandbox], settings: MachineSettings = SETTINGS
    ) -> tuple[Any, Client]:
        fake = kind(settings, clock=clock)
        return fake, await aiohttp_client(fake.app())

    return make


async def answer(response: Any) -> tuple[int, Any]:
    text = await response.text()
    return response.status, json.loads(text) if text else None


# --- client credentials ---------------------------------------------------------------------------


async def cc_token(client: Client, form: dict[str, str], *, auth: str | None = None,
                   content_type: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": auth} if auth is not None else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
        data: Any = "&".join(f"{k}={v}" for k, v in form.items())
    else:
        data = form
    async with client.post("/oauth2/token", data=data, headers=headers) as response:
        return await answer(response)


BASIC = basic(BASIC_CLIENT.client_id, BASIC_CLIENT.client_secret)
FORM = "application/x-www-form-urlencoded"
CC_FORM = {"grant_type": "client_credentials"}


async def test_client_credentials_token_and_api(make_fake: MakeFake, clock: FakeClock) -> None:
    fake, client = await make_fake(ClientCredentialsSandbox)
    status, body = await cc_token(client, CC_FORM, auth=BASIC)
    assert status == 200
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}  # no refresh
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 600, "items.read")
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    async with client.get("/v1/items?x=1", headers=headers) as response:
        status, api = await answer(response)
    assert status == 200
    assert api == {"client_id": BASIC_CLIENT.client_id, "scopes": ["items.read"],
                   "method": "GET", "path": "/v1/items"}  # fmt: skip
    clock.advance(600)
    async with client.get("/v1/items", headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert fake.stats.token_requests["client_credentials"] == 1
    assert fake.stats.api_statuses == {200: 1, 401: 1}


async def test_client_credentials_post_auth_scopes_audience_and_required_fields(
    make_fake: MakeFake,
) -> None:
    settings = MachineSettings(clients=(BASIC_CLIENT, POST_CLIENT), audience=AUDIENCE,
                               required_params=(("tenant", "acme"),))
    _, client = await make_fake(ClientCredentialsSandbox, settings)
    form = {**CC_FORM, "client_id": "reporting*$app", "client_secret": "s3:cr%+t",
            "scope": "items.write items.read", "audience": AUDIENCE, "tenant": "acme"}
    status, body = await cc_token(client, form)
    assert (status, body.get("error")) == (401, "invalid_client")  # registered for Basic
    form = {**form, "client_id": "poster", "client_secret": "post-secret", "scope": "x"}
    status, body = await cc_token(client, form)
    assert (status, body["error"]) == (400, "invalid_scope")
    del form["scope"]
    status, body = await cc_token(client, form)
    assert status == 200, body
    assert "scope" not in body


@pytest.mark.parametrize(
    ("form", "auth", "content_type", "status", "error"),
    [
        pytest.param(CC_FORM, BASIC, "text/plain", 400, "invalid_request", id="not-a-form"),
        pytest.param(CC_FORM, None, None, 401, "invalid_client", id="no-auth"),
        pytest.param({**CC_FORM, "client_secret": "s3:cr%+t"}, BASIC, None, 400,
                     "invalid_request", id="two-auth-methods"),
        pytest.param(CC_FORM, basic("reporting*$app", "wrong"), None, 401, "invalid_client",
                     id="wrong-secret"),
        pytest.param(CC_FORM, naive_basic("reporting*$app", "s3:cr%+t"), None, 401,
                     "invalid_client", id="basic-not-form-encoded"),
        pytest.param(CC_FORM, basic("nobody", "x"), None, 401, "invalid_client",
                     id="unknown-client"),
        pytest.param({"scope": "items.read"}, BASIC, None, 400, "invalid_request",
                     id="no-grant-type"),
        pytest.param({"grant_type": "refresh_token", "refresh_token": "r"}, BASIC, None, 400,
                     "unsupported_grant_type", id="refresh-grant"),
        pytest.param({**CC_FORM, "scope": "items.read admin"}, BASIC, None, 400,
                     "invalid_scope", id="scope-not-allowed"),
        pytest.param({**CC_FORM, "audience": AUDIENCE}, BASIC, None, 400, "invalid_target",
                     id="audience-not-taken"),
        pytest.param(None, BASIC, None, 400, "invalid_request", id="repeated-parameter"),
    ],
)
async def test_client_credentials_refusals(
    make_fake: MakeFake, form: dict[str, str] | None, auth: str | None,
    content_type: str | None, status: int, error: str,
) -> None:
    fake, client = await make_fake(ClientCredentialsSandbox)
    if form is None:  # a raw body with grant_type twice
        got = await cc_token(client, {"grant_type": "client_credentials&grant_type="
                                      "client_credentials"}, auth=auth, content_type=FORM)
    else:
        got = await cc_token(client, form, auth=auth, content_type=content_type)
    assert (got[0], got[1]["error"]) == (status, error)
    assert fake.stats.token_errors[error] == 1


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        pytest.param({"tenant": "acme"}, "invalid_request", id="no-audience"),
        pytest.param({"tenant": "acme", "audience": "https://other.test"}, "invalid_target",
                     id="wrong-audience"),
        pytest.param({"audience": AUDIENCE}, "invalid_request", id="no-required-field"),
        pytest.param({"audience": AUDIENCE, "tenant": "globex"}, "invalid_request",
                     id="wrong-required-field"),
    ],
)
async def test_client_credentials_audience_and_fields_are_checked(
    make_fake: MakeFake, extra: dict[str, str], error: str
) -> None:
    settings = MachineSettings(clients=(BASIC_CLIENT,), audience=AUDIENCE,
                               required_params=(("tenant", "acme"),))
    _, client = await make_fake(ClientCredentialsSandbox, settings)
    status, body = await cc_token(client, {**CC_FORM, **extra}, auth=BASIC)
    assert (status, body["error"]) == (400, error)


async def test_client_credentials_revocation(make_fake: MakeFake) -> None:
    fake, client = await make_fake(ClientCredentialsSandbox)
    _, body = await cc_token(client, CC_FORM, auth=BASIC)
    token = body["access_token"]
    form = {"token": token, "token_type_hint": "access_token"}
    async with client.post("/oauth2/revoke", data=form, headers={"Authorization": "Basic x"}
                           ) as response:
        assert response.status == 401  # client authentication first
    assert not fake.is_revoked(token)
    async with client.post("/oauth2/revoke", data=form, headers={"Authorization": BASIC}
                           ) as response:
        assert response.status == 200
    assert fake.is_revoked(token)
    async with client.get("/v1/x", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 401
    async with client.post("/oauth2/revoke", data={"token": "unknown"},
                           headers={"Authorization": BASIC}) as response:
        assert response.status == 200  # RFC 7009 §2.2: unknown tokens too


# --- Nomba ----------------------------------------------------------------------------------------


async def nomba(client: Client, step: str, body: Any, *, account: str | None = "acc-1",
                token: str | None = None, raw: bool = False) -> tuple[int, Any]:
    headers = {}
    if account is not None:
        headers["accountId"] = account
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    kwargs: dict[str, Any] = {"data": body} if raw else {"json": body}
    async with client.post(f"/v1/auth/token/{step}", headers=headers, **kwargs) as response:
        return await answer(response)


ISSUE = {"grant_type": "client_credentials", "client_id": "reporting*$app",
         "client_secret": "s3:cr%+t"}  # fmt: skip


async def test_nomba_issue_refresh_revoke_and_api(make_fake: MakeFake, clock: FakeClock) -> None:
    clock.now = 1_800_000_000.4
    fake, client = await make_fake(NombaSandbox)
    status, body = await nomba(client, "issue", ISSUE)
    assert status == 200
    assert (body["code"], body["description"]) == ("00", "Success")
    data = body["data"]
    assert set(data) == {"businessId", "access_token", "refresh_token", "expiresAt"}
    assert data["expiresAt"] == "2027-01-15T08:10:00Z"  # to the second, rounded down
    first = data["access_token"]

    async def api(token: str, account: str | None = "acc-1") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        if account is not None:
            headers["accountId"] = account
        async with client.get("/v1/accounts/balance", headers=headers) as response:
            if response.status == 200:
                assert response.headers["X-Rate-Limit-Limit"] == "100"
            return await answer(response)

    status, body = await api(first)
    assert (status, body["data"]["accountId"]) == (200, "acc-1")
    assert (await api(first, None))[0] == 400
    assert (await api(first, "acc-2"))[0] == 403

    refresh = {"grant_type": "refresh_token", "refresh_token": data["refresh_token"]}
    assert (await nomba(client, "refresh", refresh))[0] == 401  # needs the current bearer
    status, body = await nomba(client, "refresh", refresh, token=first)
    assert status == 200
    second = body["data"]
    assert second["refresh_token"] != data["refresh_token"]
    status, body = await nomba(client, "refresh", refresh, token=first)  # single use
    assert (status, body["description"]) == (400, "Invalid or expired refresh token")

    revoke = {"clientId": "reporting*$app", "access_token": second["access_token"]}
    status, body = await nomba(client, "revoke", {**revoke, "clientId": "poster"})
    assert status == 400
    status, body = await nomba(client, "revoke", revoke)
    assert (status, body) == (200, {"code": "00", "description": "Token revoked successfully"})
    assert (await api(second["access_token"]))[0] == 401
    again = {"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}
    assert (await nomba(client, "refresh", again, token=first))[0] == 400  # ended with it
    assert fake.stats.revocations == 1

    clock.now = 1_800_000_600.0  # the announced expiresAt
    assert (await api(first))[0] == 401


@pytest.mark.parametrize(
    ("body", "account", "raw", "status", "reason"),
    [
        pytest.param(ISSUE, None, False, 400, "no_account", id="no-account-header"),
        pytest.param(ISSUE, "acc-2", False, 403, "bad_account", id="other-account"),
        pytest.param({**ISSUE, "client_secret": "nope"}, "acc-1", False, 401, "invalid_client",
                     id="wrong-secret"),
        pytest.param({**ISSUE, "grant_type": "password"}, "acc-1", False, 400, "bad_request",
                     id="grant-type"),
        pytest.param({**ISSUE, "scope": "x"}, "acc-1", False, 400, "bad_request",
                     id="unexpected-field"),
        pytest.param({"grant_type": "client_credentials", "client_id": "reporting*$app"},
                     "acc-1", False, 400, "bad_request", id="missing-secret"),
        pytest.param("grant_type=client_credentials", "acc-1", True, 400, "bad_request",
                     id="form-not-json"),
        pytest.param([ISSUE], "acc-1", False, 400, "bad_request", id="not-an-object"),
    ],
)
async def test_nomba_issue_refusals(
    make_fake: MakeFake, body: Any, account: str | None, raw: bool, status: int, reason: str
) -> None:
    fake, client = await make_fake(NombaSandbox)
    got_status, got = await nomba(client, "issue", body, account=account, raw=raw)
    assert got_status == status
    assert got["code"] == str(status)
    assert got["description"]
    assert "data" not in got
    assert fake.stats.token_errors[reason] == 1


async def test_nomba_refresh_needs_an_unexpired_bearer_of_the_same_account(
    make_fake: MakeFake, clock: FakeClock
) -> None:
    _, client = await make_fake(NombaSandbox)
    _, body = await nomba(client, "issue", ISSUE)
    data = body["data"]
    refresh = {"grant_type": "refresh_token", "refresh_token": data["refresh_token"]}
    _, other = await nomba(client, "issue", {**ISSUE, "client_id": "poster",
                                             "client_secret": "post-secret"}, account="acc-2")
    assert (await nomba(client, "refresh", refresh, token=other["data"]["access_token"],
                        account="acc-2"))[0] == 400  # another client's refresh token
    clock.advance(600)
    status, body = await nomba(client, "refresh", refresh, token=data["access_token"])
    assert (status, body["description"]) == (401, "Unauthorized")


# --- Nitro ----------------------------------------------------------------------------------------


NITRO = {"clientID": "reporting*$app", "clientSecret": "s3:cr%+t"}


@pytest.mark.parametrize("snake_case", [False, True])
async def test_nitro_token_and_api(make_fake: MakeFake, snake_case: bool) -> None:
    settings = MachineSettings(clients=(BASIC_CLIENT,), access_token_lifetime=86400,
                               snake_case=snake_case)
    fake, client = await make_fake(NitroSandbox, settings)
    async with client.post("/oauth/token", json=NITRO) as response:
        status, body = await answer(response)
    assert status == 200
    names = ("access_token", "token_type", "expires_in") if snake_case else (
        "accessToken", "tokenType", "expiresIn")
    assert set(body) == set(names)
    assert (body[names[1]], body[names[2]]) == ("Bearer", 86400)
    headers = {"Authorization": f"Bearer {body[names[0]]}"}
    async with client.get("/v1/documents", headers=headers) as response:
        status, api = await answer(response)
    assert (status, api["clientID"]) == (200, "reporting*$app")
    fake.revoke_access_tokens()
    async with client.get("/v1/documents", headers=headers) as response:
        status, api = await answer(response)
    assert (status, api["error"]) == (401, "Unauthorized")


@pytest.mark.parametrize(
    ("body", "kwargs", "status"),
    [
        pytest.param({**NITRO, "clientSecret": "nope"}, {}, 401, id="wrong-secret"),
        pytest.param({"clientId": "reporting*$app", "clientSecret": "s3:cr%+t"}, {}, 400,
                     id="wrong-field-case"),
        pytest.param({**NITRO, "grant_type": "client_credentials"}, {}, 400,
                     id="unexpected-field"),
        pytest.param({"clientID": "reporting*$app"}, {}, 400, id="missing-secret"),
        pytest.param(None, {"data": "clientID=a&clientSecret=b"}, 400, id="form-not-json"),
    ],
)
async def test_nitro_refusals(make_fake: MakeFake, body: Any, kwargs: dict[str, Any],
                              status: int) -> None:
    fake, client = await make_fake(NitroSandbox)
    sent = kwargs if body is None else {"json": body}
    async with client.post("/oauth/token", **sent) as response:
        got_status, got = await answer(response)
    assert got_status == status
    assert set(got) == {"error", "message"}
    assert fake.stats.token_errors[str(status)] == 1


# --- shared ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [ClientCredentialsSandbox, NombaSandbox, NitroSandbox])
async def test_every_fake_describes_itself_and_keeps_secrets_out_of_reprs(
    make_fake: MakeFake, kind: type[MachineSandbox]
) -> None:
    fake, _ = await make_fake(kind)
    fake.base_url = "http://127.0.0.1:1"
    lines = "\n".join(fake.describe())
    assert "listening on http://127.0.0.1:1" in lines
    assert "client_secret:    s3:cr%+t   (fake)" in lines
    assert "s3:cr%+t" not in repr(fake) + repr(BASIC_CLIENT)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="unique"):
        MachineSettings(clients=(BASIC_CLIENT, BASIC_CLIENT))
    with pytest.raises(ValueError, match="positive"):
        MachineSettings(access_token_lifetime=0)
    with pytest.raises(ValueError, match="auth_method"):
        MachineClient("a", "b", auth_method="none")
    with pytest.raises(ValueError, match="default_scopes"):
        MachineClient("a", "b", default_scopes=("x",))
