"""What a token manager shows and what it reports as it happens: plain data, no I/O.

It is apart from the manager so that its readers (health judgement, the status page, metrics)
depend on a few dataclasses and a protocol, not on the refresh machinery.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final, Protocol

from proxy.oauth.token_set import TokenSet
from proxy.tokens.model import TokenState

# Failures that are not the identity service's, reported in the same shape (status, readyz).
STORE_UNAVAILABLE: Final = "store_unavailable"
STORE_UNREADABLE: Final = "store_unreadable"
LEASE_BUSY: Final = "lease_busy"


class TokenEvents(Protocol):
    """What a manager reports as it happens. Metrics listen; the token code knows no metrics."""

    def refreshing(self, connection: str) -> AbstractContextManager[None]:
        """Entered around one renewal at the identity service (a span, when traces are
        exported); it sees the GrantError a failed one raises."""
        ...

    def refreshed(self, connection: str) -> None: ...

    def refresh_failed(self, connection: str, *, error: str, fatal: bool) -> None: ...

    def store_failed(self, connection: str, *, operation: str) -> None: ...


class NoEvents:
    """Nobody listens."""

    def refreshing(self, connection: str) -> AbstractContextManager[None]:  # noqa: ARG002
        return contextlib.nullcontext()

    def refreshed(self, connection: str) -> None:
        pass

    def refresh_failed(self, connection: str, *, error: str, fatal: bool) -> None:
        pass

    def store_failed(self, connection: str, *, operation: str) -> None:
        pass


@dataclass(frozen=True)
class TokenStatus:
    """What the status page, readiness and metrics show about a connection; no secrets."""

    connection: str
    linked: bool
    state: TokenState
    needs_consent: bool
    ready: bool
    expires_at: float | None
    refresh_issued_at: float | None
    last_refresh_at: float | None
    scopes: tuple[str, ...]
    last_error: str | None
    # When the current access token was obtained (by a refresh or a consent), if linked.
    obtained_at: float | None = None
    # Refresh attempts that failed in a row since the last success, and when the first failed.
    failures: int = 0
    failing_since: float | None = None
    # A person entered the subscription key on the page (it is stored with the tokens).
    stored_subscription_key: bool = False


def describe(
    connection: str,
    tokens: TokenSet | None,
    state: TokenState,
    *,
    needs_consent: bool,
    last_refresh_at: float | None,
    last_error: str | None,
    failures: int,
    failing_since: float | None,
) -> TokenStatus:
    """The status of a connection that uses `tokens` (None: not linked), in `state`."""
    linked = tokens is not None
    return TokenStatus(
        connection=connection,
        linked=linked,
        state=state,
        needs_consent=needs_consent,
        ready=linked and not needs_consent and state is not TokenState.INVALID,
        expires_at=None if tokens is None else tokens.expires_at,
        refresh_issued_at=None if tokens is None else tokens.refresh_issued_at,
        last_refresh_at=last_refresh_at,
        scopes=() if tokens is None else tokens.scopes,
        last_error=last_error,
        obtained_at=None if tokens is None else tokens.obtained_at,
        failures=failures,
        failing_since=failing_since,
        stored_subscription_key=tokens is not None and tokens.subscription_key is not None,
    )
