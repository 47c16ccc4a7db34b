"""The pure OAuth helpers, by tables of cases; the decoding side is written here from the RFCs."""

from __future__ import annotations

import base64
import re
import urllib.parse
from typing import Any

import jwt
import pytest

from proxy.oauth.protocol import (
    DEFAULT_LIFETIME_SECONDS,
    Endpoints,
    GrantError,
    authorize_url,
    client_basic_auth,
    new_pkce_verifier,
    new_state,
    parse_discovery,
    parse_token_error,
    parse_token_response,
    pkce_challenge,
)
from proxy.oauth.token_set import TokenSet

NOW = 1_800_000_000.0
UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]+")


def decode_basic(header: str) -> tuple[str, str]:
    """RFC 6749 §2.3.1 read back: base64, split at the first ':', form-urldecode each part."""
    scheme, _, credentials = header.partition(" ")
    assert scheme == "Basic"
    userpass = base64.b64decode(credentials, validate=True).decode("ascii")
    raw_id, _, raw_secret = userpass.partition(":")
    return urllib.parse.unquote_plus(raw_id), urllib.parse.unquote_plus(raw_secret)


# --- client authentication ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "client_secret"),
    [
        ("PartnerApp_demo_*$1", "s3cr:et%+demo"),
        ("PartnerApp_x*$y", "plain"),
        ("id:with:colons", "secret:with:colons"),
        ("id with spaces", "secret with  spaces "),
        ("100%+sure", "%2B is not +"),
        ("ünïcødé-id", "пароль-秘密"),
        ("a/b?c=d&e#f", "=&;,@!'()~"),
    ],
)
def test_client_basic_auth_round_trips(client_id: str, client_secret: str) -> None:
    header = client_basic_auth(client_id, client_secret)
    assert decode_basic(header) == (client_id, client_secret)
    userpass = base64.b64decode(header.removeprefix("Basic ")).decode("ascii")
    assert userpass.count(":") == 1  # the separator is the only raw colon
    assert " " not in userpass


@pytest.mark.parametrize(
    ("client_id", "client_secret", "userpass"),
    [
        ("PartnerApp_x*$y", "s3:c+t%", "PartnerApp_x%2A%24y:s3%3Ac%2Bt%25"),
        ("a b", "c d", "a+b:c+d"),
        ("é", "~", "%C3%A9:~"),
    ],
)
def test_client_basic_auth_encodes_each_part_first(
    client_id: str, client_secret: str, userpass: str
) -> None:
    expected = "Basic " + base64.b64encode(userpass.encode()).decode()
    assert client_basic_auth(client_id, client_secret) == expected


# --- PKCE and state -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verifier", "challenge"),
    [
        # RFC 7636 Appendix B
        (
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        ),
    ],
)
def test_pkce_challenge_matches_the_rfc_vector(verifier: str, challenge: str) -> None:
    assert pkce_challenge(verifier) == challenge


def test_pkce_verifiers_and_states_are_random_and_well_formed() -> None:
    verifiers = {new_pkce_verifier() for _ in range(50)}
    states = {new_state() for _ in range(50)}
    assert len(verifiers) == len(states) == 50
    for verifier in verifiers:
        assert 43 <= len(verifier) <= 128
        assert UNRESERVED.fullmatch(verifier)
        challenge = pkce_challenge(verifier)
        assert len(challenge) == 43
        assert "=" not in challenge
    for state in states:
        assert len(state) >= 43
        assert UNRESERVED.fullmatch(state)


# --- authorize URL --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "base", "extra"),
    [
        (
            "https://identityservice.nmbrs.com/connect/authorize",
            "https://identityservice.nmbrs.com/connect/authorize",
            {},
        ),
        (
            "https://idp.example/authorize?tenant=a",
            "https://idp.example/authorize",
            {"tenant": "a"},
        ),
    ],
)
def test_authorize_url_carries_every_parameter(
    endpoint: str, base: str, extra: dict[str, str]
) -> None:
    url = authorize_url(
        endpoint,
        client_id="PartnerApp_x*$y",
        redirect_uri="http://localhost:8080/_proxy/callback?x=1&y=2",
        scopes=("offline_access", "company.info.read"),
        state="st&ate=1",
        code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
    )
    parts = urllib.parse.urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == base
    pairs = urllib.parse.parse_qsl(parts.query, strict_parsing=True)
    assert len(pairs) == len(dict(pairs))  # no parameter twice
    assert dict(pairs) == {
        **extra,
        "client_id": "PartnerApp_x*$y",
        "redirect_uri": "http://localhost:8080/_proxy/callback?x=1&y=2",
        "response_type": "code",
        "scope": "offline_access company.info.read",
        "state": "st&ate=1",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }


