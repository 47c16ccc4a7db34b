"""Nitro's token endpoint as a request shape and an answer reader: pure, no I/O.

    POST {token_url}  application/json  {"clientID", "clientSecret"}
    → {"accessToken", "tokenType": "Bearer", "expiresIn": 86400}

The RFC 6749 §5.1 snake_case answer (`access_token`, `token_type`, `expires_in`) is read too.
There is no refresh token: a new token is asked for before expiry or after a 401.

Failures: 401 and 403 mean the credentials are refused (`invalid_client`, fatal); an RFC 6749
§5.2 error body keeps its own code; 408, 429 and 5xx are transient.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from proxy.oauth.protocol import GrantError, parse_token_error, parse_token_response
from proxy.oauth.token_set import TokenSet

# RFC 6749 §5.2 codes look like this ("invalid_client"); "Unauthorized" is a plain message.
_RFC_ERROR_CODE: Final = re.compile(r"[a-z]+(?:_[a-z]+)*")
# camelCase answer field → its RFC 6749 name
_RFC_NAMES: Final = {
    "accessToken": "access_token",
    "tokenType": "token_type",
    "expiresIn": "expires_in",
    "refreshToken": "refresh_token",
}


def token_body(client_id: str, client_secret: str) -> dict[str, str]:
    return {"clientID": client_id, "clientSecret": client_secret}


def as_rfc6749(body: Any) -> Any:
    """The answer with camelCase fields renamed to RFC 6749's; a camelCase field wins."""
    if not isinstance(body, Mapping):
        return body
    renamed = {_RFC_NAMES.get(name, name): value for name, value in body.items()}
    for camel, snake in _RFC_NAMES.items():
        if camel in body:
            renamed[snake] = body[camel]
    return renamed


def parse_token_answer(status: int, body: Any, *, requested_at: float) -> TokenSet:
    if status != 200:
        raise failure(status, body)
    return parse_token_response(as_rfc6749(body), requested_at=requested_at, previous=None)


def failure(status: int, body: Any) -> GrantError:
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, str) and _RFC_ERROR_CODE.fullmatch(error):
        return parse_token_error(status, body)  # RFC 6749 §5.2
    message = body.get("message") if isinstance(body, Mapping) else None
    said = message if isinstance(message, str) and message else f"Nitro answered HTTP {status}"
    if status in (401, 403):
        return GrantError("invalid_client", said, status=status)
    if status in (408, 429):
        return GrantError("temporarily_unavailable", said, status=status)
    if status >= 500:
        return GrantError("server_error", said, status=status)
    return GrantError("invalid_request", said, status=status)
