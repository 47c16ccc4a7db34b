"""The fake token endpoint must be as strict as the real one: client authentication (RFC 6749
§2.3.1), codes, refresh tokens."""

from __future__ import annotations

import hashlib

import jwt
import pytest

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
    Flow,
    basic,
    naive_basic,
    pkce_pair,
)

SandboxFlow = tuple[Sandbox, Flow]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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