# --- token answers --------------------------------------------------------------------------

_JWT_KEY = "a-test-signing-key-of-at-least-32-bytes!"


def a_jwt(lifetime: float | None, *, iat: float = NOW - 5) -> str:
    claims: dict[str, Any] = {"iat": iat, "nbf": iat, "sub": "x"}
    if lifetime is not None:
        claims["exp"] = iat + lifetime
    return jwt.encode(claims, _JWT_KEY, algorithm="HS256")


PREVIOUS = TokenSet(
    access_token="old-access",
    expires_at=NOW - 10,
    obtained_at=NOW - 3610,
    refresh_token="old-refresh",
    refresh_issued_at=NOW - 3610,
    scopes=("offline_access", "company.info.read"),
    version=7,
)


@pytest.mark.parametrize(
    ("access_token", "expires_in", "lifetime"),
    [
        (a_jwt(1800), 3600, 1800.0),  # the JWT's own exp - iat wins
        (a_jwt(1800), None, 1800.0),
        (a_jwt(None), 900, 900.0),  # a JWT without exp: expires_in
        ("opaque", 3600, 3600.0),
        ("opaque", 120.5, 120.5),
        ("opaque", "3600", 3600.0),
        ("opaque", " 60 ", 60.0),
        ("opaque", None, DEFAULT_LIFETIME_SECONDS),
        ("opaque", "soon", DEFAULT_LIFETIME_SECONDS),
        ("opaque", 0, DEFAULT_LIFETIME_SECONDS),
        ("opaque", -5, DEFAULT_LIFETIME_SECONDS),
        ("opaque", True, DEFAULT_LIFETIME_SECONDS),
        ("opaque", [3600], DEFAULT_LIFETIME_SECONDS),
    ],
)
def test_token_lifetime(access_token: str, expires_in: object, lifetime: float) -> None:
    body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    tokens = parse_token_response(body, requested_at=NOW, previous=None)
    assert tokens.obtained_at == NOW
    assert tokens.expires_at == NOW + lifetime
    assert tokens.access_token == access_token


@pytest.mark.parametrize(
    ("refresh_token", "previous", "kept", "issued_at"),
    [
        ("new-refresh", None, "new-refresh", NOW),
        ("new-refresh", PREVIOUS, "new-refresh", NOW),
        (None, PREVIOUS, "old-refresh", NOW - 3610),  # RFC 6749 §6: keep the one we had
        ("", PREVIOUS, "old-refresh", NOW - 3610),
        (None, None, None, None),
    ],
)
def test_refresh_token_is_kept_when_absent(
    refresh_token: str | None,
    previous: TokenSet | None,
    kept: str | None,
    issued_at: float | None,
) -> None:
    body: dict[str, Any] = {"access_token": "a", "expires_in": 60}
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    tokens = parse_token_response(body, requested_at=NOW, previous=previous)
    assert tokens.refresh_token == kept
    assert tokens.refresh_issued_at == issued_at
    assert tokens.version == (previous.version if previous else 0)


