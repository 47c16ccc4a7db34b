"""The fake Nmbrs REST API (api.nmbrsapp.com shape) behind a fake API-management gateway.

Per request under /api: subscription key, then rate limit (`_api_gateway`), then maintenance
(503), then bearer token (here), then route, then scope (`_api_routes`). Every request is
recorded in the sandbox stats, with the time it arrived.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import jwt
from aiohttp import web
from multidict import CIMultiDict

from ._api_gateway import Gateway, GatewayHost, Maintenance
from ._api_routes import AccessClaims, ApiProblem, answer
from ._grants import GrantStore
from ._keys import SigningKey
from ._stats import RecordedRequest, SandboxStats

_CLOCK_SKEW = 1.0  # seconds of leeway on nbf/iat only; exp is exact


class ApiHost(GatewayHost, Protocol):
    """What the API reads of the sandbox, at each request (tests change it)."""

    stats: SandboxStats
    maintenance: Maintenance | None
    api_delay: float  # seconds each answer is held back after the gateway let it in
    signing_key: SigningKey
    grants: GrantStore  # the issuers minted with, and the access tokens' state


def _invalid_token(description: str) -> ApiProblem:
    challenge = f'Bearer error="invalid_token", error_description="{description}"'
    return ApiProblem(401, description, "InvalidToken", headers={"WWW-Authenticate": challenge})


class NmbrsApi:
    def __init__(self, host: ApiHost) -> None:
        self.host = host
        self._gateway = Gateway(host)

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", "/api", self.dispatch)
        router.add_route("*", "/api/{tail:.*}", self.dispatch)

    async def dispatch(self, request: web.Request) -> web.Response:
        stats = self.host.stats
        stats.api_requests += 1
        record = RecordedRequest(
            request.method, request.raw_path, CIMultiDict(request.headers), at=self.host.clock()
        )
        stats.api_log.append(record)
        try:
            response = await self._handle(request)
        except ApiProblem as problem:
            response = problem.response()
        cache_control = self.host.settings.api_cache_control
        if cache_control is not None and response.status == 200:
            response.headers["Cache-Control"] = cache_control
        record.status = response.status
        stats.api_statuses[response.status] += 1
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        rejected = self._gateway.check(request)
        if rejected is not None:
            return rejected
        if self.host.maintenance is not None:
            return self.host.maintenance.response()
        if self.host.api_delay:
            await asyncio.sleep(self.host.api_delay)
        return await answer(request, self._authenticate(request))

    # -- bearer token --------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> AccessClaims:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiProblem(
                401, "No bearer token.", "Unauthorized", headers={"WWW-Authenticate": "Bearer"}
            )
        host = self.host
        try:
            claims = host.signing_key.verify_signature(token)
        except jwt.InvalidTokenError as exc:
            raise _invalid_token("The token is not valid") from exc
        issuer = claims["iss"]
        expected = host.settings.issuer
        if (expected is not None and issuer != expected) or issuer not in host.grants.issuers:
            raise _invalid_token("The issuer is invalid")
        times = [claims[name] for name in ("exp", "nbf", "iat")]
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in times):
            raise _invalid_token("The token lifetime is invalid")
        exp, nbf, iat = (float(t) for t in times)
        now = host.clock()
        if now >= exp:
            raise _invalid_token("The token is expired")
        if nbf > now + _CLOCK_SKEW or iat > now + _CLOCK_SKEW:
            raise _invalid_token("The token is not valid yet")
        jti = str(claims["jti"])
        why = host.grants.access_token_problem(jti)
        if why is not None:
            raise _invalid_token(why.rstrip("."))
        scope = claims["scope"]
        scopes = frozenset(scope.split() if isinstance(scope, str) else map(str, scope))
        return AccessClaims(str(claims["sub"]), str(claims["client_id"]), scopes, jti)
