"""The machine-credential wire formats (client credentials, Nomba, Nitro), by tables of cases.

Requests are read back the way a server would; answers are fed in as a server sends them.
"""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any

import jwt
import pytest

from proxy.oauth import client_credentials, nitro, nomba
from proxy.oauth.protocol import GrantError
from proxy.oauth.token_set import TokenSet

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
DATE_AT_NOW = "Fri, 15 Jan 2027 08:00:00 GMT"


def read_basic(header: str) -> tuple[str, str]:
    """RFC 6749 §2.3.1 read back: base64, split at the first ':', form-urldecode each part."""
    scheme, _, credentials = header.partition(" ")
    assert scheme == "Basic"
    raw_id, _, raw_secret = base64.b64decode(credentials).decode("ascii").partition(":")
    return urllib.parse.unquote_plus(raw_id), urllib.parse.unquote_plus(raw_secret)


# --- client credentials (RFC 6749 §4.4, RFC 7009) -------------------------------------------------

CC_CASES = [
    pytest.param(
        {"auth_method": "client_secret_basic"},
        {"grant_type": "client_credentials"},
        True,
        id="basic-minimal",
    ),
    pytest.param(
        {"auth_method": "client_secret_post"},
        {"grant_type": "client_credentials", "client_id": "app*$1", "client_secret": "s:e%+c"},
        False,
        id="post-minimal",
    ),
    pytest.param(
        {"auth_method": "client_secret_basic", "scopes": ("read", "write")},
        {"grant_type": "client_credentials", "scope": "read write"},
        True,
        id="scopes-space-separated",
    ),
    pytest.param(
        {
            "auth_method": "client_secret_post",
            "audience": "https://api.example.test",
            "extra": (("resource", "urn:x"), ("tenant", "acme")),
        },
        {
            "grant_type": "client_credentials",
            "audience": "https://api.example.test",
            "resource": "urn:x",
            "tenant": "acme",
            "client_id": "app*$1",
            "client_secret": "s:e%+c",
        },
        False,
        id="audience-and-extra-fields",
    ),
    pytest.param(
        {"auth_method": "client_secret_basic", "extra": (("grant_type", "password"),)},
        {"grant_type": "client_credentials"},
        True,
        id="extra-never-overrides-grant-type",
    ),
]


@pytest.mark.parametrize(("options", "form", "basic"), CC_CASES)
def test_client_credentials_request(options: dict[str, Any], form: dict[str, str],
                                    basic: bool) -> None:
    request = client_credentials.token_request(client_id="app*$1", client_secret="s:e%+c",
                                               **options)
    assert request.form == form
    if basic:
        assert set(request.headers) == {"Authorization"}
        assert read_basic(request.headers["Authorization"]) == ("app*$1", "s:e%+c")
    else:
        assert request.headers == {}


def test_client_credentials_request_keeps_its_secret_out_of_repr() -> None:
    request = client_credentials.token_request(client_id="a", client_secret="SENTINEL",
                                               auth_method="client_secret_post")
    assert "SENTINEL" not in repr(request)


def test_an_unknown_auth_method_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="private_key_jwt"):
        client_credentials.token_request(client_id="a", client_secret="b",
                                         auth_method="private_key_jwt")


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_revocation_request(auth_method: str) -> None:
    request = client_credentials.revocation_request(
        "tok", hint="access_token", client_id="app", client_secret="sec", auth_method=auth_method
    )
    assert request.form["token"] == "tok"
    assert request.form["token_type_hint"] == "access_token"
    if auth_method == "client_secret_basic":
        assert read_basic(request.headers["Authorization"]) == ("app", "sec")
        assert "client_secret" not in request.form
    else:
        assert request.form["client_secret"] == "sec"


# --- Nomba ----------------------------------------------------------------------------------------


def test_nomba_request_shapes() -> None:
    assert nomba.endpoint("https://api.nomba.com/v1/auth/token/", nomba.ISSUE) == (
        "https://api.nomba.com/v1/auth/token/issue"
    )
    assert nomba.issue_body("cid", "sec") == {
        "grant_type": "client_credentials", "client_id": "cid", "client_secret": "sec",
    }  # fmt: skip
    assert nomba.refresh_body("r1") == {"grant_type": "refresh_token", "refresh_token": "r1"}
    assert nomba.revoke_body("cid", "a1") == {"clientId": "cid", "access_token": "a1"}
    assert nomba.headers("acc-1") == {"accountId": "acc-1", "Accept": "application/json"}
    assert nomba.headers("acc-1", "a1")["Authorization"] == "Bearer a1"


def envelope(code: object = "00", **data: object) -> dict[str, Any]:
    return {"code": code, "description": "Success", "data": {"businessId": "b-1", **data}}


def test_nomba_issue_answer_becomes_a_token_set() -> None:
    body = envelope(access_token="a1", refresh_token="r1", expiresAt="2027-01-15T08:30:00Z")
    tokens = nomba.parse_token_answer(200, body, step=nomba.ISSUE, requested_at=NOW,
                                      server_date=None, previous=None)
    assert tokens.access_token == "a1"
    assert tokens.refresh_token == "r1"
    assert tokens.refresh_issued_at == NOW
    assert tokens.expires_at == NOW + 1800
    assert tokens.obtained_at == NOW


