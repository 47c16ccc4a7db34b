"""One connection's token, kept fresh without making requests wait, shared by any number of
replicas without ever presenting a refresh token twice.

`bearer()` is the request path: a FRESH token is returned with no I/O; a STALE one is returned
while one background refresh starts; with no usable token, every caller awaits the same single
in-flight refresh. `run_refresher()` renews ahead of expiry so that, in steady state, no request
ever sees a STALE or INVALID token, and adopts the sets other replicas save.

A refresh follows one protocol, whatever the store (see `proxy.tokens.rules`):

    take the lease (extended while held) → reload → a newer set is stored? adopt it, done
    → else renew at the identity service → save with compare-and-set → release

A replica that does not get the lease waits for the new set (a notification, or polling) and
adopts it; it never calls the identity service itself. A renewed set is saved before it is
used; when the save fails, it serves from memory, the lease stays held (so no other replica
presents the refresh token just spent) and saving is retried every half second.

A failed refresh never discards the stored set. `invalid_grant` / `invalid_client` first
reload the store: a set that changed meanwhile is adopted. Otherwise the connection needs
consent; after `invalid_grant` the stored set is also marked as refused, so no replica
presents it again, and its refresh token is kept for inspection. Other failures are retried
with backoff while the current token serves, as are store failures: nothing ever falls back
to a private copy.

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

from proxy.core.errors import ConsentRequired, CredentialsRefused, TokenUnavailable
from proxy.oauth.protocol import GrantError
from proxy.oauth.token_set import TokenSet
from proxy.tokens.grants import Grant
from proxy.tokens.model import TokenState, token_state
from proxy.tokens.rules import Step, after_conflict, after_reload, changed_since, is_newer
from proxy.tokens.store import Lease, StoreError, StoreUnavailable, StoreUnreadable, TokenStore

log = logging.getLogger(__name__)

Clock = Callable[[], float]
BACKOFF_FIRST_SECONDS: Final = 1.0
BACKOFF_MAX_SECONDS: Final = 60.0
# Store failures (Redis restarting) are retried sooner: the identity service is not involved.
STORE_BACKOFF_FIRST_SECONDS: Final = 0.5
STORE_BACKOFF_MAX_SECONDS: Final = 1.0
# A renewed set that could not be saved holds the only valid refresh token: retried often.
UNSAVED_RETRY_SECONDS: Final = 0.5
UNSAVED_RETRY_MAX_SECONDS: Final = 2.0
# After a failed refresh, requests fail fast for this long instead of hammering the IdP.
FAILURE_COOLDOWN_SECONDS: Final = 1.0
MAX_JITTER_SECONDS: Final = 30.0
# While another replica refreshes: how often to look for its set when no notification came.
WAIT_POLL_SECONDS: Final = 0.5
# How long to wait for another replica's refresh before giving up (503 to waiting requests):
# long enough for a slow identity service, and for a dead holder's lease to lapse.
WAIT_SECONDS: Final = 30.0
WAIT_LEASES: Final = 3
# Failures that are not the identity service's, reported in the same shape (status, readyz).
STORE_UNAVAILABLE: Final = "store_unavailable"
STORE_UNREADABLE: Final = "store_unreadable"
LEASE_BUSY: Final = "lease_busy"


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


class _HeldLease:
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
        # The last failure: the identity service's answer, or one of STORE_*/LEASE_BUSY.
        self._last_error: GrantError | None = None
        self._last_failure_at: float | None = None
        self._last_refresh_at: float | None = None
        self._failures = 0  # retryable failures in a row: the backoff
        self._store_backoff = False  # the last of them was the store's: retry sooner
        self._failed_attempts = 0  # every refresh failure in a row, fatal ones too: the page
        self._failing_since: float | None = None
        # A renewed (or linked) set the store has not taken yet, and the set it replaces.
        self._unsaved = False
        self._unsaved_base: TokenSet | None = None
        self._persist_failures = 0
        self._persist_at = 0.0
        self._pending_lease: _HeldLease | None = None
        self._reload_at: float | None = None
        self._events = events if events is not None else NoEvents()
        self._changed = asyncio.Event()
        self.refresh_count = 0
        self.adopted_count = 0

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
        """Pick up the stored set at start: a restart needs no new consent.

        A store that cannot be reached yet is retried in the background; one that holds what
        cannot be read (a wrong encryption key) raises StoreUnreadable.
        """
        try:
            stored = await self._store.load(self.connection)
        except StoreError as exc:
            self._events.store_failed(self.connection, operation="load")
            if not isinstance(exc, StoreUnavailable):
                raise
            log.warning("cannot load the token set of connection %s yet (%s); retrying",
                        self.connection, exc)
            self._store_failure(exc)
            self._reload_at = self._retry_at()
            return
        if stored is not None:
            self._use(stored)
            self._last_refresh_at = stored.obtained_at
            log.debug("connection %s uses token set version %d: loaded at start",
                      self.connection, stored.version)
        self._changed.set()

    def notice_change(self, version: int | None) -> None:
        """The store says a set was saved (by any replica): reload it soon, off the request path."""
        tokens = self._tokens
        if version is not None and tokens is not None and version <= tokens.version:
            return  # ours, or older
        self._reload_at = self._clock()
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
        """A person just consented: this set replaces whatever is stored, in every replica.

        It keeps the subscription key stored so far, unless the person entered a new one.
        """
        try:
            linked = await self._link(tokens, subscription_key)
        except StoreError:
            current = self._tokens
            key = subscription_key
            if key is None and current is not None:
                key = current.subscription_key
            linked = tokens.with_subscription_key(key).with_version(
                (current.version if current else 0) + 1
            )
            self._events.store_failed(self.connection, operation="save")
            log.exception("could not save the new token set of connection %s", self.connection)
            self._use(linked)
            self._succeeded()
            self._pending(base=current)
            raise StoreError(
                "the new token could not be saved; it serves from memory meanwhile"
            ) from None
        self._unsaved = False
        self._use(linked)
        self._succeeded()
        await self._release_pending()

    async def _link(self, tokens: TokenSet, subscription_key: str | None) -> TokenSet:
        floor = self._tokens.version if self._tokens is not None else 0
        for _ in range(5):
            try:
                stored = await self._store.load(self.connection)
            except StoreUnreadable as exc:
                # Whatever is stored cannot be used by anyone; a new consent replaces it.
                log.warning("replacing an unreadable token set of connection %s: %s",
                            self.connection, exc)
                linked = tokens.with_subscription_key(subscription_key)
                linked = linked.with_version(floor + 1)
                await self._store.save(self.connection, linked)
                return linked
            key = subscription_key
            if key is None and stored is not None:
                key = stored.subscription_key
            base = None if stored is None else stored.version
            linked = tokens.with_subscription_key(key).with_version(max(floor, base or 0) + 1)
            if await self._store.swap(self.connection, linked, expected=base):
                return linked
        raise StoreUnavailable("the stored token set kept changing while the new one was saved")

    async def set_subscription_key(self, key: str) -> None:
        """Keep `key` with the linked token set; it is sent instead of the configured one.

        The set is saved first: when saving fails (StoreError) nothing changes.
        """
        if self._tokens is None:
            raise ValueError(f"connection {self.connection!r} is not linked")
        try:
            for _ in range(5):
                stored = await self._store.load(self.connection)
                if stored is None:
                    raise ValueError(f"connection {self.connection!r} is not linked")
                updated = stored.with_subscription_key(key).with_version(stored.version + 1)
                if await self._store.swap(self.connection, updated, expected=stored.version):
                    break
            else:
                raise StoreUnavailable("the stored token set kept changing meanwhile")
        except StoreError:
            self._events.store_failed(self.connection, operation="save")
            raise
        if is_newer(updated, self._tokens):
            self._tokens = updated
            self._changed.set()

    async def revoke(self) -> bool:
        """Revoke the stored set at the provider, then forget it; False when none is stored.

        The set is removed from the store only after the provider confirmed: a GrantError
        (refused, unreachable, not supported) leaves everything as it was. Other replicas hear
        of the removal and forget their copy.
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
        self._forget()
        self._last_refresh_at = None
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

    async def close(self) -> None:
        """At shutdown: stop the in-flight refresh and give back a lease no longer needed."""
        task = self._inflight
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConsentRequired,
                                     CredentialsRefused, TokenUnavailable):
                await task
        held, self._pending_lease = self._pending_lease, None
        if held is None:
            return
        if self._unsaved:
            held.stop()  # it lapses; the set it protects was never saved
            log.error("connection %s stops with a renewed token set that was never saved",
                      self.connection)
        else:
            await held.release()

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

    # -- the refresh protocol ---------------------------------------------------------------

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
        try:
            return await self._coordinated_refresh()
        except StoreError as exc:
            self._events.store_failed(self.connection, operation="refresh")
            self._store_failure(exc)
            # Retried every second or so while the store is away: said once, then quietly.
            log.log(logging.WARNING if self._failures == 1 else logging.DEBUG,
                    "the refresh of connection %s waits for the token store: %s",
                    self.connection, exc)
            raise self._unavailable_error() from None

    def _wait_limit(self) -> float:
        lifetime = self._store.lease_seconds
        return max(WAIT_SECONDS, WAIT_LEASES * (lifetime or 0.0))

    async def _coordinated_refresh(self) -> TokenSet:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_limit()
        start = self._tokens
        while True:
            if self._moved_on(start):  # adopted meanwhile, e.g. by the refresher
                return self._current()
            held = self._pending_lease
            if held is None:
                lease = await self._store.acquire(self.connection)
                if lease is not None:
                    held = _HeldLease(lease, self._store.lease_seconds, self.connection)
            if held is not None:
                return await self._refresh_holding(held, start)
            # Another replica is refreshing: wait for its set instead of calling anyone.
            known = None if self._tokens is None else self._tokens.version
            await self._reload()
            if self._moved_on(start):
                return self._current()
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

    async def _refresh_holding(self, held: _HeldLease, start: TokenSet | None) -> TokenSet:
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
