"""Token sets in Redis, shared by every replica of the proxy (sidecars in many pods).

Keys, under a configurable prefix (default "nmbrs-proxy:"):

    PREFIX tokens:CONNECTION    a hash: `version` (plain, for the scripts) and `data` (the
                                entry from `proxy.tokens.seal`: Fernet-sealed when a key is set)
    PREFIX lease:CONNECTION     the refresh lease: SET NX PX with a random owner id
    PREFIX changed:CONNECTION   pub/sub channel: the version of each set saved

Every write that matters is a Lua script, so it is one atomic step in Redis:

- `swap` writes only while the stored version is the one the writer started from. A holder
  that stalled past its lease, or a refresh that raced a person's consent, therefore never
  replaces a newer set. The write is deliberately *not* also refused when the writer's lease
  has lapsed: when nothing newer is stored, the set it carries holds the only refresh token
  the identity service still accepts, and dropping it would lose the grant.
- `extend` and `release` act only while the lease still names the caller as owner, so a
  holder whose lease lapsed can neither free nor prolong the next holder's lease.
- `acquire` also succeeds when the lease already names the caller (a retried command whose
  first answer was lost), so retries are harmless.

The client retries a command once after a broken connection (Redis restarted) and never after
a timeout; each command is bounded by `timeout_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from proxy.core.secret import Secret
from proxy.oauth.token_set import TokenSet
from proxy.tokens.seal import Sealer, SealError
from proxy.tokens.store import (
    ChangeCallback,
    StoreUnavailable,
    StoreUnreadable,
    Subscribers,
    new_owner,
)

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "nmbrs-proxy:"
# How long the watcher waits between reconnection attempts, at most.
WATCH_BACKOFF_MAX_SECONDS: Final = 2.0

_SWAP: Final = """
local current = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] ~= '*' then
  if ARGV[1] == '' then
    if current then return 0 end
  elseif current ~= ARGV[1] then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'data', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
