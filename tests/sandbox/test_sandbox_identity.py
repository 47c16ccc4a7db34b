"""The fake identity service must be as strict as the real one."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.sandbox import (
    DEMO_CLIENT,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_REDIRECT_URI,
    NMBRS_SCOPES,
    Sandbox,
    SandboxClient,
    SandboxSettings,
)
from tests.clock import FakeClock
from tests.sandbox.conftest import MakeFlow
from tests.sandbox.sandbox_helpers import (
    READ_SCOPES,
    Flow,
    basic,
    naive_basic,
    pkce_pair,
    redirect_params,
)

SandboxFlow = tuple[Sandbox, Flow]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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


# -- the code flow --------------------------------------------------------------------------


async def test_code_flow_with_pkce_and_strict_basic_auth(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    assert "*" in flow.client_id
    assert "$" in flow.client_id
    assert all(c in flow.secret for c in ":%+")
    verifier, challenge = pkce_pair()
    status, location, query = await flow.authorize(
        code_challenge=challenge, code_challenge_method="S256", state="a b&c"
    )
    assert status == 302
    assert location.startswith(DEMO_REDIRECT_URI + "?")
    assert query["state"] == "a b&c"
    assert query["scope"] == " ".join(READ_SCOPES)
    assert "scope=offline_access%20company.info.read" in location  # %20, as IdentityServer
    answer = await flow.token(
        {
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": DEMO_REDIRECT_URI,
            "code_verifier": verifier,
        }
    )
    assert answer.status == 200, answer.body
    assert set(answer.body) == {
        "access_token",
        "expires_in",
        "token_type",
        "refresh_token",
        "scope",
    }
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert sandbox.stats.token_requests == {"authorization_code": 1}
    sent = sandbox.stats.token_log[-1]
    assert sent.headers["Authorization"] == basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)


async def test_client_secret_post(sandbox_flow: SandboxFlow) -> None:
    _, flow = sandbox_flow
    answer = await flow.redeem(await flow.code(), auth="post")
    assert answer.status == 200, answer.body


async def test_state_is_optional(sandbox_flow: SandboxFlow) -> None:
    _, flow = sandbox_flow
    status, _, query = await flow.authorize(state=None)
    assert status == 302
    assert "state" not in query
    assert "code" in query


async def test_no_offline_access_no_refresh_token(sandbox_flow: SandboxFlow) -> None:
    _, flow = sandbox_flow
    tokens = await flow.login(("company.info.read",))
    assert "refresh_token" not in tokens
    assert tokens["scope"] == "company.info.read"


async def test_redirect_uri_with_its_own_query(make_flow: MakeFlow) -> None:
    client = SandboxClient("app", "pw", ("https://app.example/cb?tenant=7",), frozenset({"x.y"}))
    _, flow = await make_flow(SandboxSettings(clients=(client,)))
    flow.client_id, flow.secret, flow.redirect_uri = "app", "pw", client.redirect_uris[0]
    status, location, query = await flow.authorize(scope="x.y")
    assert status == 302
    assert location.startswith("https://app.example/cb?tenant=7&code=")
    assert query["tenant"] == "7"


# -- authorize errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"client_id": "nobody"}, "unknown client"),
        ({"client_id": None}, "no client"),
        ({"redirect_uri": "http://localhost:8080/_proxy/callback/"}, "trailing slash"),
        ({"redirect_uri": "http://LOCALHOST:8080/_proxy/callback"}, "case differs"),
        ({"redirect_uri": "https://evil.example/cb"}, "foreign"),
        ({"redirect_uri": None}, "missing"),
    ],
)
async def test_authorize_never_redirects_to_unregistered_uri(
    sandbox_flow: SandboxFlow, params: dict[str, str | None], why: str
) -> None:
    _, flow = sandbox_flow
    status, body, _ = await flow.authorize(**params)
    assert status == 400, why
    assert "<html>" in body


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"scope": "company.info.read openid"}, "invalid_scope"),
        ({"scope": "company.info.read no.such.scope"}, "invalid_scope"),
        ({"scope": None}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "invalid_request"),
        ({"code_challenge": "x" * 43, "code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "x" * 43}, "invalid_request"),  # method defaults to plain
        ({"code_challenge": "x" * 43, "code_challenge_method": "S512"}, "invalid_request"),
        ({"code_challenge": "short", "code_challenge_method": "S256"}, "invalid_request"),
        ({"code_challenge_method": "S256"}, "invalid_request"),
    ],
)
async def test_authorize_errors_redirect_with_state(
    sandbox_flow: SandboxFlow, params: dict[str, str | None], error: str
) -> None:
    _, flow = sandbox_flow
    status, location, query = await flow.authorize(**params)
    assert status == 302
    assert location.startswith(DEMO_REDIRECT_URI)
    assert query["error"] == error
    assert query["state"] == "st-123"
    assert "code" not in query


async def test_scope_outside_the_clients_grant_rejects_everything(make_flow: MakeFlow) -> None:
    narrow = SandboxClient("narrow", "pw", (DEMO_REDIRECT_URI,), frozenset({"company.info.read"}))
    _, flow = await make_flow(SandboxSettings(clients=(narrow,)))
    flow.client_id, flow.secret = "narrow", "pw"
    _, _, query = await flow.authorize(scope="company.info.read employee.info.read")
    assert query["error"] == "invalid_scope"


# -- consent page ---------------------------------------------------------------------------


@pytest.mark.parametrize(("decision", "allowed"), [("allow", True), ("deny", False)])
async def test_consent_page(make_flow: MakeFlow, decision: str, allowed: bool) -> None:
    _, flow = await make_flow(SandboxSettings(auto_consent=False))
    status, page, _ = await flow.authorize(state="s1")
    assert status == 200
    assert "PartnerApp_demo_*$1" in page
    assert "employee.info.read" in page
    assert ">Allow<" in page
    assert ">Deny<" in page
    match = re.search(r'name="request_id" value="([^"]+)"', page)
    assert match is not None
    form = {"request_id": match[1], "decision": decision}
    async with flow.client.post(
        "/connect/authorize/consent", data=form, allow_redirects=False
    ) as response:
        assert response.status == 302
        query = redirect_params(response.headers["Location"])
    assert query["state"] == "s1"
    if allowed:
        tokens = await flow.redeem(query["code"])
        assert tokens.status == 200
    else:
        assert query["error"] == "access_denied"
        assert "code" not in query
    # The consent request is single use.
    async with flow.client.post("/connect/authorize/consent", data=form) as response:
        assert response.status == 400


# -- client authentication ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "form", "status", "error"),
    [
        ({"Authorization": basic(DEMO_CLIENT_ID, "wrong")}, {}, 401, "invalid_client"),
        (
            {"Authorization": basic("PartnerApp_other", DEMO_CLIENT_SECRET)},
            {},
            401,
            "invalid_client",
        ),
        # RFC 7617 Basic without form-urlencoding: '%' and '+' decode to something else.
        (
            {"Authorization": naive_basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)},
            {},
            401,
            "invalid_client",
        ),
        ({"Authorization": "Basic not base64!"}, {}, 401, "invalid_client"),
        ({"Authorization": "Basic " + "bm9jb2xvbg=="}, {}, 401, "invalid_client"),  # "nocolon"
        ({"Authorization": "Bearer abc"}, {}, 401, "invalid_client"),
        ({}, {}, 401, "invalid_client"),
        ({}, {"client_id": DEMO_CLIENT_ID}, 401, "invalid_client"),
        ({}, {"client_id": DEMO_CLIENT_ID, "client_secret": "wrong"}, 401, "invalid_client"),
        (
            {"Authorization": basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)},
            {"client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET},
            400,
            "invalid_request",
        ),
    ],
)
async def test_client_authentication_is_strict(
    sandbox_flow: SandboxFlow,
    headers: dict[str, str],
    form: dict[str, str],
    status: int,
    error: str,
) -> None:
    sandbox, flow = sandbox_flow
    code = await flow.code(use_pkce=False)
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": DEMO_REDIRECT_URI}
    async with flow.client.post("/connect/token", data=body | form, headers=headers) as response:
        assert response.status == status
        assert (await response.json())["error"] == error
        assert response.headers["Cache-Control"] == "no-store"
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert sandbox.stats.token_errors == {error: 1}


async def test_naive_basic_would_work_for_a_plain_secret(make_flow: MakeFlow) -> None:
    """Control for the strict-decoding case: the difference is only the encoding."""
    plain = SandboxClient("plain", "abc123", (DEMO_REDIRECT_URI,), frozenset(NMBRS_SCOPES))
    _, flow = await make_flow(SandboxSettings(clients=(plain,)))
    flow.client_id, flow.secret = "plain", "abc123"
    form = {
        "grant_type": "authorization_code",
        "code": await flow.code(use_pkce=False),
        "redirect_uri": DEMO_REDIRECT_URI,
    }
    headers = {"Authorization": naive_basic("plain", "abc123")}
    async with flow.client.post("/connect/token", data=form, headers=headers) as response:
        assert response.status == 200


async def test_token_endpoint_wants_a_form(sandbox_flow: SandboxFlow) -> None:
    _, flow = sandbox_flow
    headers = {"Authorization": basic(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)}
    body = {"grant_type": "authorization_code", "code": "x", "redirect_uri": DEMO_REDIRECT_URI}
    async with flow.client.post("/connect/token", json=body, headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"


async def test_rotated_client_secret(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    code = await flow.code()
    sandbox.set_client_secret(DEMO_CLIENT_ID, "n3w:s%cret")
    assert (await flow.redeem(code)).status == 401
    flow.secret = "n3w:s%cret"
    assert (await flow.redeem(await flow.code())).status == 200


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"grant_type": "password", "username": "u", "password": "p"}, "unsupported_grant_type"),
        ({}, "invalid_request"),
        ({"grant_type": "authorization_code"}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "nope"}, "invalid_grant"),
        (
            {"grant_type": "authorization_code", "code": "nope", "redirect_uri": "x"},
            "invalid_grant",
        ),
    ],
)
async def test_token_request_errors(
    sandbox_flow: SandboxFlow, form: dict[str, str], error: str
) -> None:
    _, flow = sandbox_flow
    answer = await flow.token(form)
    assert answer.status == 400
    assert answer.body["error"] == error
    assert answer.body["error_description"]


# -- codes ------------------------------------------------------------------------------------


async def test_code_is_single_use_and_reuse_revokes_its_grant(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    code = await flow.code()
    first = await flow.redeem(code)
    assert first.status == 200
    second = await flow.redeem(code)
    assert second.status == 400
    assert second.body["error"] == "invalid_grant"
    refresh = await flow.refresh(first.body["refresh_token"])
    assert refresh.body["error"] == "invalid_grant"
    api = await flow.api("/api/companies", first.body["access_token"])
    assert api.status == 401
    assert sandbox.stats.token_errors == {"invalid_grant": 2}


async def test_code_expires(sandbox_flow: SandboxFlow, clock: FakeClock) -> None:
    _, flow = sandbox_flow
    code = await flow.code()
    clock.advance(300)
    answer = await flow.redeem(code)
    assert answer.status == 400
    assert answer.body["error"] == "invalid_grant"


async def test_code_still_good_just_before_expiry(
    sandbox_flow: SandboxFlow, clock: FakeClock
) -> None:
    _, flow = sandbox_flow
    code = await flow.code()
    clock.advance(299.9)
    assert (await flow.redeem(code)).status == 200


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"code_verifier": pkce_pair()[0]}, "invalid_grant"),  # someone else's verifier
        ({"code_verifier": None}, "invalid_grant"),
        ({"code_verifier": "too-short"}, "invalid_grant"),
        ({"redirect_uri": "http://localhost:8080/other"}, "invalid_grant"),
        ({"redirect_uri": None}, "invalid_request"),
    ],
)
async def test_code_redemption_checks(
    sandbox_flow: SandboxFlow, change: dict[str, str | None], error: str
) -> None:
    _, flow = sandbox_flow
    code = await flow.code()
    form: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": DEMO_REDIRECT_URI,
        "code_verifier": flow.verifiers[code],
    }
    form |= change
    answer = await flow.token({k: v for k, v in form.items() if v is not None})
    assert answer.status == 400
    assert answer.body["error"] == error
    # Any attempt burns the code, as IdentityServer removes it when it looks it up.
    assert (await flow.redeem(code)).body["error"] == "invalid_grant"


async def test_verifier_without_challenge_is_refused(sandbox_flow: SandboxFlow) -> None:
    _, flow = sandbox_flow
    code = await flow.code(use_pkce=False)
    flow.verifiers[code] = pkce_pair()[0]
    assert (await flow.redeem(code)).body["error"] == "invalid_grant"


async def test_code_of_another_client(make_flow: MakeFlow) -> None:
    other = SandboxClient("other", "pw", (DEMO_REDIRECT_URI,), frozenset(NMBRS_SCOPES))
    _, flow = await make_flow(SandboxSettings(clients=(DEMO_CLIENT, other)))
    code = await flow.code()
    flow.client_id, flow.secret = "other", "pw"
    assert (await flow.redeem(code)).body["error"] == "invalid_grant"


# -- refresh tokens -------------------------------------------------------------------------


async def test_refresh_rotates(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    first = await flow.login()
    second = await flow.refresh(first["refresh_token"])
    assert second.status == 200, second.body
    assert second.body["refresh_token"] != first["refresh_token"]
    assert second.body["access_token"] != first["access_token"]
    assert second.body["scope"] == first["scope"]
    third = await flow.refresh(second.body["refresh_token"])
    assert third.status == 200
    assert sandbox.stats.refresh_redemptions == {
        sha256(first["refresh_token"]): 1,
        sha256(second.body["refresh_token"]): 1,
    }
    assert sandbox.stats.token_requests == {"authorization_code": 1, "refresh_token": 2}
    for token in (first["access_token"], second.body["access_token"]):
        assert (await flow.api("/api/companies", token)).status == 200


async def test_reused_refresh_token_kills_the_whole_grant(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    first = await flow.login()
    second = await flow.refresh(first["refresh_token"])
    assert second.status == 200
    replay = await flow.refresh(first["refresh_token"])
    assert replay.status == 400
    assert replay.body["error"] == "invalid_grant"
    successor = await flow.refresh(second.body["refresh_token"])
    assert successor.status == 400
    assert successor.body["error"] == "invalid_grant"
    for token in (first["access_token"], second.body["access_token"]):
        assert (await flow.api("/api/companies", token)).status == 401
    assert sandbox.stats.refresh_redemptions == {sha256(first["refresh_token"]): 1}
    # Other grants are untouched.
    fresh = await flow.login()
    assert (await flow.refresh(fresh["refresh_token"])).status == 200


async def test_refresh_token_expires(make_flow: MakeFlow, clock: FakeClock) -> None:
    _, flow = await make_flow(SandboxSettings(refresh_token_lifetime=10))
    tokens = await flow.login()
    clock.advance(10)
    assert (await flow.refresh(tokens["refresh_token"])).body["error"] == "invalid_grant"


async def test_refresh_token_of_another_client(make_flow: MakeFlow) -> None:
    other = SandboxClient("other", "pw", (DEMO_REDIRECT_URI,), frozenset(NMBRS_SCOPES))
    _, flow = await make_flow(SandboxSettings(clients=(DEMO_CLIENT, other)))
    tokens = await flow.login()
    flow.client_id, flow.secret = "other", "pw"
    assert (await flow.refresh(tokens["refresh_token"])).body["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("scope", "status", "expect"),
    [
        ("company.info.read", 200, "company.info.read"),
        ("company.info.read offline_access", 200, "company.info.read offline_access"),
        ("company.info", 400, "invalid_scope"),
        ("payroll.everything", 400, "invalid_scope"),
    ],
)
async def test_refresh_scope_narrowing(
    sandbox_flow: SandboxFlow, scope: str, status: int, expect: str
) -> None:
    _, flow = sandbox_flow
    tokens = await flow.login()
    answer = await flow.refresh(tokens["refresh_token"], scope=scope)
    assert answer.status == status
    if status == 200:
        assert answer.body["scope"] == expect
        claims = jwt.decode(answer.body["access_token"], options={"verify_signature": False})
        assert claims["scope"] == expect.split()
    else:
        assert answer.body["error"] == expect
        # A refused scope does not spend the refresh token.
        assert (await flow.refresh(tokens["refresh_token"])).status == 200


async def test_revoke_all_grants(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    tokens = await flow.login()
    sandbox.revoke_all_grants()
    assert (await flow.refresh(tokens["refresh_token"])).body["error"] == "invalid_grant"
    # Access tokens are JWTs and live on until they expire.
    assert (await flow.api("/api/companies", tokens["access_token"])).status == 200


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
