"""One connection's token, kept fresh without making requests wait.

`bearer()` is the request path: a FRESH token is returned with no I/O; a STALE one is returned
while one background refresh starts; with no usable token, every caller awaits the same single
in-flight refresh. `run_refresher()` renews ahead of expiry so that, in steady state, no request
ever sees a STALE or INVALID token.

A renewed set is saved before it is used. A failed refresh never discards the stored set:
`invalid_grant` / `invalid_client` mark the connection as needing consent and keep the refresh
token for inspection; other failures are retried with backoff while the current token serves.

Machine credentials (a grant that is not `interactive`) need no person: with no token, one is
fetched at start and by the first request. When the provider refuses them, requests fail fast
as for consent, but the refresher keeps asking with backoff (up to once a minute): nothing can
be burnt by asking again, and a fix at the provider heals the connection without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from proxy.errors import ConsentRequired, CredentialsRefused, TokenUnavailable
from proxy.oauth.protocol import GrantError
from proxy.tokens.grants import Grant
from proxy.tokens.model import TokenSet, TokenState, token_state
from proxy.tokens.store import StoreError, TokenStore

log = logging.getLogger(__name__)

Clock = Callable[[], float]
BACKOFF_FIRST_SECONDS: Final = 1.0
BACKOFF_MAX_SECONDS: Final = 60.0
# After a failed refresh, requests fail fast for this long instead of hammering the IdP.
FAILURE_COOLDOWN_SECONDS: Final = 1.0
MAX_JITTER_SECONDS: Final = 30.0


class TokenEvents(Protocol):
    """What a manager reports as it happens. Metrics listen; the token code knows no metrics."""

    def refreshed(self, connection: str) -> None: ...

    def refresh_failed(self, connection: str, *, error: str, fatal: bool) -> None: ...

    def store_failed(self, connection: str, *, operation: str) -> None: ...


class NoEvents:
    """Nobody listens."""

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


class TokenManager:
    def __init__(
        self,
        connection: str,
        grant: Grant,
        store: TokenStore,
        *,
        refresh_margin: float,
        clock: Clock = time.time,
        jitter: Callable[[float], float] = lambda high: random.uniform(0, high),  # noqa: S311
        events: TokenEvents | None = None,
    ) -> None:
        self.connection = connection
        self.grant = grant
        self._store = store
        self._margin = refresh_margin
        self._clock = clock
        self._jitter = jitter
        self._tokens: TokenSet | None = None
        self._inflight: asyncio.Task[TokenSet] | None = None
        self._needs_consent = False
        self._last_error: GrantError | None = None
        self._last_failure_at: float | None = None
        self._last_refresh_at: float | None = None
        self._unsaved = False
        self._save_failures = 0
        self._last_save_failure_at: float | None = None
        self._failures = 0  # retryable failures in a row: the backoff
        self._failed_attempts = 0  # every failure in a row, fatal ones too: what the page shows
        self._failing_since: float | None = None
        self._events = events if events is not None else NoEvents()
        self._changed = asyncio.Event()
        self.refresh_count = 0

    def __repr__(self) -> str:
        return f"TokenManager({self.connection!r}, state={self.state().value})"

    @property
    def tokens(self) -> TokenSet | None:
        return self._tokens

    def state(self) -> TokenState:
        return token_state(self._tokens, self._clock(), self._margin)

    @property
    def subscription_key(self) -> str | None:
        """The key a person entered on the page, if any (it wins over the configured one)."""
        tokens = self._tokens
        return None if tokens is None else tokens.subscription_key

    async def load(self) -> None:
        """Pick up the stored set at start: a restart needs no new consent."""
        try:
            self._tokens = await self._store.load(self.connection)
        except StoreError:
            self._events.store_failed(self.connection, operation="load")
            raise
        self._changed.set()

    async def bearer(self) -> str:
        tokens = self._tokens
        state = token_state(tokens, self._clock(), self._margin)
        if tokens is not None and state is TokenState.FRESH:
            return tokens.access_token
        if tokens is not None and state is TokenState.STALE:
            if self._background_refresh_allowed():
                self._start_refresh()
            return tokens.access_token
        return (await self._refresh_for_request()).access_token

    async def after_rejection(self, rejected: str) -> str:
        """The upstream said 401 to `rejected`: share one forced refresh, unless done already."""
        tokens = self._tokens
        if tokens is not None and tokens.access_token != rejected:
            return tokens.access_token
        return (await self._refresh_for_request()).access_token

    def refresh_after_rejection_soon(self, rejected: str) -> None:
        """Like `after_rejection`, for a caller that cannot wait (its body is already sent)."""
        tokens = self._tokens
        if (
            tokens is not None
            and tokens.access_token == rejected
            and self._background_refresh_allowed()
        ):
            self._start_refresh()

    async def adopt(self, tokens: TokenSet, *, subscription_key: str | None = None) -> None:
        """A person just consented: save and use the new set.

        It keeps the subscription key stored so far, unless the person entered a new one.
        """
        current = self._tokens
        if subscription_key is None and current is not None:
            subscription_key = current.subscription_key
        tokens = tokens.with_version((current.version if current else 0) + 1)
        tokens = tokens.with_subscription_key(subscription_key)
        saved = await self._save(tokens)
        self._tokens = tokens
        self._needs_consent = False
        self._succeeded()
        self._changed.set()
        if not saved:
            raise StoreError("the new token could not be saved; it serves from memory meanwhile")

    async def set_subscription_key(self, key: str) -> None:
        """Keep `key` with the linked token set; it is sent instead of the configured one.

        The set is saved first: when saving fails (StoreError) nothing changes.
        """
        current = self._tokens
        if current is None:
            raise ValueError(f"connection {self.connection!r} is not linked")
        updated = current.with_subscription_key(key).with_version(current.version + 1)
        try:
            await self._store.save(self.connection, updated)
        except StoreError:
            self._events.store_failed(self.connection, operation="save")
            raise
        self._tokens = updated

    async def revoke(self) -> bool:
        """Revoke the stored set at the provider, then forget it; False when none is stored.

        The set is removed from the store only after the provider confirmed: a GrantError
        (refused, unreachable, not supported) leaves everything as it was.
        """
        inflight = self._inflight
        if inflight is not None:  # let a running refresh land first, so its set is revoked
            with contextlib.suppress(ConsentRequired, CredentialsRefused, TokenUnavailable):
                await asyncio.shield(inflight)
        tokens = await self._store.load(self.connection) or self._tokens
        if tokens is None:
            return False
        await self.grant.revoke(tokens)
        try:
            await self._store.delete(self.connection)
        except StoreError:
            self._events.store_failed(self.connection, operation="delete")
            raise
        self._tokens = None
        self._unsaved = False
        self._needs_consent = False
        self._succeeded()
        self._last_refresh_at = None
        self._changed.set()
        log.info("revoked the token of connection %s at the provider", self.connection)
        return True

    def status(self) -> TokenStatus:
        tokens = self._tokens
        now = self._clock()
        state = token_state(tokens, now, self._margin)
        linked = tokens is not None
        return TokenStatus(
            connection=self.connection,
            linked=linked,
            state=state,
            needs_consent=self._needs_consent,
            ready=linked and not self._needs_consent and state is not TokenState.INVALID,
            expires_at=None if tokens is None else tokens.expires_at,
            refresh_issued_at=None if tokens is None else tokens.refresh_issued_at,
            last_refresh_at=self._last_refresh_at,
            scopes=() if tokens is None else tokens.scopes,
            last_error=None if self._last_error is None else self._last_error.error,
            obtained_at=None if tokens is None else tokens.obtained_at,
            failures=self._failed_attempts,
            failing_since=self._failing_since,
            stored_subscription_key=tokens is not None and tokens.subscription_key is not None,
        )

    async def run_refresher(self) -> None:
        """Renew ahead of expiry, forever; cancelled at shutdown."""
        while True:
            self._changed.clear()  # before deciding, so that no wake-up is lost
            delay = self._next_refresh_delay()
            if delay is None or delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), delay)
                continue
            with contextlib.suppress(ConsentRequired, CredentialsRefused, TokenUnavailable):
                if self._unsaved and self._tokens is not None:
                    await self._save(self._tokens)
                else:
                    await self._shared_refresh()

    def _backoff(self) -> float:
        if not self._failures:
            return 0.0
        return float(min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (self._failures - 1)))

    def _background_refresh_allowed(self) -> bool:
        """A request with a still-valid token may start a refresh, unless that cannot help
        (consent is needed) or one failed within the backoff (the refresher retries then)."""
        if self._needs_consent:
            return False
        if self._last_failure_at is None:
            return True
        return self._clock() - self._last_failure_at >= self._backoff()

    def _next_refresh_delay(self) -> float | None:
        """Seconds until the refresher should act; None: nothing to do until something changes."""
        tokens = self._tokens
        if self.grant.interactive and (self._needs_consent or tokens is None):
            return None
        now = self._clock()
        if self._failures:
            backoff = self._backoff()
            since = now - (self._last_failure_at or now)
            return backoff + self._jitter(backoff / 2) - since
        if tokens is None:
            return 0.0
        if self._unsaved:  # retry the save, backing off like a refresh
            return self._save_retry_delay(now)
        jitter = self._jitter(min(MAX_JITTER_SECONDS, tokens.lifetime / 20))
        return tokens.refresh_at(self._margin) - jitter - now

    def _save_retry_delay(self, now: float) -> float:
        failures = max(self._save_failures, 1)
        backoff = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (failures - 1))
        since = now - (self._last_save_failure_at or now)
        return float(backoff + self._jitter(backoff / 2) - since)

    async def _refresh_for_request(self) -> TokenSet:
        if self._needs_consent or (self._tokens is None and self.grant.interactive):
            raise self._consent_error()
        if (
            self._last_failure_at is not None
            and self._inflight is None
            and self._clock() - self._last_failure_at < FAILURE_COOLDOWN_SECONDS
        ):
            raise self._unavailable_error()
        return await self._shared_refresh()

    def _start_refresh(self) -> asyncio.Task[TokenSet]:
        if self._inflight is None:
            task = asyncio.get_running_loop().create_task(self._refresh())
            task.add_done_callback(self._refresh_done)
            self._inflight = task
        return self._inflight

    def _refresh_done(self, task: asyncio.Task[TokenSet]) -> None:
        self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: failures are recorded and logged in _refresh

    async def _shared_refresh(self) -> TokenSet:
        # shield: a caller that gives up (client gone) must not cancel everyone's refresh
        return await asyncio.shield(self._start_refresh())

    async def _refresh(self) -> TokenSet:
        current = self._tokens
        try:
            renewed = await self.grant.renew(current)
        except GrantError as exc:
            self._last_error = exc
            self._last_failure_at = self._clock()
            self._failed_attempts += 1
            if self._failing_since is None:
                self._failing_since = self._last_failure_at
            self._events.refresh_failed(self.connection, error=exc.error, fatal=exc.fatal)
            if exc.fatal and not self.grant.interactive:
                self._needs_consent = True
                self._failures += 1  # asked again with backoff: nothing to burn
                log.error(  # noqa: TRY400 - the traceback would say nothing more
                    "the provider refused the credentials of connection %s: %s",
                    self.connection,
                    exc,
                )
                raise self._consent_error() from None
            if exc.fatal:
                self._needs_consent = True
                self._failures = 0
                log.error(  # noqa: TRY400 - the traceback would say nothing more
                    "refresh refused for connection %s (%s): consent is needed; "
                    "the stored refresh token is kept",
                    self.connection,
                    exc.error,
                )
                raise self._consent_error() from None
            self._failures += 1
            log.warning("refresh failed for connection %s: %s", self.connection, exc)
            raise self._unavailable_error() from None
        # Built on the newest set, not on `current`: a key saved during the refresh stays.
        latest = self._tokens
        renewed = renewed.with_version((latest.version if latest else 0) + 1)
        renewed = renewed.with_subscription_key(latest.subscription_key if latest else None)
        # Saved before use. If the save fails, the rotated set is still the only one that
        # works: it serves from memory and the refresher keeps retrying the save.
        await self._save(renewed)
        self._tokens = renewed
        self._needs_consent = False
        self._succeeded()
        self.refresh_count += 1
        self._changed.set()
        self._events.refreshed(self.connection)
        log.info("refreshed the token of connection %s", self.connection)
        return renewed

    def _succeeded(self) -> None:
        self._last_error = None
        self._last_failure_at = None
        self._failures = 0
        self._failed_attempts = 0
        self._failing_since = None
        self._last_refresh_at = self._clock()

    async def _save(self, tokens: TokenSet) -> bool:
        try:
            await self._store.save(self.connection, tokens)
        except StoreError:
            self._unsaved = True
            self._save_failures += 1
            self._last_save_failure_at = self._clock()
            self._events.store_failed(self.connection, operation="save")
            log.exception("could not save the token of connection %s", self.connection)
            return False
        self._unsaved = False
        self._save_failures = 0
        return True

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
