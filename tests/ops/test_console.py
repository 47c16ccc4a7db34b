"""The /_proxy/ page's forms: Connect with a key, replace the key, revoke; and their CSRF guard."""

from __future__ import annotations

import json
import re

import pytest

from proxy.inbound import csrf
from proxy.ops.console import notice_for
from proxy.ops.session import SESSION_COOKIE
from tests.ops.conftest import MakeEnv, Spec
from tests.ops.helpers import CLIENT_ID, SUBSCRIPTION_KEY, Browser, Env, Hop

WRONG_KEY = "a-key-the-gateway-does-not-know"


def csrf_token(page: Hop) -> str:
    tokens: set[str] = set(re.findall(r'name="csrf_token" value="([^"]+)"', page.text))
    assert len(tokens) == 1, tokens
    return tokens.pop()


def stored(env: Env) -> dict[str, dict[str, object]]:
    connections = json.loads(env.store_path.read_text())["connections"]
    assert isinstance(connections, dict)
    return connections


async def page_form(browser: Browser, path: str, **fields: str) -> Hop:
    """Submit a form of the status page, as the browser would: with the page's token."""
    page = await browser.get("/_proxy/")
    return await browser.post(path, {"csrf_token": csrf_token(page), **fields})


async def api_status(env: Env) -> int:
    async with env.browser.session.get(f"{env.proxy_url}/api/companies") as response:
        await response.read()
        return response.status


# --- connect with a subscription key entered on the page ----------------------------------------


async def test_connect_with_a_key_entered_on_the_page(make_env: MakeEnv) -> None:
    env = await make_env(Spec(subscription_key=None))
    browser = env.browser
    before = await browser.get("/_proxy/")
    assert "No subscription key" in before.text
    assert 'placeholder="subscription key" required>' in before.text

    connect = await browser.post("/_proxy/login", {
        "csrf_token": csrf_token(before), "connection": "nmbrs",
        "subscription_key": f"  {SUBSCRIPTION_KEY} ",
    })
    assert connect.status == 303  # a POST: the browser follows with a GET
    assert connect.location.startswith(f"{env.sandbox_url}/connect/authorize?")
    consent = await browser.get(connect.location)
    done = await browser.get(consent.location)
    assert done.status == 200, done.text

    entry = stored(env)["nmbrs"]
    assert entry["subscription_key"] == SUBSCRIPTION_KEY  # kept with the tokens, trimmed
    assert await api_status(env) == 200  # the gateway accepted the key from the page
    after = await browser.get("/_proxy/")
    assert "<dd>entered on this page<form" in after.text
    assert "No subscription key" not in after.text
    for hop in browser.seen:
        assert SUBSCRIPTION_KEY not in hop.text
        assert SUBSCRIPTION_KEY not in " ".join(hop.set_cookies())  # the cookie is encrypted


async def test_a_key_entered_with_connect_must_look_like_one(make_env: MakeEnv) -> None:
    env = await make_env(Spec(subscription_key=None))
    refused = await page_form(env.browser, "/_proxy/login", connection="nmbrs",
                              subscription_key="two words")
    assert refused.status == 400
    assert "cannot be right" in refused.text
    assert env.sandbox.stats.authorize_requests == 0


async def test_reconnect_keeps_the_key_entered_before(make_env: MakeEnv) -> None:
    env = await make_env(Spec(subscription_key=None))
    connect = await page_form(env.browser, "/_proxy/login", connection="nmbrs",
                              subscription_key=SUBSCRIPTION_KEY)
    await env.browser.get((await env.browser.get(connect.location)).location)
    again = await page_form(env.browser, "/_proxy/login", connection="nmbrs")  # no key field
    await env.browser.get((await env.browser.get(again.location)).location)
    entry = stored(env)["nmbrs"]
    assert entry["version"] == 2
    assert entry["subscription_key"] == SUBSCRIPTION_KEY
    assert await api_status(env) == 200


