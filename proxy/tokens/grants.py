"""Grant clients: the I/O half of talking to a token endpoint.

Each grant receives its HTTP session, clock and settings; the protocol rules it follows live in
`proxy.oauth.protocol` as pure functions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import aiohttp
from cachetools import TTLCache

from proxy.oauth.protocol import (
    Endpoints,
    GrantError,
    client_basic_auth,
    parse_discovery,
    parse_token_error,
    parse_token_response,
)
from proxy.secret import Secret
from proxy.tokens.model import TokenSet

log = logging.getLogger(__name__)

Clock = Callable[[], float]
_FORM = "application/x-www-form-urlencoded"
# How long a discovery document is used before it is read again.
DISCOVERY_TTL_SECONDS: Final = 3600.0


class Grant(Protocol):
    """How a connection obtains a new token set from the one it has (None: it has none)."""

    # True when only a person can start the grant (consent); False for machine credentials.
    @property
    def interactive(self) -> bool: ...

    async def renew(self, current: TokenSet | None) -> TokenSet: ...


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
    ) -> None:
        self._session = session
        self._issuer = issuer
        self._timeout = timeout
        self._cached: TTLCache[str, Endpoints] = TTLCache(maxsize=1, ttl=ttl, timer=clock)
        self._last_good: Endpoints | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def endpoints(self) -> Endpoints:
        endpoints = self._cached.get(self._issuer)
        if endpoints is not None:
            return endpoints
        async with self._lock:
            endpoints = self._cached.get(self._issuer)
            if endpoints is not None:
                return endpoints
            try:
                endpoints = await self._fetch()
            except GrantError as exc:
                if self._last_good is None:
                    raise
                log.warning("discovery of %s failed (%s); using the last document",
                            self._issuer, exc.description)
                return self._last_good
            self._cached[self._issuer] = self._last_good = endpoints
            return endpoints

    def invalidate(self) -> None:
        self._cached.clear()

    async def _fetch(self) -> Endpoints:
        self.fetches += 1
        url = f"{self._issuer}/.well-known/openid-configuration"
        try:
            async with self._session.get(
                url, headers={"Accept": "application/json"}, timeout=self._timeout
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise GrantError("temporarily_unavailable", _describe(exc, "discovery")) from None
        if status != 200:
            raise GrantError(
                "temporarily_unavailable" if status >= 500 else "invalid_discovery",
                f"the discovery document answered HTTP {status}",
                status=status,
            )
        return parse_discovery(_json(raw), self._issuer)


async def post_form(
    session: aiohttp.ClientSession,
    url: str,
    form: Mapping[str, str],
    *,
    client_id: str,
    client_secret: Secret,
    timeout: aiohttp.ClientTimeout,
) -> tuple[int, Any]:
    """POST a form to a token or revocation endpoint with client_secret_basic auth."""
    headers = {
        "Authorization": client_basic_auth(client_id, client_secret.reveal()),
        "Content-Type": _FORM,
        "Accept": "application/json",
    }
    try:
        async with session.post(url, data=dict(form), headers=headers, timeout=timeout) as response:
            raw = await response.read()
            return response.status, _json(raw) if raw else None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise GrantError("temporarily_unavailable", _describe(exc, "token endpoint")) from None


class AuthorizationCodeGrant:
    """Nmbrs-style: a person consents once, then single-use refresh tokens keep it alive."""

    interactive = True

    def __init__(
        self,
        session: aiohttp.ClientSession,
        discovery: Discovery,
        *,
        client_id: str,
        client_secret: Secret,
        scopes: tuple[str, ...],
        timeout: aiohttp.ClientTimeout,
        clock: Clock,
    ) -> None:
        self._session = session
        self.discovery = discovery
        self.client_id = client_id
        self._client_secret = client_secret
        self.scopes = scopes
        self._timeout = timeout
        self._clock = clock

    async def renew(self, current: TokenSet | None) -> TokenSet:
        if current is None or current.refresh_token is None:
            raise GrantError("invalid_grant", "no refresh token is stored: consent is needed")
        form = {"grant_type": "refresh_token", "refresh_token": current.refresh_token}
        return await self._token_request(form, previous=current)

    async def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str) -> TokenSet:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        return await self._token_request(form, previous=None)

    async def _token_request(self, form: dict[str, str], *, previous: TokenSet | None) -> TokenSet:
        endpoints = await self.discovery.endpoints()
        requested_at = self._clock()
        try:
            status, body = await post_form(
                self._session,
                endpoints.token,
                form,
                client_id=self.client_id,
                client_secret=self._client_secret,
                timeout=self._timeout,
            )
        except GrantError:
            self.discovery.invalidate()  # the endpoint may have moved: read the document again
            raise
        if status != 200:
            if status == 404:
                self.discovery.invalidate()
            raise parse_token_error(status, body)
        return parse_token_response(
            body, requested_at=requested_at, previous=previous, requested_scopes=self.scopes
        )


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _describe(exc: BaseException, what: str) -> str:
    if isinstance(exc, TimeoutError):
        return f"the {what} did not answer in time"
    return f"the {what} could not be reached ({type(exc).__name__})"
