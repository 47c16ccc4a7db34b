"""The discovery document: kept for its TTL, read again after it and after failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.core.secret import Secret
from proxy.oauth.protocol import GrantError
from proxy.tokens.endpoints import Discovery
from proxy.tokens.grants import AuthorizationCodeGrant
from tests.clock import FakeClock
from tests.conftest import token_set

TIMEOUT = aiohttp.ClientTimeout(total=5)
REDIRECT_URI = "http://127.0.0.1:8080/_proxy/callback"


@dataclass
class IdentityService:
    """An issuer whose discovery answer and token endpoint a test can change."""

    url: str = ""
    status: int = 200
    token_path: str = "/connect/token"
    token_endpoint: str | None = None  # another host altogether
    served: list[str] = field(default_factory=list)

    async def discovery(self, request: web.Request) -> web.Response:
        self.served.append(request.path)
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        return web.json_response({
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/connect/authorize",
            "token_endpoint": self.token_endpoint or f"{self.url}{self.token_path}",
        })

    async def token(self, request: web.Request) -> web.Response:
        self.served.append(request.path)
        if request.path != self.token_path:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response({"error": "invalid_grant"}, status=400)


@pytest.fixture
async def identity() -> AsyncIterator[IdentityService]:
    service = IdentityService()
    app = web.Application()
    app.router.add_get("/.well-known/openid-configuration", service.discovery)
    app.router.add_post("/connect/{name}", service.token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    service.url = str(server.make_url("")).rstrip("/")
    yield service
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def test_the_document_is_kept_for_its_ttl(
    identity: IdentityService, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    discovery = Discovery(session, identity.url, timeout=TIMEOUT, clock=clock, ttl=60)
    first = await discovery.endpoints()
    clock.advance(59)
    assert await discovery.endpoints() == first
    assert discovery.fetches == 1
    clock.advance(1)
    identity.token_path = "/connect/token2"  # the issuer moved its endpoint meanwhile
    moved = await discovery.endpoints()
    assert moved.token == f"{identity.url}/connect/token2"
    assert discovery.fetches == 2


async def test_a_failed_fetch_serves_the_last_document_and_tries_again_next_time(
    identity: IdentityService, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    discovery = Discovery(session, identity.url, timeout=TIMEOUT, clock=clock, ttl=60)
    first = await discovery.endpoints()
    clock.advance(61)
    identity.status = 503
    assert await discovery.endpoints() == first  # the last good one
    assert await discovery.endpoints() == first
    assert discovery.fetches == 3  # every call tried again: a failure is never cached
    identity.status = 200
    await discovery.endpoints()
    await discovery.endpoints()
    assert discovery.fetches == 4


async def test_a_failure_with_nothing_to_fall_back_on_is_an_error(
    identity: IdentityService, session: aiohttp.ClientSession
) -> None:
    identity.status = 500
    discovery = Discovery(session, identity.url, timeout=TIMEOUT)
    with pytest.raises(GrantError) as failed:
        await discovery.endpoints()
    assert failed.value.error == "temporarily_unavailable"
    identity.status = 200
    assert (await discovery.endpoints()).token == f"{identity.url}/connect/token"


async def test_a_token_endpoint_that_is_gone_makes_the_grant_read_the_document_again(
    identity: IdentityService, session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    discovery = Discovery(session, identity.url, timeout=TIMEOUT, clock=clock, ttl=3600)
    grant = AuthorizationCodeGrant(session, discovery, client_id="c", client_secret=Secret("s"),
                                   redirect_uri=REDIRECT_URI, scopes=("offline_access",),
                                   timeout=TIMEOUT, clock=clock)
    await discovery.endpoints()
    identity.token_path = "/connect/token2"  # moved; the cached document still says /token
    with pytest.raises(GrantError):
        await grant.renew(token_set())
    with pytest.raises(GrantError) as refused:
        await grant.renew(token_set())  # read the document again: the new endpoint answers
    assert refused.value.error == "invalid_grant"
    assert identity.served == [
        "/.well-known/openid-configuration",
        "/connect/token",
        "/.well-known/openid-configuration",
        "/connect/token2",
    ]


async def test_an_unreachable_token_endpoint_makes_the_grant_read_the_document_again(
    identity: IdentityService, session: aiohttp.ClientSession
) -> None:
    discovery = Discovery(session, identity.url, timeout=TIMEOUT)
    grant = AuthorizationCodeGrant(session, discovery, client_id="c", client_secret=Secret("s"),
                                   redirect_uri=REDIRECT_URI, scopes=("offline_access",),
                                   timeout=TIMEOUT, clock=FakeClock())
    identity.token_endpoint = "http://127.0.0.1:9/connect/token"  # nothing listens on port 9
    with pytest.raises(GrantError) as failed:
        await grant.renew(token_set())
    assert failed.value.error == "temporarily_unavailable"
    identity.token_endpoint = None
    with pytest.raises(GrantError) as refused:
        await grant.renew(token_set())
    assert refused.value.error == "invalid_grant"
    assert discovery.fetches == 2
