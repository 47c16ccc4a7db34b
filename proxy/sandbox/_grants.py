"""In-memory state of the fake identity service: codes, grants, refresh and access tokens.

Pure bookkeeping with the time passed in; no HTTP here. Codes and refresh tokens are stored
by their SHA-256 only, like a careful real server would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from ._ledger import remember

_PKCE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def fingerprint(token: str) -> str:
    """SHA-256 hex of a token: the key under which stats and the store know it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def expires_in(lifetime: float) -> int | float:
    """`expires_in` as an integer when the lifetime is whole (always, outside fast tests)."""
    return int(lifetime) if float(lifetime).is_integer() else lifetime


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _check_pkce(challenge: str | None, verifier: str | None) -> None:
    if challenge is None:
        if verifier is not None:
            raise OAuthError("invalid_grant", "code_verifier sent but no code_challenge was.")
        return
    if verifier is None:
        raise OAuthError("invalid_grant", "code_verifier is required.")
    if not _PKCE_VERIFIER.fullmatch(verifier):
        raise OAuthError("invalid_grant", "code_verifier is malformed.")
    if not hmac.compare_digest(s256(verifier), challenge):
        raise OAuthError("invalid_grant", "code_verifier does not match code_challenge.")


class OAuthError(Exception):
    """An RFC 6749 error answer: `error` code, human description, HTTP status."""

    def __init__(self, error: str, description: str, *, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    code_challenge: str | None
    sub: str
    auth_time: float
    expires_at: float
    used: bool = False
    grant_id: str | None = None


@dataclass
class Grant:
    grant_id: str
    client_id: str
    scopes: tuple[str, ...]
    sub: str
    auth_time: float
    refresh_revoked: bool = False  # refresh tokens of this grant answer invalid_grant
    access_revoked: bool = False  # access tokens of this grant fail at the API
    refresh_tokens: list[str] = field(default_factory=list)  # fingerprints, oldest first


@dataclass
class RefreshRecord:
    grant_id: str
    client_id: str
    expires_at: float
    used: bool = False


@dataclass
class AccessRecord:
    grant_id: str
    client_id: str
    revoked: bool = False


class GrantStore:
    def __init__(self) -> None:
        self._codes: dict[str, AuthCode] = {}
        self._grants: dict[str, Grant] = {}
        self._refresh: dict[str, RefreshRecord] = {}
        self._access: dict[str, AccessRecord] = {}
        self.issuers: set[str] = set()  # every issuer a token was minted under

    # -- authorization codes -------------------------------------------------------------

    def new_code(self, code: AuthCode, now: float) -> str:
        for key, old in list(self._codes.items()):  # forget codes long dead
            if old.expires_at < now - 3600:
                del self._codes[key]
        value = secrets.token_urlsafe(32)
        self._codes[fingerprint(value)] = code
        remember(value)
        return value

    def redeem_code(
        self,
        value: str,
        *,
        client_id: str,
        redirect_uri: str | None,
        code_verifier: str | None,
        now: float,
    ) -> AuthCode:
        """Burn the code (any attempt does, as IdentityServer removes it on lookup) and check it."""
        code = self._codes.get(fingerprint(value))
        if code is None:
            raise OAuthError("invalid_grant", "Unknown authorization code.")
        if code.used:
            if code.grant_id is not None:
                self.revoke_grant(code.grant_id)
            raise OAuthError("invalid_grant", "Authorization code was already used.")
        code.used = True
        if code.client_id != client_id:
            raise OAuthError("invalid_grant", "Authorization code was issued to another client.")
        if now >= code.expires_at:
            raise OAuthError("invalid_grant", "Authorization code has expired.")
        if redirect_uri is None:
            raise OAuthError("invalid_request", "redirect_uri is required.")
        if redirect_uri != code.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorize request.")
        _check_pkce(code.code_challenge, code_verifier)
        return code

    # -- grants --------------------------------------------------------------------------

    def new_grant(
        self, *, client_id: str, scopes: tuple[str, ...], sub: str, auth_time: float
    ) -> Grant:
        grant = Grant(
            grant_id=secrets.token_hex(16),
            client_id=client_id,
            scopes=scopes,
            sub=sub,
            auth_time=auth_time,
        )
        self._grants[grant.grant_id] = grant
        return grant

    def grant(self, grant_id: str) -> Grant:
        return self._grants[grant_id]

    def revoke_grant(self, grant_id: str) -> None:
        grant = self._grants[grant_id]
        grant.refresh_revoked = True
        grant.access_revoked = True

    def revoke_all_refresh(self) -> None:
        for grant in self._grants.values():
            grant.refresh_revoked = True

    # -- refresh tokens ------------------------------------------------------------------

    def new_refresh_token(self, grant: Grant, *, expires_at: float) -> str:
        value = secrets.token_urlsafe(32)
        remember(value)
        key = fingerprint(value)
        self._refresh[key] = RefreshRecord(grant.grant_id, grant.client_id, expires_at)
        grant.refresh_tokens.append(key)
        return value

    def check_refresh_token(self, value: str, *, client_id: str, now: float) -> Grant:
        """The grant of a redeemable refresh token; presenting a spent one kills the grant.

        Does not spend the token: call spend_refresh_token() (with no await in between).
        """
        record = self._refresh.get(fingerprint(value))
        if record is None:
            raise OAuthError("invalid_grant", "Unknown refresh token.")
        if record.client_id != client_id:
            raise OAuthError("invalid_grant", "Refresh token was issued to another client.")
        grant = self._grants[record.grant_id]
        if record.used:
            self.revoke_grant(grant.grant_id)
            raise OAuthError("invalid_grant", "Refresh token was already used; grant revoked.")
        if grant.refresh_revoked:
            raise OAuthError("invalid_grant", "The grant was revoked.")
        if now >= record.expires_at:
            raise OAuthError("invalid_grant", "Refresh token has expired.")
        return grant

    def spend_refresh_token(self, value: str) -> None:
        self._refresh[fingerprint(value)].used = True

    def grant_of_refresh_token(self, value: str) -> Grant | None:
        record = self._refresh.get(fingerprint(value))
        return None if record is None else self._grants[record.grant_id]

    # -- access tokens -------------------------------------------------------------------

    def record_access_token(self, jti: str, grant: Grant) -> None:
        self._access[jti] = AccessRecord(grant.grant_id, grant.client_id)

    def grant_of_access_token(self, jti: str) -> Grant | None:
        record = self._access.get(jti)
        return None if record is None else self._grants[record.grant_id]

    def access_token_problem(self, jti: str) -> str | None:
        """None if the access token is still honoured, else why not."""
        record = self._access.get(jti)
        if record is None:
            return "The token is unknown."
        if record.revoked:
            return "The token has been revoked."
        if self._grants[record.grant_id].access_revoked:
            return "The grant of this token has been revoked."
        return None

    def revoke_access_token(self, jti: str) -> None:
        record = self._access.get(jti)
        if record is not None:
            record.revoked = True

    def revoke_all_access(self) -> None:
        for record in self._access.values():
            record.revoked = True
