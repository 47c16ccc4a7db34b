"""The Sandbox object (state shared by both fake hosts), and helpers to serve it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from ._api import NmbrsApi
from ._api_gateway import Maintenance
from ._grants import Grant, GrantStore, expires_in
from ._identity import IdentityService
from ._keys import ACCESS_TOKEN_AUDIENCE, SigningKey
from ._ledger import remember
from ._settings import SandboxClient, SandboxSettings
from ._stats import SandboxStats

DEFAULT_SUB = "sandbox-user"
PLACEHOLDER_ISSUER = "http://nmbrs-sandbox.invalid"


class Sandbox:
    """A fake Nmbrs identity service and API in one aiohttp application.

    All state lives in memory and dies with the object. Tests may replace `clock`,
    clear `token_gate`, set `token_delay` or `api_delay`, start and end a maintenance window,
    and read `stats`. The handlers see it only through the protocols `IdentityHost` and
    `ApiHost`, which say what they use of it, and read those attributes at each request, so a
    replaced one takes effect at once.
    """

    def __init__(
        self,
        settings: SandboxSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        signing_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        self.settings = settings if settings is not None else SandboxSettings()
        self.clock = clock
        self.stats = SandboxStats()
        self.token_gate = asyncio.Event()
        self.token_gate.set()
        self.token_delay = 0.0
        self.api_delay = 0.0  # seconds each API answer is held back after the gateway let it in
        # While set: API requests past the gateway get 503, with this Retry-After (or none).
        self.maintenance: Maintenance | None = None
        self.user_sub = DEFAULT_SUB  # the "person" who consents in the browser flow
        self.base_url: str | None = None  # set by start_sandbox()
        self.signing_key = SigningKey(signing_key)
        self.grants = GrantStore()
        self._clients = {client.client_id: client for client in self.settings.clients}
        remember(*(c.client_secret for c in self.settings.clients),
                 *self.settings.subscription_keys)
        self._last_issuer: str | None = None

    def __repr__(self) -> str:
        return f"Sandbox(base_url={self.base_url!r}, clients={sorted(self._clients)!r})"

    # -- clients -------------------------------------------------------------------------

    @property
    def clients(self) -> Mapping[str, SandboxClient]:
        return MappingProxyType(self._clients)

    def add_client(self, client: SandboxClient) -> None:
        remember(client.client_secret)
        self._clients[client.client_id] = client

    def set_client_secret(self, client_id: str, client_secret: str) -> None:
        """Rotate a client's secret (the old one then answers invalid_client)."""
        remember(client_secret)
        self._clients[client_id] = dataclasses.replace(
            self._clients[client_id], client_secret=client_secret
        )

    # -- issuing -------------------------------------------------------------------------

    def issuer_for(self, request: web.Request) -> str:
        if self.settings.issuer is not None:
            return self.settings.issuer
        self._last_issuer = f"{request.scheme}://{request.host}"
        return self._last_issuer

    def mint(
        self, grant: Grant, *, scopes: Sequence[str], issuer: str, now: float, with_refresh: bool
    ) -> dict[str, Any]:
        """A token response for `grant`: a signed access token, maybe a new refresh token."""
        lifetime = self.settings.access_token_lifetime
        jti = secrets.token_hex(16)
        claims = {
            "iss": issuer,
            "nbf": now,
            "iat": now,
            "exp": now + lifetime,
            "aud": ACCESS_TOKEN_AUDIENCE,
            "scope": list(scopes),
            "client_id": grant.client_id,
            "sub": grant.sub,
            "auth_time": int(grant.auth_time),
            "idp": "local",
            "jti": jti,
        }
        self.grants.issuers.add(issuer)
        self.grants.record_access_token(jti, grant)
        access_token = self.signing_key.sign(claims)
        remember(access_token)
        answer: dict[str, Any] = {
            "access_token": access_token,
            "expires_in": expires_in(lifetime),
            "token_type": "Bearer",
        }
        if with_refresh:
            answer["refresh_token"] = self.grants.new_refresh_token(
                grant, expires_at=now + self.settings.refresh_token_lifetime
            )
        answer["scope"] = " ".join(scopes)
        return answer

    def issue_tokens_for_test(
        self,
        client_id: str,
        scopes: Sequence[str],
        *,
        sub: str = "test-user",
        issuer: str | None = None,
    ) -> dict[str, Any]:
        """Mint a grant without the browser flow; returns a token response body.

        A refresh token is included when `offline_access` is among the scopes. The issuer is,
        in order: the argument, settings.issuer, base_url (set by start_sandbox), the last one
        a request used, and else a placeholder. The fake API accepts a token under any issuer
        this sandbox has minted with (in reality identity service and API are two hosts).
        """
        client = self._clients[client_id]
        if isinstance(scopes, str):
            raise TypeError("scopes must be a sequence of strings, not one string")
        refused = [scope for scope in scopes if scope not in client.allowed_scopes]
        if refused:
            raise ValueError(f"scopes not allowed for {client_id!r}: {refused}")
        issuer = (
            issuer
            or self.settings.issuer
            or self.base_url
            or self._last_issuer
            or PLACEHOLDER_ISSUER
        )
        now = self.clock()
        scopes = tuple(dict.fromkeys(scopes))
        grant = self.grants.new_grant(client_id=client_id, scopes=scopes, sub=sub, auth_time=now)
        return self.mint(
            grant, scopes=scopes, issuer=issuer, now=now, with_refresh="offline_access" in scopes
        )

    # -- revoking (test controls) --------------------------------------------------------

    def revoke_access_tokens(self) -> None:
        """Every access token issued so far fails at the API (though its exp is still ahead)."""
        self.grants.revoke_all_access()

    def revoke_all_grants(self) -> None:
        """Every refresh token issued so far answers invalid_grant (a person must consent
        again). Access tokens keep working until they expire, as JWTs do; call
        revoke_access_tokens() as well to kill them too."""
        self.grants.revoke_all_refresh()

    def describe(self) -> list[str]:
        lines = [f"Nmbrs sandbox listening on {self.base_url}"]
        demo = self.settings.clients[0] if self.settings.clients else None
        if demo is not None:
            lines += [
                f"  client_id:        {demo.client_id}",
                f"  client_secret:    {demo.client_secret}   (fake)",
                f"  redirect_uris:    {' '.join(demo.redirect_uris)}",
            ]
        lines += [f"  subscription key: {key}" for key in sorted(self.settings.subscription_keys)]
        return lines

    # -- maintenance (test controls) ------------------------------------------------------

    def start_maintenance(self, *, retry_after: int | None = None) -> None:
        """The API answers 503 (after the key and rate checks) until `end_maintenance()`."""
        self.maintenance = Maintenance(retry_after)

    def end_maintenance(self) -> None:
        self.maintenance = None

    # -- the application -----------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        IdentityService(self).register(app.router)
        NmbrsApi(self).register(app.router)
        app.router.add_get("/", self._index)
        return app

    async def _index(self, request: web.Request) -> web.Response:
        issuer = self.issuer_for(request)
        return web.Response(
            text=(
                "Nmbrs sandbox (a fake identity service and API for nmbrs-proxy).\n"
                f"discovery: {issuer}/.well-known/openid-configuration\n"
                f"API:       {issuer}/api/companies\n"
            )
        )


class Servable(Protocol):
    """Any of the fakes: the Nmbrs sandbox or a machine-credential one."""

    base_url: str | None

    def app(self) -> web.Application: ...

    def describe(self) -> list[str]:
        """Lines telling a person where the fake listens and which credentials it takes."""
        ...


async def start_sandbox(
    sandbox: Servable, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve `sandbox` on host:port (0 = any free port); returns the runner and base URL."""
    runner = web.AppRunner(sandbox.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    display = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
    base_url = f"http://{display}:{bound_port}"
    sandbox.base_url = base_url
    return runner, base_url


def main_sandbox(
    host: str = "127.0.0.1", port: int = 8081, sandbox: Servable | None = None
) -> None:
    """Serve a fake until interrupted (the CLI's `nmbrs-proxy sandbox`); the Nmbrs one by
    default. What it prints comes from the fake's `describe()`."""

    async def serve() -> None:
        served = sandbox if sandbox is not None else Sandbox()
        runner, _ = await start_sandbox(served, host, port)
        sys.stdout.write("\n".join(served.describe()) + "\n")
        sys.stdout.flush()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