# --- replace the key --------------------------------------------------------------------------


async def test_a_key_saved_on_the_page_wins_over_the_configured_one(make_env: MakeEnv) -> None:
    env = await make_env(Spec(subscription_key=WRONG_KEY))
    await env.browser.link("nmbrs")
    assert await api_status(env) == 401  # the gateway refuses the configured key

    saved = await page_form(env.browser, "/_proxy/subscription-key", connection="nmbrs",
                            subscription_key=SUBSCRIPTION_KEY)
    assert saved.status == 303
    assert saved.location == "/_proxy/?done=key-saved&connection=nmbrs"
    assert await api_status(env) == 200
    entry = stored(env)["nmbrs"]
    assert entry["subscription_key"] == SUBSCRIPTION_KEY
    assert entry["version"] == 2
    page = await env.browser.get(saved.location)
    assert "Saved the subscription key of nmbrs." in page.text
    assert "<dd>entered on this page<form" in page.text
    assert SUBSCRIPTION_KEY not in page.text
    assert WRONG_KEY not in page.text


@pytest.mark.parametrize("key", ["", "   ", "with space", "x" * 257, "tab\there", "ünï"])
async def test_a_key_that_cannot_be_right_changes_nothing(make_env: MakeEnv, key: str) -> None:
    env = await make_env()
    await env.browser.link("nmbrs")
    refused = await page_form(env.browser, "/_proxy/subscription-key", connection="nmbrs",
                              subscription_key=key)
    assert refused.status == 400
    entry = stored(env)["nmbrs"]
    assert entry["subscription_key"] is None
    assert entry["version"] == 1


async def test_the_key_form_needs_a_linked_connection(make_env: MakeEnv) -> None:
    env = await make_env(Spec(subscription_key=None))
    refused = await page_form(env.browser, "/_proxy/subscription-key", connection="nmbrs",
                              subscription_key=SUBSCRIPTION_KEY)
    assert refused.status == 409
    assert "Connect first" in refused.text
    assert not env.store_path.exists()


# --- revoke -------------------------------------------------------------------------------------


async def test_revoke_ends_the_grant_and_forgets_it(make_env: MakeEnv) -> None:
    env = await make_env()
    await env.browser.link("nmbrs")
    refresh_token = stored(env)["nmbrs"]["refresh_token"]
    assert isinstance(refresh_token, str)
    grant = env.sandbox.grants.grant_of_refresh_token(refresh_token)
    assert grant is not None
    assert await api_status(env) == 200

    revoked = await page_form(env.browser, "/_proxy/revoke", connection="nmbrs")
    assert revoked.status == 303
    assert revoked.location == "/_proxy/?done=revoked&connection=nmbrs"
    assert env.sandbox.stats.revocations == 1  # the refresh token: it ends the grant
    ended = env.sandbox.grants.grant(grant.grant_id)
    assert ended.refresh_revoked
    assert ended.access_revoked
    assert "nmbrs" not in stored(env)
    assert await api_status(env) == 503  # not linked: consent required

    page = await env.browser.get(revoked.location)
    assert "Revoked the grant of nmbrs" in page.text
    assert 'data-state="not_linked"' in page.text
    assert ">Connect</button>" in page.text
    again = await page_form(env.browser, "/_proxy/revoke", connection="nmbrs")
    assert again.status == 409


async def test_a_refused_revocation_changes_nothing(make_env: MakeEnv) -> None:
    env = await make_env()
    await env.browser.link("nmbrs")
    env.sandbox.set_client_secret(CLIENT_ID, "rotated elsewhere")  # revocation: invalid_client
    refused = await page_form(env.browser, "/_proxy/revoke", connection="nmbrs")
    assert refused.status == 502
    assert "invalid_client" in refused.text
    assert "stays linked" in refused.text
    assert "nmbrs" in stored(env)
    assert await api_status(env) == 200


