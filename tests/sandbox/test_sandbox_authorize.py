"""The fake authorize endpoint must be as strict as the real one: the code flow, authorize
errors, the consent page."""

from __future__ import annotations

import re

import pytest

from proxy.sandbox import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_REDIRECT_URI,
    Sandbox,
    SandboxClient,
    SandboxSettings,
)
from tests.sandbox.conftest import MakeFlow
from tests.sandbox.sandbox_helpers import (
    READ_SCOPES,
    Flow,
    basic,
    pkce_pair,
    redirect_params,
)

SandboxFlow = tuple[Sandbox, Flow]


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
