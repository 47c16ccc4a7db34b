"""The consent flow end to end: a real proxy server, the sandbox identity service, a browser."""

from __future__ import annotations

import json
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import pytest

from proxy.core.secret import Secret
from proxy.forwarding.state import PROXY_STATE
from proxy.ops.session import (
    CONSENT,
    LOGIN_MAX_AGE_SECONDS,
    MAX_PENDING_LOGINS,
    SESSION_COOKIE,
    SessionKeyError,
    derive_session_key,
    load_or_create_session_key,
)
from tests.ops.conftest import MakeEnv, Spec
from tests.ops.helpers import (
    CALLBACK_PATH,
    CLIENT_ID,
    CLIENT_SECRET,
    SCOPES,
    SUBSCRIPTION_KEY,
    Env,
    query_of,
    with_query,
)

UNKNOWN_STATE = "does not belong to a login started in this browser"


def assert_no_secrets(text: str, *extra: str) -> None:
    for value in (CLIENT_SECRET, SUBSCRIPTION_KEY, *extra):
        assert value not in text


def stored(env: Env) -> dict[str, dict[str, object]]:
    document = json.loads(env.store_path.read_text())
    connections = document["connections"]
    assert isinstance(connections, dict)
    return connections


# --- the whole flow -------------------------------------------------------------------------


async def test_consent_flow_links_the_connection_and_requests_go_through(env: Env) -> None:
    browser = env.browser
    before = await browser.get("/_proxy/")
    assert before.status == 200
    assert ">Connect</button>" in before.text
    assert 'data-state="not_linked"' in before.text

    login = await browser.login("nmbrs")
    assert login.status == 302
    authorize = login.location
    assert authorize.startswith(f"{env.sandbox_url}/connect/authorize?")
    params = query_of(authorize)
    assert params["client_id"] == CLIENT_ID
    assert params["redirect_uri"] == f"{env.proxy_url}{CALLBACK_PATH}"
    assert params["response_type"] == "code"
    assert params["scope"] == " ".join(SCOPES)
    assert params["code_challenge_method"] == "S256"
    assert len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 43
    cookie = login.set_cookie(SESSION_COOKIE)
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == "3600"  # the session; the login itself expires after 600 s
    assert not cookie["secure"]  # the redirect URI is plain http

    consent = await browser.get(authorize)
    assert consent.status == 302
    callback_url = consent.location
    assert callback_url.startswith(f"{env.proxy_url}{CALLBACK_PATH}?")
    code = query_of(callback_url)["code"]

    done = await browser.get(callback_url)
    assert done.status == 200, done.text
    assert "Connection nmbrs works" in done.text
    for scope in SCOPES:
        assert scope in done.text
    assert "Access token valid until" in done.text
    assert 'href="/_proxy/"' in done.text
    # the used state leaves the session: nothing is pending, so the cookie goes
    assert browser.cookie() is None
    assert env.sandbox.stats.token_requests["authorization_code"] == 1

    await check_linked(env, [before.text, login.text, done.text], code)


async def check_linked(env: Env, pages: list[str], code: str) -> None:
    browser = env.browser
    # the token set is on disk, private, at version 1
    assert stat.S_IMODE(env.store_path.stat().st_mode) == 0o600
    entry = stored(env)["nmbrs"]
    assert entry["version"] == 1
    assert entry["scopes"] == list(SCOPES)
    access_token, refresh_token = entry["access_token"], entry["refresh_token"]
    assert isinstance(access_token, str)
    assert isinstance(refresh_token, str)

    # a plain request through the proxy reaches the API with the new token
    async with browser.session.get(f"{env.proxy_url}/api/companies") as response:
        assert response.status == 200
        body = await response.json()
    assert isinstance(body["data"], list)
    assert body["data"]
    assert "pagination" in body

    after = await browser.get("/_proxy/")
    assert after.status == 200
    assert ">Reconnect</button>" in after.text
    assert 'data-state="linked"' in after.text
    assert "fresh · <span" in after.text
    assert '<li class="granted" title="granted">company.info.read</li>' in after.text
    assert "expires in 59 min" in after.text or "expires in 60 min" in after.text
    for text in [*pages, after.text]:
        assert_no_secrets(text, access_token, refresh_token, code)