# --- the guard ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "headers"),
    [
        pytest.param({}, {}, id="no-token"),
        pytest.param({"csrf_token": "guessed"}, {}, id="wrong-token"),
        pytest.param({"csrf_token": None}, {"Origin": "http://evil.test"}, id="other-origin"),
        pytest.param({"csrf_token": None}, {"Sec-Fetch-Site": "cross-site"}, id="cross-site"),
        pytest.param({"csrf_token": None}, {"Sec-Fetch-Site": "same-site"}, id="same-site"),
    ],
)
@pytest.mark.parametrize("path", ["/_proxy/revoke", "/_proxy/subscription-key", "/_proxy/login"])
async def test_forms_refuse_requests_forged_elsewhere(
    make_env: MakeEnv, path: str, fields: dict[str, str | None], headers: dict[str, str]
) -> None:
    env = await make_env()
    await env.browser.link("nmbrs")
    page = await env.browser.get("/_proxy/")
    form = {"connection": "nmbrs", "subscription_key": "forged-key"}
    for name, value in fields.items():
        form[name] = csrf_token(page) if value is None else value
    refused = await env.browser.post(path, form, headers=headers)
    assert refused.status == 403
    assert env.sandbox.stats.revocations == 0
    assert env.sandbox.stats.authorize_requests == 1  # only the first link
    assert stored(env)["nmbrs"]["version"] == 1


async def test_a_form_from_another_browser_is_refused(make_env: MakeEnv) -> None:
    env = await make_env()
    await env.browser.link("nmbrs")
    token = csrf_token(await env.browser.get("/_proxy/"))
    stranger = env.new_browser()  # a token that is not this browser's session's
    refused = await stranger.post("/_proxy/revoke", {"csrf_token": token, "connection": "nmbrs"})
    assert refused.status == 403
    assert "nmbrs" in stored(env)


async def test_the_page_keeps_its_token_across_views(env: Env) -> None:
    first = await env.browser.get("/_proxy/")
    assert first.set_cookie(SESSION_COOKIE).value
    second = await env.browser.get("/_proxy/")
    assert second.set_cookies() == []  # the session and its token are kept
    assert csrf_token(first) == csrf_token(second)
    csp = second.headers["Content-Security-Policy"]
    assert f"form-action 'self' {env.sandbox_url}" in csp
    assert re.search(r"script-src 'nonce-[\w-]+'", csp)


# --- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({}, True),  # curl, or a browser too old to say: the token decides
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Site": "none"}, True),  # typed into the address bar
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Origin": "http://proxy.test:8080"}, True),
        ({"Origin": "https://proxy.test:8080"}, True),  # behind a TLS terminator
        ({"Origin": "http://evil.test"}, False),
        ({"Origin": "null"}, False),
        ({"Origin": "http://proxy.test:8080", "Sec-Fetch-Site": "cross-site"}, False),
    ],
)
def test_same_origin(headers: dict[str, str], allowed: bool) -> None:
    assert csrf.same_origin(headers, host="proxy.test:8080") is allowed


@pytest.mark.parametrize(
    ("expected", "given", "match"),
    [("abc", "abc", True), ("abc", "abd", False), (None, "abc", False), ("abc", None, False),
     ("", "", False)],
)
def test_tokens_match(expected: str | None, given: str | None, match: bool) -> None:
    assert csrf.tokens_match(expected, given) is match


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ({"done": "key-saved", "connection": "nmbrs"}, "Saved the subscription key of nmbrs."),
        ({"done": "revoked", "connection": "nmbrs"}, "Revoked the grant of nmbrs"),
        ({"done": "key-saved", "connection": "<b>other</b>"}, None),  # not a connection
        ({"done": "<script>", "connection": "nmbrs"}, None),
        ({}, None),
    ],
)
def test_notices_come_from_a_fixed_list(query: dict[str, str], shown: str | None) -> None:
    notice = notice_for(query, frozenset({"nmbrs"}))
    if shown is None:
        assert notice is None
    else:
        assert notice is not None
        assert notice.text.startswith(shown)
