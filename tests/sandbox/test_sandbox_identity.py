"""The fake identity service must be as strict as the real one: discovery and keys, revocation,
the test controls. The authorize endpoint and the token endpoint have their own files."""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.sandbox import (
    DEMO_CLIENT,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    NMBRS_SCOPES,
    Sandbox,
    SandboxSettings,
)
from tests.sandbox.conftest import MakeFlow
from tests.sandbox.sandbox_helpers import READ_SCOPES, Flow, basic

SandboxFlow = tuple[Sandbox, Flow]


# -- discovery and keys ---------------------------------------------------------------------


async def test_discovery_lists_absolute_endpoints(sandbox_flow: SandboxFlow) -> None:
    _, flow = sandbox_flow
    base = str(flow.client.make_url("")).rstrip("/")
    async with flow.client.get("/.well-known/openid-configuration") as response:
        assert response.status == 200
        doc = await response.json()
    assert doc["issuer"] == base
    assert doc["authorization_endpoint"] == f"{base}/connect/authorize"
    assert doc["token_endpoint"] == f"{base}/connect/token"
    assert doc["revocation_endpoint"] == f"{base}/connect/revocation"
    assert doc["jwks_uri"] == f"{base}/.well-known/openid-configuration/jwks"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
    ]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "refresh_token"}
    assert set(NMBRS_SCOPES) <= set(doc["scopes_supported"])


async def test_configured_issuer_wins(make_flow: MakeFlow) -> None:
    _, flow = await make_flow(SandboxSettings(issuer="https://identityservice.nmbrs.com"))
    async with flow.client.get("/.well-known/openid-configuration") as response:
        doc = await response.json()
    assert doc["token_endpoint"] == "https://identityservice.nmbrs.com/connect/token"


async def test_access_token_verifies_with_the_published_jwks(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    async with flow.client.get("/.well-known/openid-configuration/jwks") as response:
        jwks = await response.json()
    (jwk,) = jwks["keys"]
    assert {jwk["kty"], jwk["use"], jwk["alg"]} == {"RSA", "sig", "RS256"}
    assert "d" not in jwk  # public half only
    tokens = await flow.login()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    assert tokens["scope"] == " ".join(READ_SCOPES)
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["kid"] == jwk["kid"]
    key = jwt.PyJWK(jwk).key
    claims = jwt.decode(
        tokens["access_token"],
        key,
        algorithms=["RS256"],
        audience="nmbrs.api",
        issuer=str(flow.client.make_url("")).rstrip("/"),
    )
    assert claims["scope"] == list(READ_SCOPES)
    assert claims["client_id"] == DEMO_CLIENT_ID
    assert claims["sub"] == sandbox.user_sub
    assert claims["exp"] == pytest.approx(claims["iat"] + 3600)
    assert claims["nbf"] == claims["iat"] == sandbox.clock()
    for name in ("jti", "auth_time"):
        assert claims[name]


async def test_fractional_lifetime_is_exact(make_flow: MakeFlow) -> None:
    sandbox, flow = await make_flow(SandboxSettings(access_token_lifetime=2.5))
    tokens = await flow.login()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 2.5
    assert tokens["expires_in"] == 2.5
    assert claims["iat"] == sandbox.clock()


# -- revocation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "hint"),
    [
        ("refresh_token", "refresh_token"),
        ("refresh_token", None),
        ("refresh_token", "access_token"),  # a wrong hint only widens the search
        ("access_token", "access_token"),
        ("access_token", None),
    ],
)
async def test_revocation_kills_the_grant(
    sandbox_flow: SandboxFlow, which: str, hint: str | None
) -> None:
    sandbox, flow = sandbox_flow
    tokens = await flow.login()
    assert await flow.revoke(tokens[which], hint) == 200
    assert sandbox.stats.revocations == 1
    assert (await flow.refresh(tokens["refresh_token"])).body["error"] == "invalid_grant"
    assert (await flow.api("/api/companies", tokens["access_token"])).status == 401


async def test_revocation_of_unknown_token_is_ok(sandbox_flow: SandboxFlow) -> None:
    _, flow = sandbox_flow
    assert await flow.revoke("no-such-token", "refresh_token") == 200


async def test_revocation_needs_client_auth(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    tokens = await flow.login()
    form = {"token": tokens["refresh_token"]}
    headers = {"Authorization": basic(DEMO_CLIENT_ID, "wrong")}
    async with flow.client.post("/connect/revocation", data=form, headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["error"] == "invalid_client"
    assert sandbox.stats.revocations == 0
    assert (await flow.refresh(tokens["refresh_token"])).status == 200


# -- test controls --------------------------------------------------------------------------


async def test_token_gate_holds_requests(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    tokens = await flow.login()
    sandbox.token_gate.clear()
    pending = asyncio.create_task(flow.refresh(tokens["refresh_token"]))
    for _ in range(200):
        if sandbox.stats.token_in_flight:
            break
        await asyncio.sleep(0.005)
    assert sandbox.stats.token_in_flight == 1
    assert sandbox.stats.token_requests["refresh_token"] == 1
    await asyncio.sleep(0.05)
    assert not pending.done()
    sandbox.token_gate.set()
    answer = await pending
    assert answer.status == 200
    assert sandbox.stats.token_in_flight == 0


async def test_token_delay(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    sandbox.token_delay = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    await flow.login()
    assert loop.time() - started >= 0.2


async def test_issue_tokens_for_test(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    base = str(flow.client.make_url("")).rstrip("/")
    tokens: dict[str, Any] = sandbox.issue_tokens_for_test(
        DEMO_CLIENT_ID, ["offline_access", "company.info"], sub="alice", issuer=base
    )
    assert set(tokens) == {"access_token", "expires_in", "token_type", "refresh_token", "scope"}
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice"
    assert claims["iss"] == base
    assert (await flow.api("/api/companies", tokens["access_token"])).status == 200
    assert (await flow.refresh(tokens["refresh_token"])).status == 200
    with pytest.raises(ValueError, match="not allowed"):
        sandbox.issue_tokens_for_test(DEMO_CLIENT_ID, ["root"], issuer=base)


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="unique"):
        SandboxSettings(clients=(DEMO_CLIENT, DEMO_CLIENT))
    with pytest.raises(ValueError, match="rate_limit"):
        SandboxSettings(rate_limit=0)
    assert DEMO_CLIENT_SECRET not in repr(DEMO_CLIENT)


def test_own_signing_key_when_none_given() -> None:
    one, two = Sandbox(), Sandbox(signing_key=rsa.generate_private_key(65537, 2048))
    assert one.signing_key.kid != two.signing_key.kid