"""

_DELETE: Final = """
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], 'deleted')
return 1
"""

_ACQUIRE: Final = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_EXTEND: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _unavailable(exc: BaseException, what: str) -> StoreUnavailable:
    detail = str(exc) or type(exc).__name__
    return StoreUnavailable(f"redis: cannot {what}: {detail}")


class RedisLease:
    def __init__(self, store: RedisStore, key: str, owner: str) -> None:
        self._store = store
        self._key = key
        self._owner = owner

    def __repr__(self) -> str:
        return f"RedisLease(owner={self._owner!r})"

    @property
    def owner(self) -> str:
        return self._owner

    async def extend(self) -> bool:
        extended = await self._store.run(
            "extend the refresh lease", _EXTEND, [self._key], [self._owner, self._store.lease_ms]
        )
        return bool(extended)

    async def release(self) -> None:
        await self._store.run("release the refresh lease", _RELEASE, [self._key], [self._owner])


class RedisStore:
    def __init__(
        self,
        client: Redis,
        *,
        sealer: Sealer | None = None,
        prefix: str = DEFAULT_PREFIX,
        lease_seconds: float = 10.0,
        where: str = "redis",
    ) -> None:
        self._client = client
        self._sealer = sealer if sealer is not None else Sealer()
        self._prefix = prefix
        self._lease_seconds = lease_seconds
        self._where = where
        self._subscribers = Subscribers()
        self._announced: dict[str, int | None] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._scripts = {source: client.register_script(source) for source in
                         (_SWAP, _DELETE, _ACQUIRE, _EXTEND, _RELEASE)}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        password: Secret | None = None,
        sealer: Sealer | None = None,
        prefix: str = DEFAULT_PREFIX,
        lease_seconds: float = 10.0,
        timeout_seconds: float = 2.0,
    ) -> RedisStore:
        """A store on the Redis at `url` (redis:// or rediss://); no connection is made yet."""
        client = Redis.from_url(
            url,
            password=None if password is None else password.reveal(),
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            health_check_interval=15,
            decode_responses=False,
        )
        return cls(client, sealer=sealer, prefix=prefix, lease_seconds=lease_seconds, where=url)

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, prefix={self._prefix!r})"

    @property
    def lease_seconds(self) -> float:
        return self._lease_seconds

    @property
    def lease_ms(self) -> int:
        return max(1, round(self._lease_seconds * 1000))

    def tokens_key(self, connection: str) -> str:
        return f"{self._prefix}tokens:{connection}"

    def lease_key(self, connection: str) -> str:
        return f"{self._prefix}lease:{connection}"

    def channel(self, connection: str) -> str:
        return f"{self._prefix}changed:{connection}"

    async def run(self, what: str, source: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._scripts[source](keys=keys, args=args)
        except RedisError as exc:
            raise _unavailable(exc, what) from None

    async def _command(self, what: str, *args: Any) -> Any:
        execute: Callable[..., Awaitable[Any]] = self._client.execute_command  # untyped upstream
        try:
            return await execute(*args)
        except RedisError as exc:
            raise _unavailable(exc, what) from None

    # -- data ------------------------------------------------------------------------------

    async def load(self, connection: str) -> TokenSet | None:
        version, data = await self._command(
            "read the token set", "HMGET", self.tokens_key(connection), "version", "data"
        )
        if data is None:
            return None
        try:
            tokens = self._sealer.open(json.loads(data))
        except (SealError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, SealError) else "is not a token set"
            raise StoreUnreadable(
                f"the token set of connection {connection!r} in redis {reason}"
            ) from None
        if version is None or int(version) != tokens.version:
            raise StoreUnreadable(
                f"the token set of connection {connection!r} in redis has a version field "
                "that does not match its data"
            )
        return tokens

    async def save(self, connection: str, tokens: TokenSet) -> None:
        await self._swap(connection, tokens, "*")

    async def swap(self, connection: str, tokens: TokenSet, *, expected: int | None) -> bool:
        return await self._swap(connection, tokens, "" if expected is None else str(expected))

    async def _swap(self, connection: str, tokens: TokenSet, expected: str) -> bool:
        data = json.dumps(self._sealer.seal(tokens), separators=(",", ":"))
        written = await self.run(
            "save the token set",
            _SWAP,
            [self.tokens_key(connection)],
            [expected, str(tokens.version), data, self.channel(connection)],
        )
        return bool(written)

    async def delete(self, connection: str) -> None:
        await self.run(
            "delete the token set", _DELETE, [self.tokens_key(connection)],
            [self.channel(connection)],
        )

    # -- the refresh lease ------------------------------------------------------------------

    async def acquire(self, connection: str) -> RedisLease | None:
        key, owner = self.lease_key(connection), new_owner()
        taken = await self.run("take the refresh lease", _ACQUIRE, [key], [owner, self.lease_ms])
        return RedisLease(self, key, owner) if taken else None

    # -- changes ----------------------------------------------------------------------------

    async def wait_for_change(self, connection: str, known: int | None, timeout: float) -> None:
        announced = self._announced.get(connection)
        if announced is not None and (known is None or announced > known):
            return
        event = self._events.setdefault(connection, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # not wait_for: it may swallow a cancel
                await event.wait()

    def subscribe(self, connection: str, callback: ChangeCallback) -> None:
        self._subscribers.add(connection, callback)

    def _announce(self, connection: str, version: int | None) -> None:
        self._announced[connection] = version
        event = self._events.pop(connection, None)
        if event is not None:
            event.set()
        self._subscribers.notify(connection, version)

    async def watch(self) -> None:
        """Listen on the change channels; after a reconnection, tell everyone to reload."""
        pattern = self.channel("*")
        start = len(pattern) - 1
        failures = 0
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(pattern)
                if failures:
                    log.info("listening to redis again; reloading the token sets")
                    for connection in {*self._subscribers.connections(), *self._events}:
                        self._announce(connection, None)  # a change may have been missed
                failures = 0
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=1.0
                    )
                    if message is not None and message.get("type") == "pmessage":
                        self._dispatch(message, start)
            except (RedisError, OSError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("lost the redis change notifications (%s); reconnecting",
                                _unavailable(exc, "listen"))
            finally:
                close: Callable[[], Awaitable[None]] = pubsub.aclose  # untyped upstream
                with contextlib.suppress(Exception):
                    await close()
            await asyncio.sleep(min(WATCH_BACKOFF_MAX_SECONDS, 0.25 * 2 ** min(failures, 5)))

    def _dispatch(self, message: dict[str, Any], start: int) -> None:
        channel, data = message.get("channel"), message.get("data")
        if not isinstance(channel, bytes) or not isinstance(data, bytes):
            return
        connection = channel[start:].decode("utf-8", "replace")
        self._announce(connection, int(data) if data.isascii() and data.isdigit() else None)

    async def check(self) -> None:
        await self._command("reach the server", "PING")

    async def close(self) -> None:
        close_client: Callable[[], Awaitable[None]] = self._client.aclose  # untyped upstream
        with contextlib.suppress(RedisError, OSError):
            await close_client()