@pytest.mark.parametrize(
    ("expires_at", "server_date", "lifetime"),
    [
        pytest.param("2027-01-15T08:30:00Z", None, 1800, id="iso-z-local-clock"),
        pytest.param("2027-01-15T08:30:00+00:00", None, 1800, id="iso-offset"),
        pytest.param("2027-01-15T09:30:00+01:00", None, 1800, id="iso-other-zone"),
        pytest.param("2027-01-15T08:30:00", None, 1800, id="iso-naive-is-utc"),
        pytest.param("2027-01-15T08:30:00.500Z", None, 1800.5, id="iso-fraction"),
        pytest.param(NOW + 600, None, 600, id="epoch-seconds"),
        pytest.param((NOW + 600) * 1000, None, 600, id="epoch-milliseconds"),
        # The server's clock is an hour behind ours: its own Date is what counts, read at the
        # end of its second.
        pytest.param("2027-01-15T07:30:00Z", "Fri, 15 Jan 2027 07:00:00 GMT", 1799,
                     id="server-clock-behind"),
        pytest.param("2027-01-15T08:30:00Z", DATE_AT_NOW, 1799, id="server-date-same"),
        pytest.param("2027-01-15T08:30:00Z", "not a date", 1800, id="bad-date-local-clock"),
        pytest.param(None, None, nomba.DEFAULT_LIFETIME_SECONDS, id="missing-default"),
        pytest.param("soon", None, nomba.DEFAULT_LIFETIME_SECONDS, id="unreadable-default"),
        pytest.param(True, None, nomba.DEFAULT_LIFETIME_SECONDS, id="boolean-default"),
    ],
)
def test_nomba_token_lifetime(expires_at: object, server_date: str | None,
                              lifetime: float) -> None:
    assert nomba.token_lifetime("opaque", expires_at, server_date=server_date,
                                requested_at=NOW) == pytest.approx(lifetime)


def test_nomba_lifetime_prefers_a_jwt() -> None:
    token = jwt.encode({"iat": 0, "exp": 900}, "k" * 32, algorithm="HS256")
    assert nomba.token_lifetime(token, "2027-01-15T08:30:00Z", server_date=None,
                                requested_at=NOW) == 900


def test_nomba_expiry_in_the_past_is_an_invalid_answer() -> None:
    with pytest.raises(GrantError) as caught:
        nomba.token_lifetime("opaque", "2027-01-15T07:59:00Z", server_date=None,
                             requested_at=NOW)
    assert caught.value.error == "invalid_response"
    assert not caught.value.fatal


PREVIOUS = TokenSet(access_token="a0", expires_at=NOW + 60, obtained_at=NOW - 1740,
                    refresh_token="r0", refresh_issued_at=NOW - 1740, version=4)


@pytest.mark.parametrize(
    ("step", "data", "refresh", "issued_at"),
    [
        pytest.param(nomba.REFRESH, {"refresh_token": "r1"}, "r1", NOW, id="refresh-rotates"),
        pytest.param(nomba.REFRESH, {}, "r0", NOW - 1740, id="refresh-keeps-old"),
        pytest.param(nomba.ISSUE, {}, None, None, id="issue-never-keeps-old"),
    ],
)
def test_nomba_refresh_token_bookkeeping(step: str, data: dict[str, str], refresh: str | None,
                                         issued_at: float | None) -> None:
    body = envelope(access_token="a1", expiresAt=NOW + 1800, **data)
    tokens = nomba.parse_token_answer(200, body, step=step, requested_at=NOW, server_date=None,
                                      previous=PREVIOUS)
    assert (tokens.refresh_token, tokens.refresh_issued_at) == (refresh, issued_at)


NOMBA_FAILURES = [
    # (step, status, body, error, fatal, description contains)
    (nomba.ISSUE, 401, {"code": "401", "description": "Invalid client credentials"},
     "invalid_client", True, "Invalid client credentials (code 401)"),
    (nomba.ISSUE, 200, {"code": "99", "description": "Account is inactive"},
     "invalid_client", True, "Account is inactive (code 99)"),
    (nomba.ISSUE, 400, {"code": "400", "description": "accountId is required"},
     "invalid_client", True, "accountId is required"),
    (nomba.ISSUE, 403, None, "invalid_client", True, "HTTP 403"),
    (nomba.ISSUE, 404, "<html>not here</html>", "invalid_client", True, "HTTP 404"),
    (nomba.REFRESH, 400, {"code": "400", "description": "Refresh token already used"},
     "invalid_grant", True, "Refresh token already used"),
    (nomba.REFRESH, 401, {"code": 401, "description": "Unauthorized"},
     "invalid_grant", True, "(code 401)"),
    (nomba.ISSUE, 500, {"code": "500", "description": "Internal error"},
     "server_error", False, "Internal error"),
    (nomba.ISSUE, 503, None, "server_error", False, "HTTP 503"),
    (nomba.ISSUE, 429, {"code": "429", "description": "Too many requests"},
     "temporarily_unavailable", False, "Too many requests"),
    (nomba.REFRESH, 408, None, "temporarily_unavailable", False, "HTTP 408"),
    (nomba.ISSUE, 200, {"access_token": "a1"}, "invalid_response", False, "not a Nomba envelope"),
    (nomba.ISSUE, 200, None, "invalid_response", False, "not a Nomba envelope"),
    (nomba.ISSUE, 200, {"code": "00", "description": "Success"},
     "invalid_response", False, "no data"),
    (nomba.ISSUE, 200, {"code": "00", "data": {"refresh_token": "r"}},
     "invalid_response", False, "no access_token"),
    (nomba.ISSUE, 200, {"code": "00", "data": {"access_token": ""}},
     "invalid_response", False, "no access_token"),
]


