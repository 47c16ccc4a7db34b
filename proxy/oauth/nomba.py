"""Nomba's token endpoints as request shapes and answer readers: pure, no I/O.

    issue    POST {token_url}/issue    accountId; {"grant_type": "client_credentials",
                                                   "client_id", "client_secret"}
    refresh  POST {token_url}/refresh  accountId, Bearer <current access token>;
                                       {"grant_type": "refresh_token", "refresh_token"}
    revoke   POST {token_url}/revoke   accountId; {"clientId", "access_token"}

Every answer is an envelope, `{"code": "00", "description": "Success", "data": {...}}`, with the
token in `data` (`access_token`, `refresh_token`, `expiresAt`). Any `code` other than "00" is a
failure; its `description` is carried in the error.

Which failures are fatal, decided here once:
- `issue` refused (a 4xx other than 408/429, or a non-"00" code in any answer that is not a
  server error) → `invalid_client`, fatal: the client id, secret or account id are wrong, and
  asking again changes nothing until someone fixes them.
- `refresh` refused → `invalid_grant`. The grant answers that by issuing a new token at once
  (the client credentials are the root of trust; the refresh token is only a shortcut), so it
  reaches the token manager only if the issue fails too.
- 408, 429, 5xx, a 2xx that is no envelope, network errors → transient: retried with backoff
  while the current token serves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

from proxy.oauth.jwt import jwt_lifetime
from proxy.oauth.protocol import GrantError
from proxy.oauth.token_set import TokenSet

SUCCESS: Final = "00"
ACCOUNT_HEADER: Final = "accountId"
ISSUE: Final = "issue"
REFRESH: Final = "refresh"
REVOKE: Final = "revoke"
# What Nomba documents for its access tokens; used only when an answer gives no expiry.
DEFAULT_LIFETIME_SECONDS: Final = 1800.0
# A `Date` header counts whole seconds: the server's clock may be up to this much later.
_DATE_RESOLUTION_SECONDS: Final = 1.0
_TRANSIENT_STATUSES: Final = frozenset({408, 429})


def endpoint(token_url: str, step: str) -> str:
    """`{token_url}/issue`, `/refresh` or `/revoke`."""
    return f"{token_url.rstrip('/')}/{step}"


def headers(account_id: str, access_token: str | None = None) -> dict[str, str]:
    out = {ACCOUNT_HEADER: account_id, "Accept": "application/json"}
    if access_token is not None:
        out["Authorization"] = f"Bearer {access_token}"
    return out


def issue_body(client_id: str, client_secret: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret,
    }


def refresh_body(refresh_token: str) -> dict[str, str]:
    return {"grant_type": "refresh_token", "refresh_token": refresh_token}


def revoke_body(client_id: str, access_token: str) -> dict[str, str]:
    return {"clientId": client_id, "access_token": access_token}


def _envelope(body: Any) -> tuple[str | None, str]:
    """(code, description) of an answer; code None when the body is no envelope."""
    if not isinstance(body, Mapping):
        return None, ""
    code, description = body.get("code"), body.get("description")
    return (
        str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None,
        description if isinstance(description, str) else "",
    )


def failure(status: int, body: Any, *, refused: str) -> GrantError:
    """The error for an answer that is not a success; `refused` names a plain refusal."""
    code, description = _envelope(body)
    said = f"{description} (code {code})" if code is not None else description
    if status >= 500 or status in _TRANSIENT_STATUSES:
        error = "temporarily_unavailable" if status in _TRANSIENT_STATUSES else "server_error"
        return GrantError(error, said or f"Nomba answered HTTP {status}", status=status)
    if code is None and 200 <= status < 300:
        return GrantError("invalid_response", "the answer is not a Nomba envelope", status=status)
    return GrantError(refused, said or f"Nomba answered HTTP {status}", status=status)


def parse_expiry(value: object) -> float | None:
    """`expiresAt` as seconds since the epoch: ISO 8601 (UTC when no zone is given), or a
    number of seconds (milliseconds when it is too large to be seconds)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
        return seconds / 1000 if seconds > 1e11 else seconds
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_http_date(value: str | None) -> float | None:
    """RFC 9110 §5.6.7 `Date` as seconds since the epoch, or None."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def token_lifetime(
    access_token: str, expires_at: object, *, server_date: str | None, requested_at: float
) -> float:
    """Seconds the token lives, counted from the moment it was asked for.

    A JWT says it best (`exp - iat`). Otherwise `expiresAt` is read against the server's own
    `Date`, taken at the end of its second, so that a skewed local clock does not matter; with
    no `Date`, against the local clock. No expiry at all: Nomba's documented 30 minutes.
    """
    from_jwt = jwt_lifetime(access_token)
    if from_jwt is not None:
        return from_jwt
    expiry = parse_expiry(expires_at)
    if expiry is None:
        return DEFAULT_LIFETIME_SECONDS
    server_now = parse_http_date(server_date)
    now = requested_at if server_now is None else server_now + _DATE_RESOLUTION_SECONDS
    lifetime = expiry - now
    if not math.isfinite(lifetime) or lifetime <= 0:
        raise GrantError("invalid_response", "the token answer expires before it was issued")
    return lifetime


def parse_token_answer(
    status: int,
    body: Any,
    *,
    step: str,
    requested_at: float,
    server_date: str | None,
    previous: TokenSet | None,
) -> TokenSet:
    """A token set from an `issue` or `refresh` answer, or the GrantError it amounts to."""
    code, _ = _envelope(body)
    if not 200 <= status < 300 or code != SUCCESS:
        raise failure(status, body, refused="invalid_client" if step == ISSUE else "invalid_grant")
    assert isinstance(body, Mapping)
    data = body.get("data")
    if not isinstance(data, Mapping):
        raise GrantError("invalid_response", "the token answer has no data", status=status)
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise GrantError("invalid_response", "the token answer has no access_token", status=status)
    lifetime = token_lifetime(
        access_token, data.get("expiresAt"), server_date=server_date, requested_at=requested_at
    )
    refresh_token = data.get("refresh_token")
    if isinstance(refresh_token, str) and refresh_token:
        refresh_issued_at: float | None = requested_at
    elif step == REFRESH and previous is not None:  # no new one: the old one still stands
        refresh_token, refresh_issued_at = previous.refresh_token, previous.refresh_issued_at
    else:
        refresh_token, refresh_issued_at = None, None
    return TokenSet(
        access_token=access_token,
        expires_at=requested_at + lifetime,
        obtained_at=requested_at,
        refresh_token=refresh_token,
        refresh_issued_at=refresh_issued_at,
    )


def check_revoke_answer(status: int, body: Any) -> None:
    """Nothing when Nomba confirmed the revocation; the GrantError otherwise."""
    code, _ = _envelope(body)
    if not 200 <= status < 300 or code != SUCCESS:
        raise failure(status, body, refused="revocation_refused")
