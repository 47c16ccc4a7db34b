"""Test-side helpers for the sandbox tests, written independently of the sandbox's own code.

The Basic encoder and PKCE helper are deliberately re-implemented here from the RFCs.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

from proxy.sandbox import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_REDIRECT_URI,
    DEMO_SUBSCRIPTION_KEY,
)

Client = TestClient[web.Request, web.Application]
READ_SCOPES = ("offline_access", "company.info.read", "employee.info.read", "user.info.read")


def basic(client_id: str, secret: str) -> str:
    """RFC 6749 section 2.3.1: form-urlencode each part, join with ':', base64."""
    joined = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return "Basic " + base64.b64encode(joined.encode("utf-8")).decode("ascii")


def naive_basic(client_id: str, secret: str) -> str:
    """The common bug: RFC 7617 Basic without form-urlencoding first."""
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode("ascii")


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9_-]
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass
class Answer:
    status: int
    body: Any
    headers: CIMultiDictProxy[str]


@dataclass
class Flow:
    """Drives the sandbox as a browser and an OAuth client would."""

    client: Client
    client_id: str = DEMO_CLIENT_ID
    secret: str = DEMO_CLIENT_SECRET
    redirect_uri: str = DEMO_REDIRECT_URI
    verifiers: dict[str, str] = field(default_factory=dict)  # code -> PKCE verifier

    async def authorize(self, **params: str | None) -> tuple[int, str, dict[str, str]]:
        """GET /connect/authorize; returns status, Location (or body), redirect query params."""
        query: dict[str, str | None] = {
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "response_type": "code",
            "scope": " ".join(READ_SCOPES),
            "state": "st-123",
        }
        query.update(params)
        sent = {name: value for name, value in query.items() if value is not None}
        url = "/connect/authorize?" + urllib.parse.urlencode(sent, quote_via=urllib.parse.quote)
        async with self.client.get(url, allow_redirects=False) as response:
            if response.status != 302:
                return response.status, await response.text(), {}
            location = response.headers["Location"]
        return 302, location, redirect_params(location)

    async def code(self, scopes: tuple[str, ...] = READ_SCOPES, *, use_pkce: bool = True) -> str:
        params: dict[str, str | None] = {"scope": " ".join(scopes)}
        verifier = ""
        if use_pkce:
            verifier, challenge = pkce_pair()
            params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
        status, location, query = await self.authorize(**params)
        assert status == 302, location
        code = query["code"]
        if use_pkce:
            self.verifiers[code] = verifier
        return code

    async def token(self, form: dict[str, str], *, auth: str | None = "basic") -> Answer:
        headers = {}
        body = dict(form)
        if auth == "basic":
            headers["Authorization"] = basic(self.client_id, self.secret)
        elif auth == "post":
            body |= {"client_id": self.client_id, "client_secret": self.secret}
        async with self.client.post("/connect/token", data=body, headers=headers) as response:
            return Answer(response.status, await response.json(), response.headers)

    async def redeem(self, code: str, *, auth: str | None = "basic") -> Answer:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri}
        if code in self.verifiers:
            form["code_verifier"] = self.verifiers[code]
        return await self.token(form, auth=auth)

    async def login(self, scopes: tuple[str, ...] = READ_SCOPES) -> dict[str, Any]:
        answer = await self.redeem(await self.code(scopes))
        assert answer.status == 200, answer.body
        assert isinstance(answer.body, dict)
        return answer.body

    async def refresh(self, refresh_token: str, **extra: str) -> Answer:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra}
        return await self.token(form)

    async def revoke(self, token: str, hint: str | None = None) -> int:
        form = {"token": token}
        if hint is not None:
            form["token_type_hint"] = hint
        headers = {"Authorization": basic(self.client_id, self.secret)}
        async with self.client.post("/connect/revocation", data=form, headers=headers) as response:
            assert await response.read() == b""
            return response.status

    async def api(
        self,
        path: str,
        token: str | None,
        *,
        key: str | None = DEMO_SUBSCRIPTION_KEY,
        method: str = "GET",
        json: Any = None,
    ) -> Answer:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if key is not None:
            headers["X-Subscription-Key"] = key
        async with self.client.request(method, path, headers=headers, json=json) as response:
            return Answer(response.status, await response.json(), response.headers)


def redirect_params(location: str) -> dict[str, str]:
    pairs = urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query, strict_parsing=True)
    params = dict(pairs)
    assert len(params) == len(pairs), location
    return params
