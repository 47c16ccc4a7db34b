"""Talking HTTP to an identity service: where its endpoints are, and the POST every grant makes.

`Discovery` reads (and caches) the issuer's OpenID configuration for the authorization-code
grant; `post` is the one way any grant calls a token or revocation endpoint, so that a network
failure or a timeout is the same transient `GrantError` for every provider. The grants in
`proxy.tokens.grants` decide what to send and what an answer means.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from cachetools import TTLCache

from proxy.core.egress import DIRECT, EgressPolicy
from proxy.oauth.protocol import Endpoints, GrantError, parse_discovery

# The grant clients' records keep the logger name they always had.
log = logging.getLogger("proxy.tokens.grants")

Clock = Callable[[], float]
_FORM = "application/x-www-form-urlencoded"
_PROXY_AUTH_REQUIRED: Final = 407
# How long a discovery document is used before it is read again.
DISCOVERY_TTL_SECONDS: Final = 3600.0


@dataclass(frozen=True)
class Reach:
    """How the identity service is reached: through which HTTP proxy (chosen per URL, by
    no_proxy too) and verified with which TLS context (None: the system's CAs)."""

    egress: EgressPolicy = DIRECT
    tls: ssl.SSLContext | None = field(default=None, compare=False)

    def options(self, url: str) -> dict[str, Any]:
        """aiohttp's request arguments for `url`."""
        options: dict[str, Any] = {}
        if self.tls is not None:
            options["ssl"] = self.tls
        if self.egress is DIRECT:
            return options
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        via = self.egress.proxy_for(parts.scheme, parts.hostname or "", port)
        if via is not None:
            options["proxy"] = via.shown
            if via.authorization is not None:
                options["proxy_headers"] = {"Proxy-Authorization": via.authorization.reveal()}
        return options


DIRECT_REACH: Final = Reach()


class Discovery:
    """The issuer's endpoints, kept for `ttl` seconds and fetched again after a failure.

    When a fetch fails, the last good document serves on (the next call tries again), so a
    blip at the identity service does not stop token refreshes. `invalidate()` drops the cached
    copy: the grant calls it when the token endpoint could not be reached or was not found.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        issuer: str,
        *,
        timeout: aiohttp.ClientTimeout,
        clock: Clock = time.time,
        ttl: float = DISCOVERY_TTL_SECONDS,
        reach: Reach = DIRECT_REACH,
    ) -> None:
        self._session = session
        self._reach = reach
        self.issuer = issuer
        self._timeout = timeout
        self._cached: TTLCache[str, Endpoints] = TTLCache(maxsize=1, ttl=ttl, timer=clock)
        self._last_good: Endpoints | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def endpoints(self) -> Endpoints:
        endpoints = self._cached.get(self.issuer)
        if endpoints is not None:
            return endpoints
        async with self._lock:
            endpoints = self._cached.get(self.issuer)
            if endpoints is not None:
                return endpoints
            try:
                endpoints = await self._fetch()
            except GrantError as exc:
                if self._last_good is None:
                    raise
                log.warning("discovery of %s failed (%s); using the last document",
                            self.issuer, exc.description)
                return self._last_good
            self._cached[self.issuer] = self._last_good = endpoints
            return endpoints

    def invalidate(self) -> None:
        self._cached.clear()

    async def _fetch(self) -> Endpoints:
        self.fetches += 1
        url = f"{self.issuer}/.well-known/openid-configuration"
        try:
            async with self._session.get(
                url, headers={"Accept": "application/json"}, timeout=self._timeout,
                **self._reach.options(url),
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GrantError("temporarily_unavailable",
                             _describe(exc, "discovery", self._reach.options(url))) from None
        if status != 200:
            raise GrantError(
                "temporarily_unavailable" if status >= 500 else "invalid_discovery",
                f"the discovery document answered HTTP {status}",
                status=status,
            )
        return parse_discovery(_json(raw), self.issuer)


@dataclass(frozen=True)
class Reply:
    """What an endpoint answered: status, the JSON body (None when empty or not JSON), Date."""

    status: int
    body: Any
    date: str | None


async def post(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
    form: Mapping[str, str] | None = None,
    json_body: Mapping[str, str] | None = None,
    what: str = "token endpoint",
    reach: Reach = DIRECT_REACH,
) -> Reply:
    """POST a form or a JSON body; a network failure or timeout is a transient GrantError."""
    sent = {"Accept": "application/json", **headers}
    if form is not None:
        sent["Content-Type"] = _FORM
    options = reach.options(url)
    try:
        async with session.post(
            url,
            data=None if form is None else dict(form),
            json=None if json_body is None else dict(json_body),
            headers=sent,
            timeout=timeout,
            allow_redirects=False,
            **options,
        ) as response:
            raw = await response.read()
            status = response.status
            date = response.headers.get("Date")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise GrantError("temporarily_unavailable", _describe(exc, what, options)) from None
    if status == _PROXY_AUTH_REQUIRED and "proxy" in options:  # a plain URL, through a proxy
        raise GrantError("temporarily_unavailable",
                         f"the {what} could not be reached: the egress proxy "
                         f"{options['proxy']} refused (407 Proxy Authentication Required)")
    return Reply(status, _json(raw) if raw else None, date)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _describe(exc: BaseException, what: str, options: Mapping[str, Any]) -> str:
    """What went wrong, naming the egress proxy (never its credentials) when one was used."""
    proxy = options.get("proxy")
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return (f"the {what} could not be reached: the egress proxy {proxy} refused "
                f"({exc.status} {exc.message})")
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"the {what} could not be reached: no connection to the egress proxy {proxy}"
    if isinstance(exc, TimeoutError):
        via = f" (through the egress proxy {proxy})" if proxy else ""
        return f"the {what} did not answer in time{via}"
    return f"the {what} could not be reached ({type(exc).__name__})"