async def test_the_status_page_escapes_names_and_shows_no_secrets(make_env: MakeEnv) -> None:
    hostile = '<script>alert("x")</script>&'
    env = await make_env(Spec(name=hostile))
    page = await env.browser.get("/_proxy/")
    assert page.status == 200
    assert "<script>" not in page.text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page.text
    assert 'name="connection" value="&lt;script&gt;alert(&quot;x&quot;)' in page.text
    assert page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-store"
    assert_no_secrets(page.text)

    # the login works with such a name too, and its error pages escape it as well
    assert (await env.browser.login(hostile)).status == 302
    unknown = await env.browser.login("<b>nope</b>")
    assert unknown.status == 404
    assert "<b>nope</b>" not in unknown.text


async def test_proxy_without_slash_redirects_to_the_status_page(env: Env) -> None:
    hop = await env.browser.get("/_proxy")
    assert hop.status == 301
    assert hop.location == "/_proxy/"


# --- login ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("", 400, "needs a connection name"),
        ("?connection=", 400, "needs a connection name"),
        ("?connection=other", 404, "No connection is configured with the name"),
    ],
)
async def test_login_needs_a_known_connection(env: Env, query: str, status: int, text: str) -> None:
    hop = await env.browser.get(f"/_proxy/login{query}")
    assert hop.status == status
    assert text in hop.text
    assert hop.headers["Content-Type"].startswith("text/html")
    assert not hop.set_cookies()


async def test_every_login_starts_a_fresh_session(env: Env) -> None:
    browser = env.browser
    first = await browser.login("nmbrs")
    cookie_1 = browser.cookie()
    second = await browser.login("nmbrs")
    cookie_2 = browser.cookie()
    assert cookie_1 is not None
    assert cookie_2 is not None
    assert cookie_1 != cookie_2
    assert query_of(first.location)["state"] != query_of(second.location)["state"]

    # both logins stay pending: the first one can still complete
    consent = await browser.get(first.location)
    done = await browser.get(consent.location)
    assert done.status == 200, done.text
    # and the second one after it
    consent = await browser.get(second.location)
    done = await browser.get(consent.location)
    assert done.status == 200, done.text


@pytest.mark.parametrize("quoted", [False, True], ids=["unquoted", "quoted"])
async def test_the_callback_accepts_the_cookie_quoted_or_not(env: Env, quoted: bool) -> None:
    """Browsers send a cookie value back as it was set, and a server may set it quoted (RFC
    6265 allows a DQUOTE-wrapped value; a Fernet token ending in `=` often is): both forms
    carry the same login."""
    browser = env.browser
    login = await browser.login("nmbrs")
    value = login.set_cookie(SESSION_COOKIE).value
    assert not value.startswith('"')
    consent = await browser.get(login.location)
    sent = f'"{value}"' if quoted else value
    headers = {"Cookie": f"{SESSION_COOKIE}={sent}"}  # no jar: the header exactly as written
    async with (aiohttp.ClientSession() as bare,
                bare.get(consent.location, allow_redirects=False, headers=headers) as response):
        text = await response.text()
        assert response.status == 200, text
    assert "Connection nmbrs works" in text


async def test_pending_logins_are_capped(env: Env) -> None:
    browser = env.browser
    states = []
    for _ in range(MAX_PENDING_LOGINS + 2):
        login = await browser.login("nmbrs")
        states.append(query_of(login.location)["state"])
    callback = f"{env.proxy_url}{CALLBACK_PATH}"
    for state in states[:2]:  # the oldest are forgotten
        hop = await browser.get(f"{callback}?code=x&state={state}")
        assert hop.status == 400
        assert UNKNOWN_STATE in hop.text
    hop = await browser.get(f"{callback}?code=bogus&state={states[2]}")
    assert hop.status == 400
    assert "invalid_grant" in hop.text  # known state: the (bogus) code was tried


