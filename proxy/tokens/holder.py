"""The token set one connection has in use, and the record of how its refreshes went.

Every layer of the token manager (`lease`, `refresher`, `manager`) changes the same in-memory
state through these few transitions, so that "a set is in use", "it was adopted", "a refresh
failed" and the errors requests see mean one thing everywhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from proxy.core.errors import ConsentRequired, CredentialsRefused, TokenUnavailable
from proxy.oauth.protocol import GrantError
from proxy.oauth.token_set import TokenSet
from proxy.tokens.grants import Grant
from proxy.tokens.model import TokenState, token_state
from proxy.tokens.status import (
    STORE_UNAVAILABLE,
    STORE_UNREADABLE,
    NoEvents,
    TokenEvents,
    TokenStatus,
    describe,
)
from proxy.tokens.store import StoreError, StoreUnreadable

# One connection's token story is told in one logger, whichever layer of the manager tells it:
# the records keep the name they always had, and a log filter on it sees them all.
LOGGER_NAME: Final = "proxy.tokens.manager"
log = logging.getLogger(LOGGER_NAME)

Clock = Callable[[], float]


class TokenHolder:
    """One connection's token set in memory: what is in use, and why not when nothing is."""

    def __init__(
        self,
        connection: str,
        grant: Grant,
        *,
        refresh_margin: float,
        clock: Clock,
        events: TokenEvents | None = None,
    ) -> None:
        self.connection = connection
        self.grant = grant
        self._margin = refresh_margin
        self._clock = clock
        self._tokens: TokenSet | None = None
        self._needs_consent = False
        # The last failure: the identity service's answer, or one of STORE_*/LEASE_BUSY.
        self._last_error: GrantError | None = None
        self._last_failure_at: float | None = None
        self._last_refresh_at: float | None = None
        self._failures = 0  # retryable failures in a row: the backoff
        self._store_backoff = False  # the last of them was the store's: retry sooner
        self._failed_attempts = 0  # every refresh failure in a row, fatal ones too: the page
        self._failing_since: float | None = None
        # A renewed (or linked) set the store has not taken yet.
        self._unsaved = False
        self._events = events if events is not None else NoEvents()
        self._changed = asyncio.Event()
        self.adopted_count = 0

    @property
    def tokens(self) -> TokenSet | None:
        return self._tokens

    def state(self) -> TokenState:
        return token_state(self._tokens, self._clock(), self._margin)

    def status(self) -> TokenStatus:
        tokens = self._tokens
        return describe(
            self.connection,
            tokens,
            token_state(tokens, self._clock(), self._margin),
            needs_consent=self._needs_consent,
            last_refresh_at=self._last_refresh_at,
            last_error=None if self._last_error is None else self._last_error.error,
            failures=self._failed_attempts,
            failing_since=self._failing_since,
        )

    # -- state ------------------------------------------------------------------------------

    def _current(self) -> TokenSet:
        assert self._tokens is not None
        return self._tokens

    def _adopted(self, tokens: TokenSet, why: str) -> None:
        self._use(tokens)
        self._last_refresh_at = tokens.obtained_at
        self.adopted_count += 1
        log.debug("connection %s uses token set version %d: %s", self.connection,
                  tokens.version, why)

    def _forgotten(self) -> None:
        log.info("connection %s has no stored token set any more (unlinked elsewhere)",
                 self.connection)
        self._forget()

    def _forget(self) -> None:
        self._tokens = None
        self._unsaved = False
        self._needs_consent = False
        self._clear_failures()
        self._changed.set()

    def _use(self, tokens: TokenSet) -> None:
        """`tokens` is in use from now on; a set marked as refused means consent is needed."""
        self._tokens = tokens
        if tokens.refused is not None and self.grant.interactive:
            self._needs_consent = True
            self._last_error = GrantError(tokens.refused,
                                          "refused earlier, by this or another replica")
            self._failures = 0
        else:
            self._needs_consent = False
            self._clear_failures()
        self._changed.set()

    def _succeeded(self) -> None:
        self._clear_failures()
        self._last_refresh_at = self._clock()

    def _clear_failures(self) -> None:
        self._last_error = None
        self._last_failure_at = None
        self._failures = 0
        self._store_backoff = False
        self._failed_attempts = 0
        self._failing_since = None

    def _failed(self, error: GrantError, *, store: bool) -> None:
        now = self._clock()
        self._last_error = error
        self._last_failure_at = now
        self._failures += 1
        self._store_backoff = store
        if self._failing_since is None:
            self._failing_since = now
        self._changed.set()

    def _store_failure(self, exc: StoreError) -> None:
        code = STORE_UNREADABLE if isinstance(exc, StoreUnreadable) else STORE_UNAVAILABLE
        self._failed(GrantError(code, str(exc)), store=True)

    def _consent_error(self) -> ConsentRequired | CredentialsRefused:
        if not self.grant.interactive:
            said = str(self._last_error) if self._last_error else "refused"
            return CredentialsRefused(
                f"the provider refused the credentials of connection {self.connection!r} "
                f"({said}); check its client_id, client_secret and account settings",
                connection=self.connection,
            )
        reason = self._last_error.error if self._last_error else "not linked yet"
        return ConsentRequired(
            f"connection {self.connection!r} needs consent ({reason}): "
            "visit /_proxy/ to link the account again",
            connection=self.connection,
        )

    def _unavailable_error(self) -> TokenUnavailable:
        reason = self._last_error.description if self._last_error else "no token yet"
        return TokenUnavailable(
            f"no usable token for connection {self.connection!r}: {reason}",
            connection=self.connection,
        )
