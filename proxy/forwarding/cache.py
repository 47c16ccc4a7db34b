"""The opt-in response cache for GET: rules (pure) and the store with shared misses (no I/O).

What may be served from the cache, and what may be stored (RFC 9111, for a shared cache):
- only GET, only when the request has no body, and only on a configured path pattern (the same
  globs as the access rules, `proxy.inbound.policy.PathPattern`, matched against the decoded path);
- the client's `Cache-Control: no-store` or `private` keeps its request away from the cache
  both ways; `no-cache`, `max-age=0` (and `Pragma: no-cache` without Cache-Control), a range
  or a conditional request skip the lookup but may refresh the entry;
- only a 200 is stored, and not when the upstream says `no-store`, `no-cache` or `private`,
  sets a cookie, or varies on a request field the key does not hold; its freshness is the
  configured TTL, cut short by the upstream's `s-maxage`/`max-age` less its `Age`;
- a successful unsafe request (PUT, POST, PATCH, DELETE) to a path drops the entries of that
  path (RFC 9111 §4.4).

The key is the connection (one cache per connection), the path and query as the upstream gets
them, and the request fields a response may vary on (`Accept`, `Accept-Encoding`,
`Accept-Language`): bytes pass through untouched, so a gzip answer is only for gzip askers.

Concurrent misses for one key share one upstream call: the first becomes the leader, the others
wait for its entry. A leader whose answer cannot be stored releases them to fetch on their own.
"""

from __future__ import annotations

import asyncio
import enum
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

from cachetools import TLRUCache
from multidict import CIMultiDict, MultiMapping

from proxy.config import CacheSettings

Clock = Callable[[], float]
Key = tuple[str, ...]

KEY_FIELDS: Final = ("accept", "accept-encoding", "accept-language")
_NOT_STORED_DIRECTIVES: Final = frozenset({"no-store", "no-cache", "private"})
_CONDITIONAL_FIELDS: Final = (
    "if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range", "range",
)  # fmt: skip
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# RFC 9111 §5.2: directive = token [ "=" ( token / quoted-string ) ], comma separated.
_DIRECTIVE: Final = re.compile(
    r"""([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?"""
)
_DELTA_SECONDS: Final = re.compile(r"[0-9]+")


class Mode(enum.Enum):
    USE = "use"  # serve a stored entry; else fetch (sharing a concurrent miss) and store
    REFRESH = "refresh"  # fetch, and store what comes back
    BYPASS = "bypass"  # fetch; neither read nor write the cache


# --- pure rules ---------------------------------------------------------------------------------


def cache_control(headers: MultiMapping[str]) -> dict[str, str | None]:
    """Directives of every `Cache-Control` field, names lower-cased, quotes removed."""
    directives: dict[str, str | None] = {}
    for value in headers.getall("Cache-Control", ()):
        for match in _DIRECTIVE.finditer(value):
            argument = match.group(2)
            if argument is not None and argument.startswith('"'):
                argument = argument[1:-1]
            directives.setdefault(match.group(1).lower(), argument)
    return directives


def _seconds(argument: str | None) -> int | None:
    return int(argument) if argument and _DELTA_SECONDS.fullmatch(argument) else None


def request_mode(headers: MultiMapping[str]) -> Mode:
    """What the client's request allows the cache to do (RFC 9111 §5.2.1)."""
    directives = cache_control(headers)
    if directives.keys() & {"no-store", "private"}:
        return Mode.BYPASS
    no_cache = "no-cache" in directives or _seconds(directives.get("max-age", "")) == 0
    if "cache-control" not in headers and any(
        "no-cache" in value.lower() for value in headers.getall("Pragma", ())
    ):
        no_cache = True  # RFC 9111 §5.4: Pragma only counts when Cache-Control is absent
    if no_cache or any(name in headers for name in _CONDITIONAL_FIELDS):
        return Mode.REFRESH
    return Mode.USE


def freshness(status: int, headers: MultiMapping[str], ttl: float) -> float | None:
    """Seconds the answer may be served from the cache; None when it must not be stored."""
    if status != 200 or "set-cookie" in headers:
        return None
    directives = cache_control(headers)
    if directives.keys() & _NOT_STORED_DIRECTIVES:
        return None
    varies = {
        name.strip().lower()
        for value in headers.getall("Vary", ())
        for name in value.split(",")
        if name.strip()
    }
    if not varies <= set(KEY_FIELDS):  # also "*"
        return None
    lifetime = _seconds(directives.get("s-maxage", directives.get("max-age", "")))
    if lifetime is not None:
        ttl = min(ttl, lifetime - upstream_age(headers))
    return ttl if ttl > 0 else None


def upstream_age(headers: MultiMapping[str]) -> int:
    """RFC 9111 §5.1: the `Age` the upstream (or a cache before it) reported; 0 if none."""
    return _seconds(headers.get("Age", "").strip()) or 0


