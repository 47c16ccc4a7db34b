"""Helpers for the consent-flow tests: settings for a proxy in front of the sandbox, a browser.

The browser follows no redirect by itself: each hop (proxy → identity service → callback) is
made and checked explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDictProxy

from proxy.config import ConnectionSettings
from proxy.core.secret import Secret
from proxy.sandbox import Sandbox
from tests.clock import FakeClock

# A client id in the style of Nmbrs' own, a secret that breaks naive Basic auth (RFC 6749 §2.3.1).
CLIENT_ID = "PartnerApp_x*$y"
CLIENT_SECRET = "s3:cr%et+x y/é"
SUBSCRIPTION_KEY = "sub-key-for-consent-tests"
SCOPES = ("offline_access", "company.info.read", "employee.info.read")
CALLBACK_PATH = "/_proxy/callback"


def connection(
    name: str,
    *,
    sandbox_url: str,
    redirect_uri: str,
    prefix: str = "/",
    scopes: tuple[str, ...] = SCOPES,
    subscription_key: str | None = SUBSCRIPTION_KEY,
) -> ConnectionSettings:
    return ConnectionSettings(
        name=name,
        provider="nmbrs",
        prefix=prefix,
        upstream=sandbox_url,
        client_id=CLIENT_ID,
        client_secret=Secret(CLIENT_SECRET),
        issuer=sandbox_url,
        redirect_uri=redirect_uri,
        scopes=scopes,
        subscription_key=None if subscription_key is None else Secret(subscription_key),
    )


@dataclass
class Hop:
    """One response, read whole."""

    status: int
    headers: CIMultiDictProxy[str]
    text: str

    @property
    def location(self) -> str:
        return self.headers["Location"]

    def set_cookies(self) -> list[str]:
        return self.headers.getall("Set-Cookie", [])

    def set_cookie(self, name: str) -> Morsel[str]:
        """The one cookie `name` this answer sets, read as a browser reads it (RFC 6265): a
        quoted value is unquoted, attributes are parsed, their names folded to lower case."""
        found: list[Morsel[str]] = []
        for header in self.set_cookies():
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            found.extend(morsel for key, morsel in jar.items() if key == name)
        assert len(found) == 1, self.set_cookies()
        return found[0]


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def with_query(url: str, **changes: str | None) -> str:
    """`url` with query parameters replaced (None: removed)."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, value in changes.items():
        if value is None:
            params.pop(name, None)
        else:
            params[name] = value
    return parts._replace(query=urlencode(params)).geturl()


@dataclass
class Browser:
    """A person's browser: one cookie jar, every redirect followed by hand."""

    session: aiohttp.ClientSession
    proxy_url: str
    seen: list[Hop] = field(default_factory=list)

    async def get(self, url: str) -> Hop:
        if url.startswith("/"):
            url = self.proxy_url + url
        async with self.session.get(url, allow_redirects=False) as response:
            hop = Hop(response.status, response.headers, await response.text())
        self.seen.append(hop)
        return hop

    async def post(self, url: str, form: dict[str, str], headers: dict[str, str] | None = None
                   ) -> Hop:
        if url.startswith("/"):
            url = self.proxy_url + url
        async with self.session.post(url, data=form, headers=headers,
                                     allow_redirects=False) as response:
            hop = Hop(response.status, response.headers, await response.text())
        self.seen.append(hop)
        return hop

    async def login(self, connection: str) -> Hop:
        return await self.get(f"/_proxy/login?connection={quote(connection, safe='')}")

    async def authorize(self, connection: str) -> str:
        """Login and consent: the callback address the identity service sends the browser to."""
        login = await self.login(connection)
        assert login.status == 302, login.text
        consent = await self.get(login.location)
        assert consent.status == 302, consent.text
        return consent.location

    async def link(self, connection: str) -> Hop:
        return await self.get(await self.authorize(connection))

    def cookie(self, name: str = "nmbrs_proxy_session") -> str | None:
        for morsel in self.session.cookie_jar:
            if morsel.key == name:
                return morsel.value
        return None


@dataclass
class Env:
    """A proxy in front of a sandbox; the sandbox knows the proxy's redirect URIs."""

    sandbox: Sandbox
    sandbox_url: str
    proxy_url: str
    clock: FakeClock
    app: web.Application
    store_path: Path
    browsers: list[Browser] = field(default_factory=list)

    @property
    def browser(self) -> Browser:
        return self.browsers[0] if self.browsers else self.new_browser()

    def new_browser(self) -> Browser:
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1, as a browser keeps them
        browser = Browser(aiohttp.ClientSession(cookie_jar=jar), self.proxy_url)
        self.browsers.append(browser)
        return browser

    def pages(self) -> str:
        return "\n".join(hop.text for b in self.browsers for hop in b.seen)