async def test_secure_cookie_when_the_redirect_uri_is_https(make_env: MakeEnv) -> None:
    env = await make_env(Spec(scheme="https"))
    login = await env.browser.login("nmbrs")
    assert login.status == 302
    cookie = login.set_cookie(SESSION_COOKIE)
    assert cookie["secure"] is True
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"


# --- callback errors ------------------------------------------------------------------------


async def test_access_denied_gives_a_clear_page_and_uses_up_the_state(env: Env) -> None:
    browser = env.browser
    callback_url = await browser.authorize("nmbrs")
    denied = with_query(
        callback_url,
        code=None,
        scope=None,
        error="access_denied",
        error_description="The user denied the request.",
    )
    hop = await browser.get(denied)
    assert hop.status == 400
    assert "access_denied" in hop.text
    assert "The user denied the request." in hop.text
    assert "Try again" in hop.text
    assert 'href="/_proxy/login?connection=nmbrs"' in hop.text
    # the state is used up: the real code cannot be redeemed with it any more
    again = await browser.get(callback_url)
    assert again.status == 400
    assert UNKNOWN_STATE in again.text
    assert env.sandbox.stats.token_requests["authorization_code"] == 0


async def test_error_without_a_known_state_is_shown_too(env: Env) -> None:
    hop = await env.browser.get(f"{CALLBACK_PATH}?error=%3Cb%3Einvalid_scope%3C%2Fb%3E")
    assert hop.status == 400
    assert "&lt;b&gt;invalid_scope&lt;/b&gt;" in hop.text
    assert "<b>invalid_scope" not in hop.text


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"state": None}, "without a state parameter"),
        ({"state": ""}, "without a state parameter"),
        ({"state": "forged-state"}, UNKNOWN_STATE),
        ({"code": None}, "without an authorization code"),
    ],
)
async def test_callback_refuses_a_bad_answer(
    env: Env, change: dict[str, str | None], text: str
) -> None:
    callback_url = await env.browser.authorize("nmbrs")
    hop = await env.browser.get(with_query(callback_url, **change))
    assert hop.status == 400
    assert text in hop.text
    assert query_of(callback_url)["code"] not in hop.text
    assert env.sandbox.stats.token_requests["authorization_code"] == 0


async def test_a_state_from_another_browser_is_refused(env: Env) -> None:
    alice, mallory = env.browser, env.new_browser()
    await mallory.login("nmbrs")  # mallory has a session of her own
    callback_url = await alice.authorize("nmbrs")
    stolen = await mallory.get(callback_url)
    assert stolen.status == 400
    assert UNKNOWN_STATE in stolen.text
    assert env.sandbox.stats.token_requests["authorization_code"] == 0
    # alice's login is untouched and completes
    done = await alice.get(callback_url)
    assert done.status == 200, done.text


async def test_an_expired_code_gives_a_clear_page(env: Env) -> None:
    callback_url = await env.browser.authorize("nmbrs")
    env.clock.advance(301)  # the sandbox's codes live 5 minutes
    hop = await env.browser.get(callback_url)
    assert hop.status == 400
    assert "invalid_grant" in hop.text
    assert "single use and expire" in hop.text
    assert query_of(callback_url)["code"] not in hop.text
    assert_no_secrets(hop.text)
    assert not env.store_path.exists()
    status = env.app[PROXY_STATE].connections["nmbrs"].manager.status()
    assert not status.linked


async def test_a_callback_cannot_be_replayed(env: Env) -> None:
    callback_url = await env.browser.authorize("nmbrs")
    assert (await env.browser.get(callback_url)).status == 200
    replay = await env.browser.get(callback_url)
    assert replay.status == 400
    assert UNKNOWN_STATE in replay.text
    assert env.sandbox.stats.token_requests["authorization_code"] == 1


async def test_a_login_that_took_too_long_is_refused(env: Env) -> None:
    callback_url = await env.browser.authorize("nmbrs")
    consent = env.app[CONSENT]
    consent.clock = lambda: time.time() + LOGIN_MAX_AGE_SECONDS + 1
    hop = await env.browser.get(callback_url)
    assert hop.status == 400
    assert "took too long" in hop.text
    assert env.sandbox.stats.token_requests["authorization_code"] == 0


