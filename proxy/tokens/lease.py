"""The refresh protocol every store shares, and the lease it runs under.

Whatever the store (file, Redis), a refresh is the same steps (see `proxy.tokens.rules`):

    take the lease (extended while held) → reload → a newer set is stored? adopt it, done
    → else renew at the identity service → save with compare-and-set → release

so that any number of replicas never present a refresh token twice. A replica that does not get
the lease waits for the other's set and adopts it. A renewed set that could not be saved keeps
its lease until saving succeeds. This module runs one attempt; `proxy.tokens.refresher` decides
when, and makes every caller share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from proxy.core.errors import ConsentRequired, CredentialsRefused
from proxy.oauth.protocol import GrantError
from proxy.oauth.token_set import TokenSet
from proxy.tokens.grants import Grant
from proxy.tokens.holder import LOGGER_NAME, Clock, TokenHolder
from proxy.tokens.model import TokenState
from proxy.tokens.rules import Step, after_conflict, after_reload, changed_since, is_newer
from proxy.tokens.status import LEASE_BUSY, TokenEvents
from proxy.tokens.store import Lease, StoreError, TokenStore

log = logging.getLogger(LOGGER_NAME)

# A renewed set that could not be saved holds the only valid refresh token: retried often.
UNSAVED_RETRY_SECONDS: Final = 0.5
UNSAVED_RETRY_MAX_SECONDS: Final = 2.0
# While another replica refreshes: how often to look for its set when no notification came.
WAIT_POLL_SECONDS: Final = 0.5
# How long to wait for another replica's refresh before giving up (503 to waiting requests):
# long enough for a slow identity service, and for a dead holder's lease to lapse.
WAIT_SECONDS: Final = 30.0
WAIT_LEASES: Final = 3


class HeldLease:
    """A lease, extended every third of its lifetime until it is released."""

    def __init__(self, lease: Lease, lifetime: float | None, connection: str) -> None:
        self.lease = lease
        self._connection = connection
        self._keeper: asyncio.Task[None] | None = None
        if lifetime is not None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep(lifetime / 3))

    async def _keep(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                kept = await self.lease.extend()
            except StoreError as exc:
                log.warning("could not extend the refresh lease of connection %s: %s",
                            self._connection, exc)
                continue
            if not kept:
                log.warning("the refresh lease of connection %s lapsed while still needed; "
                            "a set another replica saves meanwhile wins", self._connection)
                return

    def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()

    async def release(self) -> None:
        self.stop()
        try:
            await self.lease.release()
        except StoreError as exc:
            log.warning("could not release the refresh lease of connection %s (%s); "
                        "it lapses by itself", self._connection, exc)


class LeasedRefresh(TokenHolder):
    """One refresh attempt under the store's lease, and the saving of what it renewed."""

    def __init__(
        self,
        connection: str,
        grant: Grant,
        store: TokenStore,
        *,
        refresh_margin: float,
        clock: Clock,
        events: TokenEvents | None = None,
    ) -> None:
        super().__init__(connection, grant, refresh_margin=refresh_margin, clock=clock,
                         events=events)
        self._store = store
        # The set a renewed (or linked) set not yet saved replaces; when to try saving again.
        self._unsaved_base: TokenSet | None = None
        self._persist_failures = 0
        self._persist_at = 0.0
        self._pending_lease: HeldLease | None = None
        self._reload_at: float | None = None
        self.refresh_count = 0

    def _wait_limit(self) -> float:
        lifetime = self._store.lease_seconds
        return max(WAIT_SECONDS, WAIT_LEASES * (lifetime or 0.0))

    async def _coordinated_refresh(self, start: TokenSet | None) -> TokenSet:
        """Renew `start` (the set in use when the refresh was asked for), unless another set
        is in use by now or another replica renews it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_limit()
        while True:
            if self._moved_on(start):  # adopted meanwhile, e.g. by the refresher
                return self._current()
            held = self._pending_lease
            if held is None:
                lease = await self._store.acquire(self.connection)
                if lease is not None:
                    held = HeldLease(lease, self._store.lease_seconds, self.connection)
            if held is not None:
                return await self._refresh_holding(held, start)
            # Another replica is refreshing: wait for its set instead of calling anyone.
            known = None if self._tokens is None else self._tokens.version
            await self._reload()
            if self._moved_on(start):
                return self._current()
            if self.grant.interactive and self._tokens is None:
                # Unlinked elsewhere (revoked): no replica can renew it, so none will save a
                # set worth waiting for.
                raise self._consent_error()
            remaining = deadline - loop.time()
            if remaining <= 0:
                self._failed(GrantError(LEASE_BUSY, "another replica holds the refresh lease "
                                        "and saved no new token set in time"), store=True)
                raise self._unavailable_error()
            await self._store.wait_for_change(
                self.connection, known, min(remaining, WAIT_POLL_SECONDS)
            )

    def _moved_on(self, start: TokenSet | None) -> bool:
        """Whether a usable set with other tokens than `start` is in use: the refresh is done.

        Raises ConsentRequired when the set in use says that consent is needed.
        """
        tokens = self._tokens
        if tokens is None or (start is not None and (
            tokens.version <= start.version or tokens.access_token == start.access_token
        )):
            return False
        if self._needs_consent:
            raise self._consent_error()
        return self.state() is not TokenState.INVALID

    async def _refresh_holding(self, held: HeldLease, start: TokenSet | None) -> TokenSet:
        try:
            return await self._refresh_under_lease(start)
        finally:
            if self._unsaved:
                self._pending_lease = held  # kept until the renewed set is saved
            else:
                self._pending_lease = None
                await held.release()

    async def _refresh_under_lease(self, start: TokenSet | None) -> TokenSet:
        stored = await self._store.load(self.connection)
        step = after_reload(self._tokens, stored)
        if step is Step.ADOPT:
            assert stored is not None
            self._adopted(stored, "another replica renewed it")
        elif step is Step.FORGET:
            self._forgotten()
        elif step is Step.RESTORE:
            ours = self._current()
            log.warning("the store holds an older token set of connection %s; writing ours "
                        "back", self.connection)
            assert stored is not None
            await self._write(ours, base=stored)
        if self._moved_on(start):
            return self._current()
        if self.grant.interactive and (self._needs_consent or self._tokens is None):
            raise self._consent_error()  # machine credentials are simply asked again
        return await self._renew(self._tokens)

    async def _renew(self, base: TokenSet | None) -> TokenSet:
        try:
            with self._events.refreshing(self.connection):
                renewed = await self.grant.renew(base)
        except GrantError as exc:
            return await self._refused(exc, base)
        renewed = renewed.with_version((0 if base is None else base.version) + 1)
        renewed = renewed.with_subscription_key(None if base is None else base.subscription_key)
        current = await self._write(renewed, base=base)
        if current.access_token == renewed.access_token:
            self.refresh_count += 1
            self._succeeded()
            self._events.refreshed(self.connection)
            log.info("refreshed the token of connection %s (token set version %d)",
                     self.connection, current.version)
        return current

    async def _write(self, tokens: TokenSet, *, base: TokenSet | None) -> TokenSet:
        """Save `tokens`, made from `base`, with compare-and-set; returns the set in use after.

        That is `tokens` (merged with a key saved meanwhile), unless the store moved on to
        other tokens (they win) or was emptied (unlinked meanwhile). When the store fails,
        `tokens` serves from memory and the refresher retries the save.
        """
        expected = None if base is None else base.version
        for _ in range(3):
            try:
                if await self._store.swap(self.connection, tokens, expected=expected):
                    return self._saved(tokens)
                stored = await self._store.load(self.connection)
            except StoreError as exc:
                self._events.store_failed(self.connection, operation="save")
                log.log(logging.ERROR if not self._persist_failures else logging.DEBUG,
                        "could not save the token set of connection %s (%s); it serves from "
                        "memory and saving is retried", self.connection, exc)
                break
            step = after_conflict(tokens, base, stored)
            if step is Step.KEEP:
                return self._saved(tokens)
            if step is Step.FORGET:
                log.warning("connection %s was unlinked while its token set was being saved",
                            self.connection)
                self._forgotten()
                raise self._consent_error() if self.grant.interactive else (
                    self._unavailable_error())
            if step is Step.ADOPT:
                assert stored is not None
                log.warning("a newer token set of connection %s was saved while this one was "
                            "on its way; using that one", self.connection)
                self._unsaved = False
                self._adopted(stored, "it was saved meanwhile")
                return stored
            assert stored is not None
            if step is Step.MERGE:  # keep what else changed (a key entered meanwhile)
                tokens = tokens.with_subscription_key(stored.subscription_key)
                tokens = tokens.with_version(stored.version + 1)
            base, expected = stored, stored.version
        self._use(tokens)
        self._pending(base=base)
        return tokens

    def _saved(self, tokens: TokenSet) -> TokenSet:
        self._unsaved = False
        self._unsaved_base = None
        self._persist_failures = 0
        self._use(tokens)
        return tokens

    def _pending(self, *, base: TokenSet | None) -> None:
        self._unsaved = True
        self._unsaved_base = base
        self._persist_failures += 1
        delay = UNSAVED_RETRY_SECONDS * 2 ** (self._persist_failures - 1)
        self._persist_at = self._clock() + min(UNSAVED_RETRY_MAX_SECONDS, delay)
        self._changed.set()

    async def _persist_pending(self) -> None:
        with contextlib.suppress(ConsentRequired, CredentialsRefused):
            await self._write(self._current(), base=self._unsaved_base)
        if self._unsaved:
            return
        log.info("saved the token set of connection %s after all", self.connection)
        await self._release_pending()

    async def _release_pending(self) -> None:
        held, self._pending_lease = self._pending_lease, None
        if held is not None:
            await held.release()

    async def _refused(self, exc: GrantError, base: TokenSet | None) -> TokenSet:
        self._failed(exc, store=False)
        self._failed_attempts += 1
        self._events.refresh_failed(self.connection, error=exc.error, fatal=exc.fatal)
        if not exc.fatal:
            log.warning("refresh failed for connection %s: %s", self.connection, exc)
            raise self._unavailable_error() from None
        if not self.grant.interactive:  # asked again with backoff: nothing to burn
            self._needs_consent = True
            log.error(
                "the provider refused the credentials of connection %s: %s",
                self.connection,
                exc,
            )
            raise self._consent_error() from None
        try:
            after = await self._store.load(self.connection)
        except StoreError:
            after = None  # cannot tell: treat the set as unchanged
        if changed_since(base, after):
            assert after is not None
            self._adopted(after, "the refresh token was refused, but a new set was saved")
            if self._needs_consent:
                raise self._consent_error() from None
            if self.state() is not TokenState.INVALID:
                return after
            raise self._unavailable_error() from None
        if base is not None and exc.error == "invalid_grant":
            # The refresh token is dead for everyone: no replica presents it again. (After
            # invalid_client it may still be good once the client's secret is fixed.)
            marked = base.with_refusal(exc.error)
            with contextlib.suppress(StoreError):
                await self._store.swap(self.connection, marked, expected=base.version)
            self._tokens = marked
        self._needs_consent = True
        self._failures = 0
        log.error(
            "refresh refused for connection %s (%s): consent is needed; "
            "the stored refresh token is kept",
            self.connection,
            exc.error,
        )
        raise self._consent_error() from None

    async def _reload(self) -> TokenSet | None:
        """Adopt the stored set when it is newer than ours (returned then); forget ours when
        the store has none (unlinked elsewhere)."""
        stored = await self._store.load(self.connection)
        self._reload_at = None
        if stored is None and self._tokens is not None and not self._unsaved:
            self._forgotten()
            return None
        if not is_newer(stored, self._tokens):
            return None
        assert stored is not None
        self._adopted(stored, "another replica saved it")
        return stored
