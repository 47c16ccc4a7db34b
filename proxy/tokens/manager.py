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

The manager is built in layers, each a module: `holder` (the set in use and the failure
record), `lease` (the refresh protocol under the store's lease), `refresher` (single flight
and the background refresher), and here the public API. What it shows and reports
(`TokenStatus`, `TokenEvents`) is plain data in `status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Final

from proxy.core.errors import ConsentRequired, CredentialsRefused, TokenUnavailable
from proxy.oauth.token_set import TokenSet
from proxy.tokens.grants import Grant
from proxy.tokens.holder import Clock
from proxy.tokens.model import TokenState, token_state
from proxy.tokens.refresher import Refresher
from proxy.tokens.rules import is_newer
from proxy.tokens.status import NoEvents, TokenEvents, TokenStatus
from proxy.tokens.store import StoreError, StoreUnavailable, StoreUnreadable, TokenStore

__all__ = ["NoEvents", "TokenEvents", "TokenManager", "TokenStatus"]

log = logging.getLogger(__name__)


# How long a retired manager waits for a refresh in flight, or for a renewed set to be saved.
RETIRE_PATIENCE_SECONDS: Final = 30.0
RETIRE_POLL_SECONDS: Final = 0.1

class TokenManager(Refresher):
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
        super().__init__(connection, grant, store, refresh_margin=refresh_margin, clock=clock,
                         jitter=jitter, events=events)

    def __repr__(self) -> str:
        return f"TokenManager({self.connection!r}, state={self.state().value})"

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

    def usable_token(self) -> str | None:
        """The access token to send now, without a coroutine (a stale one starts the
        background refresh); None when a request must wait for one (`bearer()`)."""
        tokens = self._tokens
        if tokens is None:
            return None
        state = token_state(tokens, self._clock(), self._margin)
        if state is TokenState.FRESH:
            return tokens.access_token
        if state is TokenState.STALE:
            if self._background_refresh_allowed():
                self._start_refresh()
            return tokens.access_token
        return None

    async def bearer(self) -> str:
        token = self.usable_token()
        if token is not None:
            return token
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

    async def retire(self, refresher: asyncio.Task[None] | None,
                     *, patience: float = RETIRE_PATIENCE_SECONDS) -> None:
        """Stop for good while the proxy goes on (a reload removed or replaced the connection):
        a refresh in flight is let finish and a renewed set not saved yet is let be saved
        (each holds the only valid refresh token), for up to `patience` seconds; then the
        background refresher stops and the manager closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while (self._inflight is not None or self._unsaved) and loop.time() < deadline:
            task = self._inflight
            if task is None:
                await asyncio.sleep(RETIRE_POLL_SECONDS)  # the refresher retries the save
                continue
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        await self.close()

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