# --- several connections --------------------------------------------------------------------


async def test_connections_sharing_a_callback_path_are_told_apart_by_state(
    make_env: MakeEnv,
) -> None:
    env = await make_env(
        Spec(name="acme", prefix="/acme/"),
        Spec(name="globex", prefix="/globex/"),
        Spec(name="initech", prefix="/initech/", callback_path="/oauth/initech"),
    )
    browser = env.browser
    acme = await browser.authorize("acme")
    globex = await browser.authorize("globex")
    initech = await browser.authorize("initech")
    assert initech.startswith(f"{env.proxy_url}/oauth/initech?")

    assert "Connection globex works" in (await browser.get(globex)).text
    connections = env.app[PROXY_STATE].connections
    assert connections["globex"].manager.status().linked
    assert not connections["acme"].manager.status().linked

    # a state is only good at its own connection's callback path
    moved = await browser.get(initech.replace("/oauth/initech", CALLBACK_PATH))
    assert moved.status == 400
    assert "wrong address" in moved.text

    assert "Connection acme works" in (await browser.get(acme)).text
    assert set(stored(env)) == {"acme", "globex"}
    async with browser.session.get(f"{env.proxy_url}/acme/api/companies") as response:
        assert response.status == 200


# --- the session key ------------------------------------------------------------------------


async def test_the_session_key_is_generated_once_and_reused(make_env: MakeEnv) -> None:
    first = await make_env()
    key_file = first.store_path.parent / "session.key"
    login = await first.browser.login("nmbrs")  # the app has started
    assert key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()

    second = await make_env()  # a restart, on another port, with the same store folder
    assert key_file.read_bytes() == key
    # the second proxy reads the first one's cookie (cookies do not care about ports)
    state = query_of(login.location)["state"]
    hop = await first.browser.get(f"{second.proxy_url}{CALLBACK_PATH}?code=bogus&state={state}")
    assert hop.status == 400
    assert "invalid_grant" in hop.text  # the state was found: the bogus code was tried
    assert UNKNOWN_STATE not in hop.text


async def test_a_configured_session_secret_needs_no_key_file(make_env: MakeEnv) -> None:
    env = await make_env(session_secret="a-long-enough-session-secret")
    done = await env.browser.link("nmbrs")
    assert done.status == 200, done.text
    assert not (env.store_path.parent / "session.key").exists()


def test_derived_session_keys_are_fernet_keys() -> None:
    key = derive_session_key(Secret("a-long-enough-session-secret"))
    assert len(key) == 44
    assert key == derive_session_key(Secret("a-long-enough-session-secret"))
    assert key != derive_session_key(Secret("another-session-secret!"))


def test_a_damaged_session_key_file_is_reported_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "session.key"
    path.write_text("not a key\n")
    with pytest.raises(SessionKeyError, match="does not hold a session key"):
        load_or_create_session_key(path)
    assert path.read_text() == "not a key\n"


def test_a_new_session_key_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "session.key"
    key = load_or_create_session_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_session_key(path) == key


def test_workers_starting_together_agree_on_one_session_key(tmp_path: Path) -> None:
    path = tmp_path / "state" / "session.key"
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = set(pool.map(lambda _: load_or_create_session_key(path), range(16)))
    assert len(keys) == 1
    assert [p.name for p in path.parent.iterdir()] == ["session.key"]  # nothing staged is left


async def test_pages_forbid_framing_and_referrers(env: Env) -> None:
    hop = await env.browser.get("/_proxy/")
    assert hop.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in hop.headers["Content-Security-Policy"]
    login = await env.browser.login("nmbrs")
    assert login.headers["Cache-Control"] == "no-store"


async def test_discovery_failure_gives_a_clear_page(make_env: MakeEnv) -> None:
    env = await make_env()
    connection = env.app[PROXY_STATE].connections["nmbrs"]
    assert connection.consent is not None
    connection.consent.discovery.issuer = "http://127.0.0.1:9"  # nothing listens there
    hop = await env.browser.login("nmbrs")
    assert hop.status == 502
    assert "temporarily_unavailable" in hop.text
    assert not hop.set_cookies()