@pytest.mark.parametrize(
    ("scope", "previous", "expected"),
    [
        ("offline_access company.info.read", None, ("offline_access", "company.info.read")),
        ("  a   b ", None, ("a", "b")),
        (["a", "b"], None, ("a", "b")),
        (None, PREVIOUS, ("offline_access", "company.info.read")),
        (None, None, ("requested.scope",)),
    ],
)
def test_scopes_granted(
    scope: object, previous: TokenSet | None, expected: tuple[str, ...]
) -> None:
    body: dict[str, Any] = {"access_token": "a"}
    if scope is not None:
        body["scope"] = scope
    tokens = parse_token_response(
        body, requested_at=NOW, previous=previous, requested_scopes=("requested.scope",)
    )
    assert tokens.scopes == expected


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "access_token=x",
        {},
        {"access_token": ""},
        {"access_token": 42},
        {"access_token": "a", "token_type": "mac"},
        {"access_token": "a", "token_type": None},
    ],
)
def test_unusable_token_answers_are_refused(body: object) -> None:
    with pytest.raises(GrantError) as caught:
        parse_token_response(body, requested_at=NOW, previous=None)
    assert caught.value.error == "invalid_response"
    assert not caught.value.fatal


def test_token_type_is_case_insensitive() -> None:
    body = {"access_token": "a", "token_type": "bearer"}
    assert parse_token_response(body, requested_at=NOW, previous=None).access_token == "a"


@pytest.mark.parametrize(
    ("status", "body", "error", "description", "fatal"),
    [
        (
            400,
            {"error": "invalid_grant", "error_description": "expired"},
            "invalid_grant",
            "expired",
            True,
        ),
        (401, {"error": "invalid_client"}, "invalid_client", "", True),
        (400, {"error": "invalid_scope", "error_description": 5}, "invalid_scope", "", False),
        (503, {"error": "temporarily_unavailable"}, "temporarily_unavailable", "", False),
        (500, None, "server_error", "the token endpoint answered HTTP 500", False),
        (502, "<html>", "server_error", "the token endpoint answered HTTP 502", False),
        (404, {"message": "no"}, "invalid_response", "the token endpoint answered HTTP 404", False),
        (400, {"error": 7}, "invalid_response", "the token endpoint answered HTTP 400", False),
    ],
)
def test_token_errors(status: int, body: object, error: str, description: str, fatal: bool) -> None:
    parsed = parse_token_error(status, body)
    assert (parsed.error, parsed.description, parsed.status, parsed.fatal) == (
        error,
        description,
        status,
        fatal,
    )


# --- discovery ------------------------------------------------------------------------------

ISSUER = "https://identityservice.nmbrs.com"
DOCUMENT = {
    "issuer": ISSUER,
    "authorization_endpoint": f"{ISSUER}/connect/authorize",
    "token_endpoint": f"{ISSUER}/connect/token",
    "revocation_endpoint": f"{ISSUER}/connect/revocation",
}


@pytest.mark.parametrize(
    ("document", "issuer", "expected"),
    [
        (
            DOCUMENT,
            ISSUER,
            Endpoints(
                f"{ISSUER}/connect/authorize",
                f"{ISSUER}/connect/token",
                f"{ISSUER}/connect/revocation",
            ),
        ),
        (
            {**DOCUMENT, "issuer": ISSUER + "/"},
            ISSUER,
            Endpoints(
                f"{ISSUER}/connect/authorize",
                f"{ISSUER}/connect/token",
                f"{ISSUER}/connect/revocation",
            ),
        ),
        (
            {k: v for k, v in DOCUMENT.items() if k != "revocation_endpoint"},
            ISSUER + "/",
            Endpoints(f"{ISSUER}/connect/authorize", f"{ISSUER}/connect/token", None),
        ),
    ],
)
def test_discovery(document: dict[str, object], issuer: str, expected: Endpoints) -> None:
    assert parse_discovery(document, issuer) == expected


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({**DOCUMENT, "issuer": "https://evil.example"}, "another issuer"),
        ({k: v for k, v in DOCUMENT.items() if k != "issuer"}, "another issuer"),
        ({k: v for k, v in DOCUMENT.items() if k != "token_endpoint"}, "lacks 'token_endpoint'"),
        (
            {k: v for k, v in DOCUMENT.items() if k != "authorization_endpoint"},
            "lacks 'authorization_endpoint'",
        ),
        ({**DOCUMENT, "token_endpoint": ["x"]}, "not URLs"),
    ],
)
def test_discovery_refuses(document: dict[str, object], message: str) -> None:
    with pytest.raises(GrantError, match=message) as caught:
        parse_discovery(document, ISSUER)
    assert caught.value.error == "invalid_discovery"
