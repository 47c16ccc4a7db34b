"""The consent cookie as a security boundary: no fixation, HttpOnly and SameSite=Lax always,
Secure for an https redirect URI, and the cookie itself never forwarded upstream."""

from __future__ import annotations

import json
import time

from cryptography.fernet import Fernet

from proxy.core.secret import Secret
from proxy.ops.session import SESSION_COOKIE, derive_session_key
from tests.ops.conftest import MakeEnv, Spec

SECRET = "a-session-secret-of-some-length"


def seal(data: dict[str, object]) -> str:
    return Fernet(derive_session_key(Secret(SECRET))).encrypt(json.dumps(data).encode()).decode()


def unseal(value: str) -> dict[str, object]:
    opened: dict[str, object] = json.loads(
        Fernet(derive_session_key(Secret(SECRET))).decrypt(value.encode()))
    return opened


async def test_a_login_never_keeps_the_session_the_browser_brought(make_env: MakeEnv) -> None:
    """A planted cookie (even a valid one, sealed with the proxy's key) is not adopted: the
    login answers with a new session; only well-formed pending logins are carried over."""
    env = await make_env(session_secret=SECRET)
    browser = env.browser
    earlier = {"connection": "nmbrs", "verifier": "v" * 43, "created": env.clock()}
    planted_at = int(time.time()) - 100  # recent enough to be loaded (max age 600 s)
    planted = seal({"created": planted_at,
                    "session": {"role": "admin", "pending": {"earlier-state": earlier}}})
    browser.session.cookie_jar.update_cookies({SESSION_COOKIE: planted})
    login = await browser.login("nmbrs")
    assert login.status == 302
    cookie = login.set_cookie(SESSION_COOKIE).value
    assert cookie != planted
    session = unseal(cookie)
    assert session["created"] != planted_at
    assert isinstance(session["created"], int)
    assert session["created"] >= int(time.time()) - 5
    body = session["session"]
    assert isinstance(body, dict)
    assert set(body) == {"pending"}  # nothing else from the planted session survives
    assert "earlier-state" in body["pending"]  # the planted cookie was read: a pending login
    assert len(body["pending"]) == 2  # ... is carried over, beside the new one


async def test_cookie_flags_for_http_and_https(make_env: MakeEnv) -> None:
    for scheme, secure in (("http", False), ("https", True)):
        env = await make_env(Spec(scheme=scheme))
        login = await env.browser.login("nmbrs")
        cookie = login.set_cookie(SESSION_COOKIE)
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Lax"
        assert cookie["path"] == "/"
        assert cookie["max-age"] != ""
        assert bool(cookie["secure"]) is secure
