"""What the machine-credential fakes share: clients, issued tokens, the token-endpoint wrapper.

Tokens here are opaque random strings kept by their SHA-256, each with its client, scopes,
audience, account and expiry, so the fake APIs can check them the way a real server looks a
token up. The three fakes (`_client_credentials`, `_nomba`, `_nitro`) are thin on top.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from aiohttp import web
from multidict import CIMultiDict

from ._client_auth import secret_matches
from ._grants import fingerprint
from ._ledger import remember
from ._stats import RecordedRequest, SandboxStats, recorded_token_call


@dataclass(frozen=True)
class MachineClient:
    """A client of a machine-credential fake; which fields count depends on the fake."""

    client_id: str
    client_secret: str = field(repr=False)
    # Client credentials: the one way this client must authenticate, and what it may ask for.
    auth_method: str = "client_secret_basic"
    scopes: frozenset[str] = frozenset()
    default_scopes: tuple[str, ...] = ()
    # Nomba: the account these credentials belong to (the `accountId` header).
    account_id: str | None = None

    def __post_init__(self) -> None:
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret must not be empty")
        if self.auth_method not in {"client_secret_basic", "client_secret_post"}:
            raise ValueError(f"unknown auth_method {self.auth_method!r}")
        if not set(self.default_scopes) <= self.scopes:
            raise ValueError("default_scopes must be among scopes")


DEMO_MACHINE_CLIENT = MachineClient(
    client_id="machine-demo*$1",
    client_secret="m4chine:secret%+demo",  # noqa: S106 - a fake's credentials, printed on purpose
    scopes=frozenset({"items.read", "items.write"}),
    default_scopes=("items.read",),
    account_id="01234567-demo-account",
)


@dataclass(frozen=True)
class MachineSettings:
    """How a machine-credential fake behaves. Lifetimes are seconds (fractions for tests)."""

    clients: tuple[MachineClient, ...] = (DEMO_MACHINE_CLIENT,)
    access_token_lifetime: float = 3600.0
    refresh_token_lifetime: float = 86400.0  # Nomba's refresh tokens
    # Client credentials: when set, every token request must name this audience, and the API
    # accepts only tokens for it; when None, an audience parameter is refused.
    audience: str | None = None
    # Client credentials: form fields every token request must carry with these values.
    required_params: tuple[tuple[str, str], ...] = ()
    # Nitro: answer in RFC 6749 snake_case instead of camelCase.
    snake_case: bool = False

    def __post_init__(self) -> None:
        ids = [client.client_id for client in self.clients]
        if len(ids) != len(set(ids)):
            raise ValueError("client ids must be unique")
        for name in ("access_token_lifetime", "refresh_token_lifetime"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


@dataclass
class IssuedToken:
    client_id: str
    expires_at: float
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    account_id: str | None = None
    refresh: str | None = None  # fingerprint of the refresh token issued with it
    revoked: bool = False


@dataclass
class RefreshRecord:
    client_id: str
    account_id: str | None
    expires_at: float
    access: str  # fingerprint of the access token issued with it
    used: bool = False


@dataclass(frozen=True)
class Issued:
    access_token: str = field(repr=False)
    expires_at: float
    refresh_token: str | None = field(default=None, repr=False)


class MachineSandbox:
    """Base of the machine-credential fakes. Tests may replace `clock`, clear `token_gate`,
    set `token_delay`, and read `stats`."""

    #: what the fake's index page calls itself
    kind = "machine credentials"

    def __init__(
        self, settings: MachineSettings | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings if settings is not None else MachineSettings()
        self.clock = clock
        self.stats = SandboxStats()
        self.token_gate = asyncio.Event()
        self.token_gate.set()
        self.token_delay = 0.0
        self.base_url: str | None = None  # set by start_sandbox()
        self._clients = {client.client_id: client for client in self.settings.clients}
        remember(*(client.client_secret for client in self.settings.clients))
        self._access: dict[str, IssuedToken] = {}
        self._refresh: dict[str, RefreshRecord] = {}

    def __repr__(self) -> str:
        clients = sorted(self._clients)
        return f"{type(self).__name__}(base_url={self.base_url!r}, clients={clients!r})"

    @property
    def clients(self) -> Mapping[str, MachineClient]:
        return MappingProxyType(self._clients)

    def add_client(self, client: MachineClient) -> None:
        """Register a client, or replace one (e.g. a rotated secret: the old one is refused)."""
        remember(client.client_secret)
        self._clients[client.client_id] = client

    # -- issuing and checking --------------------------------------------------------------

    def issue(
        self,
        client: MachineClient,
        *,
        scopes: tuple[str, ...] = (),
        audience: str | None = None,
        with_refresh: bool = False,
        whole_seconds: bool = False,
    ) -> Issued:
        """A new access token (and refresh token); `whole_seconds` floors the expiry, for an
        answer that states it to the second."""
        now = self.clock()
        expires_at = now + self.settings.access_token_lifetime
        if whole_seconds:
            expires_at = float(math.floor(expires_at))
        access = secrets.token_urlsafe(32)
        remember(access)
        record = IssuedToken(
            client.client_id, expires_at, scopes, audience, account_id=client.account_id
        )
        self._access[fingerprint(access)] = record
        refresh = None
        if with_refresh:
            refresh = secrets.token_urlsafe(32)
            remember(refresh)
            record.refresh = fingerprint(refresh)
            self._refresh[record.refresh] = RefreshRecord(
                client.client_id,
                client.account_id,
                now + self.settings.refresh_token_lifetime,
                fingerprint(access),
            )
        return Issued(access, expires_at, refresh)

    def token_problem(self, token: str) -> tuple[IssuedToken | None, str | None]:
        """The token's record and None, or (record or None, why it is not honoured)."""
        record = self._access.get(fingerprint(token))
        if record is None:
            return None, "The token is unknown."
        if record.revoked:
            return record, "The token has been revoked."
        if self.clock() >= record.expires_at:
            return record, "The token is expired."
        return record, None

    def refresh_record(self, token: str) -> RefreshRecord | None:
        return self._refresh.get(fingerprint(token))

    def revoke(self, token: str) -> IssuedToken | None:
        """Revoke an access token and the refresh token issued with it; None if unknown."""
        record = self._access.get(fingerprint(token))
        if record is None:
            return None
        record.revoked = True
        if record.refresh is not None and record.refresh in self._refresh:
            self._refresh[record.refresh].used = True
        return record

    def revoke_access_tokens(self) -> None:
        """Test control: every access token issued so far fails at the API from now on."""
        for record in self._access.values():
            record.revoked = True

    def is_revoked(self, token: str) -> bool:
        record = self._access.get(fingerprint(token))
        return record is not None and record.revoked

    # -- serving ---------------------------------------------------------------------------

    #: the paths a person needs, shown by describe()
    endpoints: tuple[tuple[str, str], ...] = ()

    def describe(self) -> list[str]:
        lines = [f"{self.kind} sandbox listening on {self.base_url}"]
        lines += [f"  {name + ':':<18}{self.base_url}{path}" for name, path in self.endpoints]
        for client in self.settings.clients:
            lines += [
                f"  client_id:        {client.client_id}",
                f"  client_secret:    {client.client_secret}   (fake)",
            ]
            if client.account_id is not None:
                lines.append(f"  account id:       {client.account_id}")
        return lines

    def app(self) -> web.Application:
        app = web.Application()
        self.register(app.router)
        app.router.add_get("/", self._index)
        return app

    def register(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    async def _index(self, _request: web.Request) -> web.Response:
        return web.Response(text=f"A fake {self.kind} token endpoint and API for nmbrs-proxy.\n")

    async def token_call(
        self,
        request: web.Request,
        kind: str,
        handle: Callable[[web.Request, bytes], Awaitable[web.Response]],
    ) -> web.Response:
        """Run a token-endpoint handler with the shared bookkeeping: counted by `kind`,
        logged, held by `token_gate` and `token_delay`. Handlers count their own errors."""
        body = await request.read()
        return await recorded_token_call(self, request, kind, lambda: handle(request, body))

    def record_api(self, request: web.Request) -> RecordedRequest:
        self.stats.api_requests += 1
        record = RecordedRequest(request.method, request.raw_path, CIMultiDict(request.headers))
        self.stats.api_log.append(record)
        return record

    def api_done(self, record: RecordedRequest, response: web.Response) -> web.Response:
        record.status = response.status
        self.stats.api_statuses[response.status] += 1
        return response


def bearer(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def check_secret(client: MachineClient | None, secret: str) -> bool:
    """Constant-time comparison, also when the client is unknown."""
    return secret_matches(client.client_secret if client is not None else None, secret)
