"""A configured connection at run time: its settings, grant, token manager and fixed headers,
and what keeps its traffic within the upstream's quota (shaper, key ring, response cache)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import aiohttp

from proxy.cache import ResponseCache
from proxy.config import ConnectionSettings
from proxy.credentials import KeyRing
from proxy.shaping import Shaper
from proxy.tokens.grants import AuthorizationCodeGrant, Discovery
from proxy.tokens.manager import TokenManager
from proxy.tokens.store import TokenStore

SUBSCRIPTION_KEY_HEADER: Final = "X-Subscription-Key"

# Headers the upstream expects that a legacy client may not send; a client's own value wins.
_PROVIDER_DEFAULT_HEADERS: dict[str, dict[str, str]] = {
    "nmbrs": {"Accept": "application/json"},
}


@dataclass
class UpstreamCounters:
    upstream_429: int = 0  # 429 answers the upstream gave
    retries: int = 0  # attempts sent again after a 429/5xx or a failed connect


@dataclass
class Connection:
    settings: ConnectionSettings
    grant: AuthorizationCodeGrant
    manager: TokenManager
    timeout: aiohttp.ClientTimeout
    shaper: Shaper
    default_headers: dict[str, str] = field(default_factory=dict)
    # Fixed credentials sent with every request besides the bearer token and subscription key.
    static_credentials: dict[str, str] = field(default_factory=dict, repr=False)
    keys: KeyRing | None = None
    cache: ResponseCache | None = None
    counters: UpstreamCounters = field(default_factory=UpstreamCounters)

    @property
    def name(self) -> str:
        return self.settings.name

    def credentials(self, access_token: str, key: int | None = None) -> dict[str, str]:
        """The bearer token, and the subscription key number `key` (default: the current one)."""
        credentials = {"Authorization": f"Bearer {access_token}", **self.static_credentials}
        if self.keys is not None:
            index = self.keys.current if key is None else key
            credentials[SUBSCRIPTION_KEY_HEADER] = self.keys.value(index)
        return credentials

    def quota_stats(self) -> dict[str, int]:
        """Counters of shaping, retries, key rotation and caching (no secrets)."""
        stats = {**dataclasses.asdict(self.counters), **dataclasses.asdict(self.shaper.counters)}
        stats["waiting"] = self.shaper.waiting
        stats["key_rotations"] = 0 if self.keys is None else self.keys.rotations
        if self.cache is not None:
            cached = dataclasses.asdict(self.cache.counters)
            stats.update({f"cache_{name}": value for name, value in cached.items()})
            stats["cache_entries"] = len(self.cache)
        return stats


def build_connection(
    settings: ConnectionSettings,
    *,
    session: aiohttp.ClientSession,
    store: TokenStore,
    clock: Callable[[], float],
) -> Connection:
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=settings.connect_timeout_seconds,
        sock_read=settings.read_timeout_seconds,
    )
    grant = AuthorizationCodeGrant(
        session,
        Discovery(session, settings.issuer, timeout=timeout, clock=clock),
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        scopes=settings.scopes,
        timeout=timeout,
        clock=clock,
    )
    manager = TokenManager(
        settings.name, grant, store, refresh_margin=settings.refresh_margin_seconds, clock=clock
    )
    shaper = Shaper(
        settings.name,
        rate_per_second=settings.rate_per_second,
        burst=settings.burst,
        max_concurrent=settings.max_concurrent,
        max_queue=settings.max_queue,
        max_wait_seconds=settings.max_wait_seconds,
    )
    keys = settings.subscription_keys
    return Connection(
        settings=settings,
        grant=grant,
        manager=manager,
        timeout=timeout,
        shaper=shaper,
        default_headers=_PROVIDER_DEFAULT_HEADERS.get(settings.provider, {}),
        keys=KeyRing(settings.name, keys) if keys else None,
        cache=None if settings.cache is None else ResponseCache(settings.cache),
    )