def cache_key(path: str, query: str, headers: MultiMapping[str]) -> Key:
    return (path, query, *(",".join(headers.getall(name, ())) for name in KEY_FIELDS))


def invalidates(method: str, status: int) -> bool:
    """RFC 9111 §4.4: a successful unsafe request makes the stored answers of its path stale."""
    return method not in _SAFE_METHODS and 200 <= status < 400


# --- the store -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    status: int
    headers: CIMultiDict[str]  # as the upstream sent them
    body: bytes
    stored_at: float
    ttl: float
    age_at_store: int = 0  # the upstream's Age when stored

    def age(self, now: float) -> int:
        """RFC 9111 §4.2.3: the Age a client sees: the upstream's plus the time spent here."""
        return self.age_at_store + max(0, int(now - self.stored_at))


@dataclass
class Plan:
    """What the cache does for one request; the leader of a miss must call `ResponseCache.done`."""

    key: Key
    mode: Mode
    leader: bool = False
    shared: asyncio.Future[Entry | None] | None = field(default=None, repr=False)


@dataclass
class CacheCounters:
    hits: int = 0  # served from a stored entry
    coalesced: int = 0  # served the entry another request was fetching
    misses: int = 0  # went upstream (USE or REFRESH)
    bypassed: int = 0  # the client said no-store or private
    stored: int = 0


class ResponseCache:
    """One connection's cache: entries with their own TTL, misses shared per key."""

    def __init__(self, settings: CacheSettings, *, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._entries: TLRUCache[Key, Entry] = TLRUCache(
            maxsize=settings.max_entries, ttu=_expires, timer=clock
        )
        self._inflight: dict[Key, asyncio.Future[Entry | None]] = {}
        self.counters = CacheCounters()

    def __len__(self) -> int:
        return len(self._entries)

    def now(self) -> float:
        return self._clock()

    def plan(self, method: str, target: str, headers: MultiMapping[str], *, has_body: bool
             ) -> Plan | None:
        """None when the cache has nothing to do with this request (then no X-Cache field)."""
        path, _, query = target.partition("?")
        if method != "GET" or has_body:
            return None
        decoded = unquote(path)
        if not any(pattern.matches(decoded) for pattern in self.settings.paths):
            return None
        mode = request_mode(headers)
        if mode is Mode.BYPASS:
            self.counters.bypassed += 1
        return Plan(cache_key(path, query, headers), mode)

    async def lookup(self, plan: Plan) -> Entry | None:
        """A stored entry, or the one a concurrent miss fetched; None: go upstream."""
        if plan.mode is not Mode.USE:
            if plan.mode is Mode.REFRESH:
                self.counters.misses += 1
            return None
        entry = self._entries.get(plan.key)
        if entry is not None:
            self.counters.hits += 1
            return entry
        shared = self._inflight.get(plan.key)
        if shared is not None:
            entry = await asyncio.shield(shared)
            if entry is not None:
                self.counters.coalesced += 1
                return entry
            plan.mode = Mode.BYPASS  # the leader's answer could not be stored: fetch alone
        else:
            plan.leader = True
            plan.shared = asyncio.get_running_loop().create_future()
            self._inflight[plan.key] = plan.shared
        self.counters.misses += 1
        return None

    def storable(self, plan: Plan, status: int, headers: MultiMapping[str]) -> float | None:
        """The TTL to store this answer with, or None."""
        if plan.mode is Mode.BYPASS:
            return None
        return freshness(status, headers, self.settings.ttl_seconds)

    def store(self, plan: Plan, status: int, headers: MultiMapping[str], body: bytes,
              ttl: float) -> Entry:
        entry = Entry(status, CIMultiDict(headers), body, self._clock(), ttl,
                      upstream_age(headers))
        self._entries[plan.key] = entry
        self.counters.stored += 1
        self._resolve(plan, entry)
        return entry

    def done(self, plan: Plan) -> None:
        """The leader is finished: waiters still waiting fetch on their own."""
        self._resolve(plan, None)

    def invalidate(self, path: str) -> None:
        for key in [key for key in self._entries.keys() if key[0] == path]:  # noqa: SIM118
            self._entries.pop(key, None)

    def _resolve(self, plan: Plan, entry: Entry | None) -> None:
        shared = plan.shared
        if not plan.leader or shared is None or shared.done():
            return
        shared.set_result(entry)
        if self._inflight.get(plan.key) is shared:
            del self._inflight[plan.key]


def _expires(_key: Key, entry: Entry, now: float) -> float:
    return now + entry.ttl


def served_headers(entry: Entry, now: float, outcome: str) -> dict[str, str]:
    """Fields added to an answer that went through the cache: `Age` on a hit, and `X-Cache`."""
    fields = {"X-Cache": outcome}
    if outcome == "HIT" or entry.age_at_store:
        fields["Age"] = str(entry.age(now))
    return fields
