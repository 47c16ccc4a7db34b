"""Response cache rules as tables, and the store: TTLs, bounds, shared misses, invalidation."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from proxy.forwarding.cache import (
    Entry,
    Mode,
    ResponseCache,
    cache_control,
    cache_key,
    freshness,
    invalidates,
    request_mode,
    served_headers,
)
from tests.clock import FakeClock
from tests.conftest import cache_settings


def fields(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


@pytest.mark.parametrize(
    ("pattern", "target", "served"),
    [
        ("/api/companies", "/api/companies", True),
        ("/api/companies", "/api/companies?pageSize=2", True),  # any query
        ("/api/companies", "/api/companies/", False),
        ("/api/companies/*/hourcodes", "/api/companies/abc/hourcodes?x=1", True),
        ("/api/companies/*/hourcodes", "/api/companies/a/b/hourcodes", False),  # one segment
        ("/api/**", "/api/companies/1/employees", True),
        ("/api/**", "/other", False),
        ("/api/~user", "/api/%7Euser", True),  # the decoded path, as the access rules see it
        ("/api/a.b", "/api/aXb", False),  # regex characters are literal
    ],
)
def test_which_paths_the_cache_serves(pattern: str, target: str, served: bool) -> None:
    cache = ResponseCache(cache_settings(pattern), clock=FakeClock())
    assert (cache.plan("GET", target, fields(), has_body=False) is not None) is served


def test_encodings_of_one_path_are_kept_apart() -> None:
    # matched decoded, keyed raw: bytes reach the upstream as sent, so answers may differ
    cache = ResponseCache(cache_settings("/api/*"), clock=FakeClock())
    plain = cache.plan("GET", "/api/~user", fields(), has_body=False)
    encoded = cache.plan("GET", "/api/%7Euser", fields(), has_body=False)
    assert plain is not None
    assert encoded is not None
    assert plain.key != encoded.key


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], {}),
        (["no-store"], {"no-store": None}),
        (["No-Cache, MAX-AGE=60"], {"no-cache": None, "max-age": "60"}),
        (["max-age=60", "private"], {"max-age": "60", "private": None}),
        (
            ['no-cache="Set-Cookie, X-Y", max-age=5'],
            {"no-cache": "Set-Cookie, X-Y", "max-age": "5"},
        ),
        (["max-age=5, max-age=10"], {"max-age": "5"}),  # the first one counts
        ([" , ,public"], {"public": None}),
    ],
)
def test_cache_control_parsing(values: list[str], expected: dict[str, str | None]) -> None:
    assert cache_control(fields(*(("Cache-Control", v) for v in values))) == expected


@pytest.mark.parametrize(
    ("headers", "mode"),
    [
        ([], Mode.USE),
        ([("Cache-Control", "max-age=60")], Mode.USE),
        ([("Cache-Control", "no-store")], Mode.BYPASS),
        ([("Cache-Control", "private")], Mode.BYPASS),
        ([("Cache-Control", "no-cache, no-store")], Mode.BYPASS),
        ([("Cache-Control", "no-cache")], Mode.REFRESH),
        ([("Cache-Control", "max-age=0")], Mode.REFRESH),
        ([("Pragma", "no-cache")], Mode.REFRESH),
        ([("Pragma", "no-cache"), ("Cache-Control", "max-age=60")], Mode.USE),  # RFC 9111 §5.4
        ([("If-None-Match", '"abc"')], Mode.REFRESH),
        ([("If-Modified-Since", "Wed, 01 May 2024 12:00:00 GMT")], Mode.REFRESH),
        ([("Range", "bytes=0-10")], Mode.REFRESH),
    ],
)
def test_what_the_client_allows(headers: list[tuple[str, str]], mode: Mode) -> None:
    assert request_mode(fields(*headers)) is mode


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, [], 30.0),
        (200, [("Cache-Control", "public")], 30.0),
        (200, [("Cache-Control", "max-age=10")], 10.0),
        (200, [("Cache-Control", "max-age=100")], 30.0),  # the configured TTL is the ceiling
        (200, [("Cache-Control", "max-age=100, s-maxage=5")], 5.0),  # shared caches: s-maxage
        (200, [("Cache-Control", "max-age=10"), ("Age", "4")], 6.0),
        (200, [("Cache-Control", "max-age=10"), ("Age", "10")], None),
        (200, [("Cache-Control", "max-age=0")], None),
        (200, [("Cache-Control", "no-store")], None),
        (200, [("Cache-Control", "no-cache")], None),
        (200, [("Cache-Control", "private, max-age=60")], None),
        (200, [("Set-Cookie", "a=1")], None),
        (200, [("Vary", "Accept-Encoding")], 30.0),
        (200, [("Vary", "accept, Accept-Language")], 30.0),
        (200, [("Vary", "Authorization")], None),
        (200, [("Vary", "*")], None),
        (203, [], None),
        (206, [], None),
        (404, [], None),
        (301, [], None),
        (500, [], None),
    ],
)
def test_what_may_be_stored(status: int, headers: list[tuple[str, str]], expected: float | None
                            ) -> None:
    assert freshness(status, fields(*headers), 30.0) == expected


def test_the_key_holds_path_query_and_the_fields_answers_vary_on() -> None:
    plain = cache_key("/api/companies", "pageSize=2", fields())
    gzip = cache_key("/api/companies", "pageSize=2", fields(("Accept-Encoding", "gzip")))
    other_query = cache_key("/api/companies", "pageSize=3", fields())
    noise = cache_key("/api/companies", "pageSize=2", fields(("X-Request-Id", "1")))
    assert len({plain, gzip, other_query}) == 3
    assert noise == plain


@pytest.mark.parametrize(
    ("method", "status", "expected"),
    [
        ("PUT", 200, True), ("POST", 201, True), ("DELETE", 204, True), ("PATCH", 302, True),
        ("PUT", 400, False), ("POST", 500, False), ("GET", 200, False), ("HEAD", 200, False),
    ],
)  # fmt: skip
def test_what_invalidates(method: str, status: int, expected: bool) -> None:
    assert invalidates(method, status) is expected


@pytest.mark.parametrize(
    ("age_at_store", "resident", "outcome", "expected"),
    [
        (0, 12.7, "HIT", {"X-Cache": "HIT", "Age": "12"}),
        (5, 12.7, "HIT", {"X-Cache": "HIT", "Age": "17"}),
        (0, 0.0, "MISS", {"X-Cache": "MISS"}),
        (5, 0.0, "MISS", {"X-Cache": "MISS", "Age": "5"}),
    ],
)
def test_served_headers(age_at_store: int, resident: float, outcome: str,
                        expected: dict[str, str]) -> None:
    entry = Entry(200, fields(), b"", stored_at=100.0, ttl=30.0, age_at_store=age_at_store)
    assert served_headers(entry, 100.0 + resident, outcome) == expected


# --- the store ---------------------------------------------------------------------------------

SETTINGS = cache_settings("/api/companies", "/api/companies/*/hourcodes", ttl_seconds=30,
                         max_entries=2)


def make_cache(clock: FakeClock) -> ResponseCache:
    return ResponseCache(SETTINGS, clock=clock)


@pytest.mark.parametrize(
    ("method", "target", "headers", "has_body", "planned"),
    [
        ("GET", "/api/companies", [], False, Mode.USE),
        ("GET", "/api/companies?pageSize=2", [], False, Mode.USE),
        ("GET", "/api/companies/1/hourcodes", [("Cache-Control", "no-cache")], False,
         Mode.REFRESH),
        ("GET", "/api/companies", [("Cache-Control", "no-store")], False, Mode.BYPASS),
        ("GET", "/api/companies", [], True, None),
        ("HEAD", "/api/companies", [], False, None),
        ("PUT", "/api/companies", [], False, None),
        ("GET", "/api/debtors", [], False, None),
    ],
)
def test_plans(method: str, target: str, headers: list[tuple[str, str]], has_body: bool,
               planned: Mode | None) -> None:
    plan = make_cache(FakeClock()).plan(method, target, fields(*headers), has_body=has_body)
    assert (None if plan is None else plan.mode) is planned


async def fetch_and_store(cache: ResponseCache, target: str, body: bytes,
                          headers: CIMultiDict[str] | None = None) -> Entry | None:
    plan = cache.plan("GET", target, headers or fields(), has_body=False)
    assert plan is not None
    entry = await cache.lookup(plan)
    if entry is not None:
        return entry
    upstream = fields(("Content-Type", "application/json"))
    ttl = cache.storable(plan, 200, upstream)
    if ttl is not None:
        cache.store(plan, 200, upstream, body, ttl)
    cache.done(plan)
    return None


async def test_a_stored_answer_is_served_until_its_ttl_runs_out() -> None:
    clock = FakeClock()
    cache = make_cache(clock)
    assert await fetch_and_store(cache, "/api/companies", b"one") is None
    clock.advance(29.9)
    hit = await fetch_and_store(cache, "/api/companies", b"two")
    assert hit is not None
    assert hit.body == b"one"
    assert hit.age(clock()) == 29
    clock.advance(0.1)
    assert await fetch_and_store(cache, "/api/companies", b"three") is None
    assert cache.counters.hits == 1
    assert cache.counters.misses == 2
    assert cache.counters.stored == 2


async def test_the_entry_count_is_bounded() -> None:
    cache = make_cache(FakeClock())
    for query in ("a", "b", "c"):
        await fetch_and_store(cache, f"/api/companies?{query}", query.encode())
    assert len(cache) == 2


async def test_no_store_neither_reads_nor_writes() -> None:
    cache = make_cache(FakeClock())
    await fetch_and_store(cache, "/api/companies", b"one")
    no_store = fields(("Cache-Control", "no-store"))
    assert await fetch_and_store(cache, "/api/companies", b"two", no_store) is None
    hit = await fetch_and_store(cache, "/api/companies", b"three")
    assert hit is not None
    assert hit.body == b"one"
    assert cache.counters.bypassed == 1


async def test_no_cache_skips_the_lookup_and_refreshes_the_entry() -> None:
    cache = make_cache(FakeClock())
    await fetch_and_store(cache, "/api/companies", b"old")
    refresh = fields(("Cache-Control", "no-cache"))
    assert await fetch_and_store(cache, "/api/companies", b"new", refresh) is None
    hit = await fetch_and_store(cache, "/api/companies", b"x")
    assert hit is not None
    assert hit.body == b"new"


async def test_invalidate_drops_every_query_of_a_path() -> None:
    cache = ResponseCache(cache_settings("/**"), clock=FakeClock())
    for target in ("/api/companies?a", "/api/companies?b", "/api/debtors"):
        await fetch_and_store(cache, target, b"x")
    cache.invalidate("/api/companies")
    assert len(cache) == 1
    assert await fetch_and_store(cache, "/api/debtors", b"y") is not None


async def test_concurrent_misses_share_the_leaders_entry() -> None:
    cache = make_cache(FakeClock())
    plans = [cache.plan("GET", "/api/companies", fields(), has_body=False) for _ in range(3)]
    assert all(plan is not None for plan in plans)
    leader, *followers = [plan for plan in plans if plan is not None]
    assert await cache.lookup(leader) is None
    assert leader.leader
    waiting = [asyncio.create_task(cache.lookup(plan)) for plan in followers]
    await asyncio.sleep(0)
    assert not any(task.done() for task in waiting)
    entry = cache.store(leader, 200, fields(), b"shared", 30.0)
    cache.done(leader)
    assert [await task for task in waiting] == [entry, entry]
    assert not any(plan.leader for plan in followers)
    assert (cache.counters.misses, cache.counters.coalesced) == (1, 2)


async def test_when_the_leader_stores_nothing_the_followers_fetch_alone() -> None:
    cache = make_cache(FakeClock())
    leader = cache.plan("GET", "/api/companies", fields(), has_body=False)
    follower = cache.plan("GET", "/api/companies", fields(), has_body=False)
    assert leader is not None
    assert follower is not None
    assert await cache.lookup(leader) is None
    waiting = asyncio.create_task(cache.lookup(follower))
    await asyncio.sleep(0)
    cache.done(leader)  # e.g. a 404, or too big
    cache.done(leader)  # a second call changes nothing
    assert await waiting is None
    assert follower.mode is Mode.BYPASS
    assert cache.storable(follower, 200, fields()) is None
    # the next request leads a new miss
    again = cache.plan("GET", "/api/companies", fields(), has_body=False)
    assert again is not None
    assert await cache.lookup(again) is None
    assert again.leader
