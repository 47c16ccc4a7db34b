"""A configured connection at run time: its settings, grant, token manager and fixed headers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from proxy.config import ConnectionSettings
from proxy.tokens.grants import AuthorizationCodeGrant, Discovery
from proxy.tokens.manager import TokenManager
from proxy.tokens.store import TokenStore

# Headers the upstream expects that a legacy client may not send; a client's own value wins.
_PROVIDER_DEFAULT_HEADERS: dict[str, dict[str, str]] = {
    "nmbrs": {"Accept": "application/json"},
}


@dataclass
class Connection:
    settings: ConnectionSettings
    grant: AuthorizationCodeGrant
    manager: TokenManager
    timeout: aiohttp.ClientTimeout
    default_headers: dict[str, str] = field(default_factory=dict)
    # Fixed credentials sent with every request besides the bearer token.
    static_credentials: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.settings.name

    def credentials(self, access_token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {access_token}", **self.static_credentials}


def build_connection(
    settings: ConnectionSettings,
    *,
    session: aiohttp.ClientSession,
    store: TokenStore,
    clock: Callable[[], float],
) -> Connection:
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=settings.connect_timeout_seconds,
        sock_read=settings.read_timeout_seconds,
    )
    grant = AuthorizationCodeGrant(
        session,
        Discovery(session, settings.issuer, timeout=timeout),
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        scopes=settings.scopes,
        timeout=timeout,
        clock=clock,
    )
    manager = TokenManager(
        settings.name, grant, store, refresh_margin=settings.refresh_margin_seconds, clock=clock
    )
    static: dict[str, str] = {}
    if settings.subscription_key is not None:
        static["X-Subscription-Key"] = settings.subscription_key.reveal()
    return Connection(
        settings=settings,
        grant=grant,
        manager=manager,
        timeout=timeout,
        default_headers=_PROVIDER_DEFAULT_HEADERS.get(settings.provider, {}),
        static_credentials=static,
    )
