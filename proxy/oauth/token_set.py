"""The token set: what a token endpoint gave, as the proxy keeps it. Pure data, no I/O.

It lives with the wire formats because every dialect parses its answer into one, and every
layer above (stores, the token manager, the consent flow) speaks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final

# An access token this close to expiry is not handed out: the request must still reach the API.
EXPIRY_SAFETY_SECONDS: Final = 10.0


@dataclass(frozen=True)
class TokenSet:
    """What the token endpoint gave us, with times on the local wall clock (seconds).

    It is the connection's whole stored state, so it also carries the subscription key a person
    entered on the /_proxy/ page (None: use the configured one): whatever protects the tokens
    at rest protects the key too.
    """

    access_token: str = field(repr=False)
    expires_at: float
    obtained_at: float
    refresh_token: str | None = field(default=None, repr=False)
    # When the current refresh token arrived; with rotation it is renewed on every refresh.
    refresh_issued_at: float | None = None
    scopes: tuple[str, ...] = ()
    # Bumped on every save, so a store can refuse to overwrite a newer set.
    version: int = 0
    subscription_key: str | None = field(default=None, repr=False)
    # The identity service refused this set's refresh token (the OAuth error code, such as
    # "invalid_grant"): consent is needed, and no replica presents the token again.
    refused: str | None = None

    @property
    def lifetime(self) -> float:
        return max(0.0, self.expires_at - self.obtained_at)

    def refresh_at(self, margin: float) -> float:
        """When to renew: `margin` before expiry, but never earlier than half-life."""
        return self.expires_at - min(margin, self.lifetime / 2)

    @property
    def unusable_at(self) -> float:
        return self.expires_at - min(EXPIRY_SAFETY_SECONDS, self.lifetime / 10)

    def with_version(self, version: int) -> TokenSet:
        return replace(self, version=version)

    def with_subscription_key(self, key: str | None) -> TokenSet:
        return replace(self, subscription_key=key)

    def with_refusal(self, error: str) -> TokenSet:
        """This set, marked as refused by the identity service, as the next version."""
        return replace(self, refused=error, version=self.version + 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "expires_at": self.expires_at,
            "obtained_at": self.obtained_at,
            "refresh_token": self.refresh_token,
            "refresh_issued_at": self.refresh_issued_at,
            "scopes": list(self.scopes),
            "version": self.version,
            "subscription_key": self.subscription_key,
            **({} if self.refused is None else {"refused": self.refused}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenSet:
        refresh_token = data.get("refresh_token")
        refresh_issued_at = data.get("refresh_issued_at")
        subscription_key = data.get("subscription_key")
        refused = data.get("refused")
        return cls(
            access_token=str(data["access_token"]),
            expires_at=float(data["expires_at"]),
            obtained_at=float(data["obtained_at"]),
            refresh_token=None if refresh_token is None else str(refresh_token),
            refresh_issued_at=None if refresh_issued_at is None else float(refresh_issued_at),
            scopes=tuple(str(s) for s in data.get("scopes", ())),
            version=int(data.get("version", 0)),
            subscription_key=None if subscription_key is None else str(subscription_key),
            refused=None if refused is None else str(refused),
        )
