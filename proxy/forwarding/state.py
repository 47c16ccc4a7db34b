"""Typed application state shared by the handlers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from proxy.config import Settings
from proxy.forwarding.connection import Connection
from proxy.forwarding.upstream import Pool
from proxy.tokens.store import TokenStore


@dataclass
class ProxyState:
    settings: Settings
    store: TokenStore
    session: aiohttp.ClientSession  # the proxy's own calls: identity services
    pool: Pool  # forwarded requests
    connections: dict[str, Connection]
    clock: Callable[[], float]
    by_prefix: dict[str, Connection] = field(init=False)
    prefixes: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.by_prefix = {c.settings.prefix: c for c in self.connections.values()}
        self.prefixes = frozenset(self.by_prefix)


PROXY_STATE = web.AppKey("proxy_state", ProxyState)