@pytest.mark.parametrize(
    ("step", "status", "body", "error", "fatal", "said"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}-{case[3]}-{i}")
     for i, case in enumerate(NOMBA_FAILURES)],
)
def test_nomba_failures(
    step: str, status: int, body: Any, error: str, fatal: bool, said: str
) -> None:
    with pytest.raises(GrantError) as caught:
        nomba.parse_token_answer(status, body, step=step, requested_at=NOW, server_date=None,
                                 previous=None)
    assert caught.value.error == error
    assert caught.value.fatal is fatal
    assert said in caught.value.description
    assert caught.value.status == status


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        pytest.param(200, {"code": "00", "description": "Token revoked successfully"}, None,
                     id="confirmed"),
        pytest.param(200, {"code": "04", "description": "Token not found"},
                     "revocation_refused", id="refused-code"),
        pytest.param(400, {"code": "400", "description": "clientId mismatch"},
                     "revocation_refused", id="refused-status"),
        pytest.param(502, None, "server_error", id="unavailable"),
    ],
)
def test_nomba_revoke_answer(status: int, body: Any, error: str | None) -> None:
    if error is None:
        nomba.check_revoke_answer(status, body)
        return
    with pytest.raises(GrantError) as caught:
        nomba.check_revoke_answer(status, body)
    assert caught.value.error == error


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (DATE_AT_NOW, NOW),
        ("Friday, 15-Jan-27 08:00:00 GMT", NOW),  # RFC 850, obsolete but allowed
        (None, None),
        ("", None),
        ("yesterday", None),
    ],
)
def test_parse_http_date(value: str | None, expected: float | None) -> None:
    assert nomba.parse_http_date(value) == expected


# --- Nitro ----------------------------------------------------------------------------------------


def test_nitro_request_shape() -> None:
    assert nitro.token_body("cid", "sec") == {"clientID": "cid", "clientSecret": "sec"}


@pytest.mark.parametrize(
    ("body", "lifetime"),
    [
        pytest.param({"accessToken": "a1", "tokenType": "Bearer", "expiresIn": 86400}, 86400,
                     id="camel"),
        pytest.param({"access_token": "a1", "token_type": "bearer", "expires_in": "600"}, 600,
                     id="snake-rfc6749"),
        pytest.param({"accessToken": "a1", "access_token": "other", "expiresIn": 60}, 60,
                     id="camel-wins"),
        pytest.param({"accessToken": "a1"}, 3600, id="no-lifetime-an-hour"),
    ],
)
def test_nitro_answers(body: dict[str, Any], lifetime: float) -> None:
    tokens = nitro.parse_token_answer(200, body, requested_at=NOW)
    assert tokens.access_token == "a1"
    assert tokens.expires_at == NOW + lifetime
    assert tokens.refresh_token is None


@pytest.mark.parametrize(
    ("status", "body", "error", "fatal"),
    [
        pytest.param(401, {"error": "Unauthorized", "message": "Invalid client credentials"},
                     "invalid_client", True, id="401-message"),
        pytest.param(403, None, "invalid_client", True, id="403-bare"),
        pytest.param(400, {"error": "invalid_client", "error_description": "unknown client"},
                     "invalid_client", True, id="rfc6749-error"),
        pytest.param(400, {"message": "clientID is required"}, "invalid_request", False,
                     id="400-message"),
        pytest.param(429, {"message": "slow down"}, "temporarily_unavailable", False, id="429"),
        pytest.param(502, "<html>", "server_error", False, id="502"),
        pytest.param(200, {"tokenType": "Bearer"}, "invalid_response", False, id="no-token"),
        pytest.param(200, {"accessToken": "a", "tokenType": "MAC"}, "invalid_response", False,
                     id="not-bearer"),
    ],
)
def test_nitro_failures(status: int, body: Any, error: str, fatal: bool) -> None:
    with pytest.raises(GrantError) as caught:
        nitro.parse_token_answer(status, body, requested_at=NOW)
    assert caught.value.error == error
    assert caught.value.fatal is fatal
