"""When a connection refreshes, and how every caller shares one refresh.

Single flight: however many requests need a token at once, one refresh runs (`_start_refresh`)
and they all await it, shielded, so a caller that gives up does not cancel it for the others.
The background refresher (`run_refresher`) renews ahead of expiry, with jitter so that replicas
and connections do not all ask at once, retries failures with backoff, adopts the sets other
replicas save, and retries saving a renewed set the store did not take. The refresh itself is
`proxy.tokens.lease`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from proxy.core.errors import ConsentRequired, CredentialsRefused, TokenUnavailable
from proxy.oauth.token_set import TokenSet
from proxy.tokens.grants import Grant
from proxy.tokens.holder import LOGGER_NAME, Clock
from proxy.tokens.lease import LeasedRefresh
from proxy.tokens.status import TokenEvents
from proxy.tokens.store import StoreError, TokenStore

log = logging.getLogger(LOGGER_NAME)

BACKOFF_FIRST_SECONDS: Final = 1.0
BACKOFF_MAX_SECONDS: Final = 60.0
# Store failures (Redis restarting) are retried sooner: the identity service is not involved.
STORE_BACKOFF_FIRST_SECONDS: Final = 0.5
STORE_BACKOFF_MAX_SECONDS: Final = 1.0
# After a failed refresh, requests fail fast for this long instead of hammering the IdP.
FAILURE_COOLDOWN_SECONDS: Final = 1.0
MAX_JITTER_SECONDS: Final = 30.0


class Refresher(LeasedRefresh):
    """The single in-flight refresh of a connection, and the task that renews ahead of time."""

    def __init__(
        self,
        connection: str,
        grant: Grant,
        store: TokenStore,
        *,
        refresh_margin: float,
        clock: Clock,
        jitter: Callable[[float], float],
        events: TokenEvents | None = None,
    ) -> None:
        super().__init__(connection, grant, store, refresh_margin=refresh_margin, clock=clock,
                         events=events)
        self._jitter = jitter
        self._inflight: asyncio.Task[TokenSet] | None = None

    async def run_refresher(self) -> None:
        """Renew ahead of expiry, adopt what others saved, retry saves; cancelled at shutdown."""
        while True:
            self._changed.clear()  # before deciding, so that no wake-up is lost
            delay = self._next_action_delay()
            if delay is None or delay > 0:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for swallows a cancel
                # that arrives as the event is set, and shutdown would hang.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._changed.wait()
                continue
            await self._act()

    # -- the refresher's decisions ----------------------------------------------------------

    def _next_action_delay(self) -> float | None:
        """Seconds until the refresher should act; None: nothing to do until something changes."""
        due = [
            moment
            for moment in (
                self._reload_at,
                self._persist_at if self._unsaved else None,
                self._refresh_due(),
            )
            if moment is not None
        ]
        return min(due) - self._clock() if due else None

    def _refresh_due(self) -> float | None:
        tokens = self._tokens
        if self._unsaved:
            return None
        if self.grant.interactive and (self._needs_consent or tokens is None):
            return None
        if self._failures:
            return self._retry_at()
        if tokens is None:
            return self._clock()
        jitter = self._jitter(min(MAX_JITTER_SECONDS, tokens.lifetime / 20))
        return tokens.refresh_at(self._margin) - jitter

    async def _act(self) -> None:
        now = self._clock()
        if self._reload_at is not None and self._reload_at <= now:
            try:
                await self._reload()
            except StoreError as exc:
                self._events.store_failed(self.connection, operation="load")
                self._store_failure(exc)
                self._reload_at = self._retry_at()
            return
        if self._unsaved and self._persist_at <= now:
            await self._persist_pending()
            return
        with contextlib.suppress(ConsentRequired, CredentialsRefused, TokenUnavailable):
            await self._shared_refresh()

    def _backoff(self) -> float:
        if not self._failures:
            return 0.0
        first, cap = (
            (STORE_BACKOFF_FIRST_SECONDS, STORE_BACKOFF_MAX_SECONDS)
            if self._store_backoff
            else (BACKOFF_FIRST_SECONDS, BACKOFF_MAX_SECONDS)
        )
        return float(min(cap, first * 2 ** (self._failures - 1)))

    def _retry_at(self) -> float:
        backoff = self._backoff()
        return (self._last_failure_at or self._clock()) + backoff + self._jitter(backoff / 2)

    def _background_refresh_allowed(self) -> bool:
        """A request with a still-valid token may start a refresh, unless that cannot help
        (consent is needed) or one failed within the backoff (the refresher retries then)."""
        if self._needs_consent:
            return False
        if self._last_failure_at is None:
            return True
        return self._clock() - self._last_failure_at >= self._backoff()

    # -- single flight ----------------------------------------------------------------------

    async def _refresh_for_request(self) -> TokenSet:
        if self._needs_consent:
            raise self._consent_error()
        if self._tokens is None and self.grant.interactive and self._reload_at is None:
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
            # The set in use when the refresh was asked for, not when its task first runs: a
            # reload may adopt a usable set in between, and then nothing is to be renewed.
            task = asyncio.get_running_loop().create_task(self._refresh(self._tokens))
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

    async def _refresh(self, start: TokenSet | None) -> TokenSet:
        try:
            return await self._coordinated_refresh(start)
        except StoreError as exc:
            self._events.store_failed(self.connection, operation="refresh")
            self._store_failure(exc)
            # Retried every second or so while the store is away: said once, then quietly.
            log.log(logging.WARNING if self._failures == 1 else logging.DEBUG,
                    "the refresh of connection %s waits for the token store: %s",
                    self.connection, exc)
            raise self._unavailable_error() from None
