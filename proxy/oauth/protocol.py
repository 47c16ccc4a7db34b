"""OAuth 2.0 protocol pieces as pure functions: client auth, PKCE, authorize URLs, token answers.

Nothing here does I/O; the grant clients in `proxy.tokens.grants` feed it what the network gave.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote_plus, urlencode

from proxy.oauth.jwt import jwt_lifetime
from proxy.oauth.token_set import TokenSet

# RFC 6749 §5.2 errors after which retrying cannot help: a person must consent again.
FATAL_GRANT_ERRORS: Final = frozenset({"invalid_grant", "invalid_client"})
DEFAULT_LIFETIME_SECONDS: Final = 3600.0


class GrantError(Exception):
    """The token endpoint refused or could not be reached; `fatal` means consent is needed."""

    def __init__(self, error: str, description: str = "", *, status: int | None = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status

    @property
    def fatal(self) -> bool:
        return self.error in FATAL_GRANT_ERRORS


def client_basic_auth(client_id: str, client_secret: str) -> str:
    """`Authorization` value for client_secret_basic.

    RFC 6749 §2.3.1: client id and secret are each form-urlencoded (Appendix B) before being
    joined with ":" and base64-encoded, so ids with "*" or "$" and secrets with ":" survive.
    """
    userpass = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(userpass.encode()).decode("ascii")


def new_state() -> str:
    return secrets.token_urlsafe(32)


def new_pkce_verifier() -> str:
    """RFC 7636 §4.1: 43-128 characters from the unreserved set; 32 random bytes give 43."""
    return secrets.token_urlsafe(48)


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2, S256: BASE64URL(SHA256(ASCII(verifier))) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_url(
    endpoint: str,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: tuple[str, ...],
    state: str,
    code_challenge: str,
) -> str:
    query = urlencode(
        {
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": " ".join(scopes),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
    )
    separator = "&" if "?" in endpoint else "?"
    return f"{endpoint}{separator}{query}"


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str
    revocation: str | None


def parse_discovery(document: Mapping[str, Any], issuer: str) -> Endpoints:
    """OpenID Connect Discovery 1.0 §4.3: the document's issuer must be the one we asked."""
    if str(document.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise GrantError("invalid_discovery", "the discovery document names another issuer")
    try:
        authorization = document["authorization_endpoint"]
        token = document["token_endpoint"]
    except KeyError as missing:
        raise GrantError("invalid_discovery", f"the discovery document lacks {missing}") from None
    revocation = document.get("revocation_endpoint")
    if not isinstance(authorization, str) or not isinstance(token, str):
        raise GrantError("invalid_discovery", "endpoints in the discovery document are not URLs")
    return Endpoints(
        authorization=authorization,
        token=token,
        revocation=revocation if isinstance(revocation, str) else None,
    )


def parse_token_response(
    body: Any,
    *,
    requested_at: float,
    previous: TokenSet | None,
    requested_scopes: tuple[str, ...] = (),
) -> TokenSet:
    """Turn a successful token answer (RFC 6749 §5.1) into a TokenSet.

    Lifetime: the JWT's `exp - iat`, else `expires_in` (a number or a numeric string), else an
    hour; counted from when the request was sent. No refresh token in the answer keeps the
    previous one (RFC 6749 §6); no `scope` keeps what was granted or asked before.
    """
    if not isinstance(body, Mapping):
        raise GrantError("invalid_response", "the token answer is not a JSON object")
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise GrantError("invalid_response", "the token answer has no access_token")
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise GrantError("invalid_response", "the token answer is not a bearer token")

    lifetime = jwt_lifetime(access_token) or _expires_in(body.get("expires_in"))
    refresh_token = body.get("refresh_token")
    if isinstance(refresh_token, str) and refresh_token:
        refresh_issued_at: float | None = requested_at
    elif previous is not None:
        refresh_token, refresh_issued_at = previous.refresh_token, previous.refresh_issued_at
    else:
        refresh_token, refresh_issued_at = None, None

    scope = body.get("scope")
    if isinstance(scope, str):
        scopes = tuple(scope.split())
    elif isinstance(scope, list):
        scopes = tuple(str(s) for s in scope)
    elif previous is not None and previous.scopes:
        scopes = previous.scopes
    else:
        scopes = requested_scopes

    return TokenSet(
        access_token=access_token,
        expires_at=requested_at + (lifetime or DEFAULT_LIFETIME_SECONDS),
        obtained_at=requested_at,
        refresh_token=refresh_token,
        refresh_issued_at=refresh_issued_at,
        scopes=scopes,
        version=previous.version if previous is not None else 0,
    )


def parse_token_error(status: int, body: Any, *, endpoint: str = "token endpoint") -> GrantError:
    """RFC 6749 §5.2 (and RFC 7009 §2.2.1) error answer; else the HTTP status is the error."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), str):
        description = body.get("error_description")
        return GrantError(
            body["error"],
            description if isinstance(description, str) else "",
            status=status,
        )
    return GrantError(
        "server_error" if status >= 500 else "invalid_response",
        f"the {endpoint} answered HTTP {status}",
        status=status,
    )


def _expires_in(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return seconds if seconds > 0 else None
