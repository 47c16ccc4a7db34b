"""Access control through a real proxy in front of a recording upstream: each rule, allowed and
denied, and a denial never reaches the upstream nor asks for a token."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.forwarding.headers import PROXY_COOKIES, without_cookies
from proxy.forwarding.state import PROXY_STATE
from proxy.inbound.policy import LOOPBACK, AdminAccess, Client
from proxy.inbound.rules import PathPattern, Rule
from proxy.ops.session import SESSION_COOKIE
from tests.conftest import ProxyFactory, RecordingUpstream, connection_settings, token_set

Proxy = TestClient[web.Request, web.Application]


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def client(name: str, key: str, **fields: Any) -> Client:
    return Client(name=name, key_sha256=digest(key), **fields)


def networks(*texts: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


def count_token_requests(proxy: Proxy) -> list[str]:
    """Record every time the proxy asks for a token from now on (manager.usable_token, which
    bearer() asks first too)."""
    calls: list[str] = []
    app = proxy.app
    assert app is not None
    for connection in app[PROXY_STATE].connections.values():
        manager = connection.manager
        original = manager.usable_token

        def usable_token(original: Callable[[], str | None] = original,
                         name: str = connection.name) -> str | None:
            calls.append(name)
            return original()

        manager.usable_token = usable_token  # type: ignore[method-assign]
    return calls


async def problem(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["status"] == response.status
    return body


REPORTING_RULES = (Rule(frozenset({"GET"}),
                        (PathPattern.parse("/api/companies/*/employees*"),)),)


@pytest.fixture
async def proxy(upstream: RecordingUpstream, make_proxy: ProxyFactory) -> Proxy:
    """Two connections, four clients, admin pages on loopback (the default)."""
    return await make_proxy(
        connection_settings("nmbrs", upstream=upstream.url),
        connection_settings("acme", upstream=upstream.url, prefix="/acme/"),
        tokens={"nmbrs": token_set("token-nmbrs"), "acme": token_set("token-acme")},
        clients=(
            client("writer", "key-writer"),
            client("reader", "key-reader", read_only=True),
            client("reporting", "key-reporting", rules=REPORTING_RULES,
                   connections=frozenset({"nmbrs"})),
            client("faraway", "key-faraway", cidrs=networks("10.0.0.0/8", "192.0.2.0/24")),
            client("local", "key-local", cidrs=networks("127.0.0.0/8")),
        ),
    )


# --- who: keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Proxy-Key": "key-writer"},
        {"Authorization": "Bearer key-writer"},
        {"X-Proxy-Key": "key-writer", "Authorization": "Bearer something-else"},
    ],
)
async def test_a_known_key_is_served_and_never_forwarded(
    proxy: Proxy, upstream: RecordingUpstream, headers: dict[str, str]
) -> None:
    response = await proxy.post("/api/x", data=b"body", headers=headers)
    assert response.status == 200
    seen = upstream.seen[-1].headers
    assert seen["authorization"] == ["Bearer token-nmbrs"]
    assert "x-proxy-key" not in seen
    assert "key-writer" not in repr(seen)


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "this proxy needs a key"),
        ({"X-Proxy-Key": "key-nope"}, "the key is not valid"),
        ({"X-Proxy-Key": ""}, "the key is not valid"),
        ({"Authorization": "Bearer key-nope"}, "the key is not valid"),
        ({"Authorization": "Basic " + base64.b64encode(b"u:key-writer").decode()},
         "this proxy needs a key"),  # Basic is for the admin pages only
        ({"X-Proxy-Key": "KEY-WRITER"}, "the key is not valid"),
    ],
)
async def test_no_key_or_a_wrong_key_is_401(
    proxy: Proxy, upstream: RecordingUpstream, headers: dict[str, str], detail: str
) -> None:
    tokens = count_token_requests(proxy)
    response = await proxy.get("/api/companies", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="nmbrs-proxy"'
    body = await problem(response)
    assert body["type"] == "urn:nmbrs-proxy:problem:unauthorized"
    assert detail in body["detail"]
    assert upstream.seen == []
    assert tokens == []


# --- what: rules, read-only, connections, networks ----------------------------------------------


@pytest.mark.parametrize(
    ("key", "method", "path", "status"),
    [
        # read-only
        ("key-reader", "GET", "/api/x", 200),
        ("key-reader", "HEAD", "/api/x", 200),
        ("key-reader", "OPTIONS", "/api/x", 200),
        ("key-reader", "POST", "/api/x", 403),
        ("key-reader", "PUT", "/api/x", 403),
        ("key-reader", "PATCH", "/api/x", 403),
        ("key-reader", "DELETE", "/api/x", 403),
        # method and path rules, and one connection only
        ("key-reporting", "GET", "/api/companies/7/employees", 200),
        ("key-reporting", "GET", "/api/companies/7/employees?pageNumber=2", 200),
        ("key-reporting", "HEAD", "/api/companies/7/employees", 200),
        ("key-reporting", "GET", "/api/companies/7/hourcodes", 403),
        ("key-reporting", "GET", "/api/companies/7/employees/3", 403),
        ("key-reporting", "GET", "/api/companies", 403),
        ("key-reporting", "POST", "/api/companies/7/employees", 403),
        ("key-reporting", "DELETE", "/api/companies/7/employees", 403),
        ("key-reporting", "GET", "/api/companies/%37/employees", 200),  # rules see decoded
        ("key-reporting", "GET", "/acme/api/companies/7/employees", 403),  # not its connection
        # the writer may do anything, on every connection
        ("key-writer", "DELETE", "/api/companies/7", 200),
        ("key-writer", "PATCH", "/acme/api/anything", 200),
        # networks: the test connects from 127.0.0.1
        ("key-local", "GET", "/api/x", 200),
        ("key-faraway", "GET", "/api/x", 403),
        # no connection serves the path: the caller learns it only after identification
        ("key-writer", "GET", "/nowhere", 200),  # "/" serves everything here
    ],
)
async def test_rules(
    proxy: Proxy, upstream: RecordingUpstream, key: str, method: str, path: str, status: int
) -> None:
    tokens = count_token_requests(proxy)
    response = await proxy.request(method, path, headers={"X-Proxy-Key": key})
    assert response.status == status
    if status == 403:
        body = await problem(response)
        assert body["type"] == "urn:nmbrs-proxy:problem:forbidden"
        assert key not in body["detail"]
        assert upstream.seen == []
        assert tokens == []
    else:
        assert len(upstream.seen) == 1
        assert upstream.seen[0].method == method
        assert len(tokens) == 1


async def test_a_client_may_be_kept_to_its_connections(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(
        connection_settings("a", upstream=upstream.url, prefix="/a/"),
        connection_settings("b", upstream=upstream.url, prefix="/b/"),
        tokens={"a": token_set("token-a"), "b": token_set("token-b")},
        clients=(client("only-a", "key-a", connections=frozenset({"a"})),),
    )
    allowed = await proxy.get("/a/api/x", headers={"X-Proxy-Key": "key-a"})
    assert allowed.status == 200
    denied = await proxy.get("/b/api/x", headers={"X-Proxy-Key": "key-a"})
    assert denied.status == 403
    body = await problem(denied)
    assert body["connection"] == "b"
    assert "'only-a' may not use connection 'b'" in body["detail"]
    unknown = await proxy.get("/c/api/x", headers={"X-Proxy-Key": "key-a"})
    assert unknown.status == 404  # no connection serves it: known only to a known caller
    anonymous = await proxy.get("/c/api/x")
    assert anonymous.status == 401
    assert [s.raw_path for s in upstream.seen] == ["/api/x"]


async def test_anonymous_callers_are_served_only_when_allowed(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    clients = (client("writer", "key-writer"),)
    strict = await make_proxy(connection_settings(upstream=upstream.url),
                              tokens={"nmbrs": token_set()}, clients=clients)
    assert (await strict.get("/api/x")).status == 401
    from proxy.config import ServerSettings  # noqa: PLC0415

    lenient = await make_proxy(connection_settings(upstream=upstream.url),
                               tokens={"nmbrs": token_set()}, clients=clients,
                               server=ServerSettings(port=0, allow_anonymous=True))
    assert (await lenient.get("/api/x")).status == 200
    assert (await lenient.get("/api/x", headers={"X-Proxy-Key": "wrong"})).status == 401


async def test_without_clients_everyone_is_served_as_before(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    response = await proxy.get("/api/x", headers={"X-Proxy-Key": "anything"})
    assert response.status == 200
    assert "x-proxy-key" not in upstream.seen[-1].headers


async def test_a_denial_needs_no_token_at_all(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    """No token stored and an identity service that cannot be reached: a denial is still quick
    and clean, because the policy runs before the token is asked for."""
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             clients=(client("reader", "key-reader", read_only=True),))
    tokens = count_token_requests(proxy)
    assert (await proxy.post("/api/x", headers={"X-Proxy-Key": "key-reader"})).status == 403
    assert (await proxy.get("/api/x")).status == 401
    assert tokens == []
    assert upstream.seen == []


# --- the proxy's own pages ----------------------------------------------------------------------

ADMIN_KEY = "admin-key-for-tests"


async def admin_proxy(make_proxy: ProxyFactory, upstream: RecordingUpstream,
                      admin: AdminAccess) -> Proxy:
    return await make_proxy(connection_settings(upstream=upstream.url),
                            tokens={"nmbrs": token_set()},
                            clients=(client("writer", "key-writer"),), admin=admin)


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("admin", "headers", "status"),
    [
        (AdminAccess(), {}, 200),  # loopback, no key: the default
        (AdminAccess(cidrs=networks("10.0.0.0/8")), {}, 403),
        (AdminAccess(cidrs=()), {}, 403),
        (AdminAccess(key_sha256=digest(ADMIN_KEY)), {}, 401),
        (AdminAccess(key_sha256=digest(ADMIN_KEY)), {"X-Proxy-Key": ADMIN_KEY}, 200),
        (AdminAccess(key_sha256=digest(ADMIN_KEY)), {"Authorization": f"Bearer {ADMIN_KEY}"},
         200),
        (AdminAccess(key_sha256=digest(ADMIN_KEY)), {"Authorization": basic(ADMIN_KEY)}, 200),
        (AdminAccess(key_sha256=digest(ADMIN_KEY)), {"Authorization": basic("wrong")}, 401),
        (AdminAccess(key_sha256=digest(ADMIN_KEY)), {"X-Proxy-Key": "key-writer"}, 401),
        (AdminAccess(key_sha256=digest(ADMIN_KEY), cidrs=networks("10.0.0.0/8")),
         {"X-Proxy-Key": ADMIN_KEY}, 403),
    ],
)
@pytest.mark.parametrize("path", ["/_proxy/", "/_proxy", "/_proxy/login?connection=nmbrs"])
async def test_admin_pages(
    make_proxy: ProxyFactory, upstream: RecordingUpstream, admin: AdminAccess,
    headers: dict[str, str], status: int, path: str,
) -> None:
    proxy = await admin_proxy(make_proxy, upstream, admin)
    response = await proxy.get(path, headers=headers, allow_redirects=False)
    if status == 200:
        # admitted: the page, the redirect to it, or the login's own answer (its issuer is down)
        admitted = {"/_proxy/": 200, "/_proxy": 301, "/_proxy/login?connection=nmbrs": 502}
        assert response.status == admitted[path], await response.text()
        return
    assert response.status == status
    body = await problem(response)
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith('Basic realm="nmbrs-proxy admin"')
        assert ADMIN_KEY not in body["detail"]
    assert upstream.seen == []


@pytest.mark.parametrize("path", ["/_proxy/healthz", "/_proxy/readyz"])
async def test_health_and_readiness_stay_open(
    make_proxy: ProxyFactory, upstream: RecordingUpstream, path: str
) -> None:
    proxy = await admin_proxy(make_proxy, upstream,
                              AdminAccess(key_sha256=digest(ADMIN_KEY), cidrs=()))
    response = await proxy.get(path)
    assert response.status == 200
    assert (await response.json())["status" if path.endswith("healthz") else "ready"]


async def test_metrics_are_an_admin_page(
    make_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    proxy = await admin_proxy(make_proxy, upstream, AdminAccess(key_sha256=digest(ADMIN_KEY)))
    assert (await proxy.get("/_proxy/metrics")).status == 401
    response = await proxy.get("/_proxy/metrics", headers={"X-Proxy-Key": ADMIN_KEY})
    assert response.status == 200
    assert "nmbrs_proxy_requests_total" in await response.text()
    assert upstream.seen == []


@pytest.mark.parametrize("path", ["/_proxy/nothing/here", "/_proxy/healthz/"])
async def test_other_proxy_paths_are_admin_and_never_forwarded(
    make_proxy: ProxyFactory, upstream: RecordingUpstream, path: str
) -> None:
    proxy = await admin_proxy(make_proxy, upstream, AdminAccess(key_sha256=digest(ADMIN_KEY)))
    assert (await proxy.get(path)).status == 401
    response = await proxy.get(path, headers={"X-Proxy-Key": ADMIN_KEY})
    assert response.status == 404
    assert (await problem(response))["type"] == "urn:nmbrs-proxy:problem:http-404"
    assert upstream.seen == []


@pytest.mark.parametrize(
    ("admin", "status"),
    [
        (AdminAccess(key_sha256=digest(ADMIN_KEY)), 400),  # reached: the consent page answers
        (AdminAccess(), 400),
        (AdminAccess(cidrs=networks("10.0.0.0/8")), 403),
    ],
)
async def test_the_callback_needs_the_admin_network_but_no_key(
    make_proxy: ProxyFactory, upstream: RecordingUpstream, admin: AdminAccess, status: int
) -> None:
    """The browser coming back from the identity service cannot add a key."""
    proxy = await admin_proxy(make_proxy, upstream, admin)
    response = await proxy.get("/_proxy/callback?code=abc&state=unknown")
    assert response.status == status
    if status == 400:
        assert "does not belong to a login started in this browser" in await response.text()
    assert upstream.seen == []


def test_the_default_admin_networks_are_loopback() -> None:
    assert AdminAccess().cidrs == LOOPBACK


# --- the proxy's own cookie stays with the proxy ------------------------------------------------


def test_the_stripped_cookie_is_the_consent_cookie() -> None:
    assert frozenset({SESSION_COOKIE}) == PROXY_COOKIES


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a=1; b=2", "a=1; b=2"),
        ("nmbrs_proxy_session=xyz", ""),
        ("a=1; nmbrs_proxy_session=xyz; b=2", "a=1; b=2"),
        ("nmbrs_proxy_session=xyz; b=2", "b=2"),
        ('a=1; nmbrs_proxy_session="gAAAA-x="; b=2', "a=1; b=2"),  # a quoted value
        ("nmbrs_proxy_sessionX=1", "nmbrs_proxy_sessionX=1"),
    ],
)
def test_without_cookies(value: str, expected: str) -> None:
    assert without_cookies(value, PROXY_COOKIES) == expected


async def test_the_consent_cookie_is_not_forwarded(
    upstream: RecordingUpstream, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()})
    url = proxy.make_url("/api/x")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as browser:
        for cookie in ("app=1; nmbrs_proxy_session=gAAAA-secret",
                       "nmbrs_proxy_session=gAAAA-secret"):
            async with browser.get(url, headers={"Cookie": cookie}) as response:
                assert response.status == 200
    first, second = upstream.seen
    assert first.headers["cookie"] == ["app=1"]
    assert "cookie" not in second.headers
