"""Typed application state shared by the handlers.

A reload (proxy.ops.reload) replaces the settings and the connections in one synchronous step
(`use`); a request reads the connection it serves once and keeps it to the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from proxy.config import Settings
from proxy.forwarding.connection import Connection
from proxy.forwarding.upstream import Pool
from proxy.tokens.store import TokenStore

log = logging.getLogger(__name__)


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
    # Each token manager's background refresher, by connection name.
    refreshers: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # Managers a reload took out of service, stopping once nothing of theirs is pending.
    retiring: set[asyncio.Task[None]] = field(default_factory=set)
    _subscribed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.use(self.settings, self.connections)

    def use(self, settings: Settings, connections: Mapping[str, Connection]) -> None:
        """Serve with these from the next request on."""
        self.settings = settings
        self.connections = dict(connections)
        self.by_prefix = {c.settings.prefix: c for c in self.connections.values()}
        self.prefixes = frozenset(self.by_prefix)
        for name in self.connections:
            if name not in self._subscribed:
                # One subscription per name, to whichever manager serves it then.
                self.store.subscribe(name, self._changed(name))
                self._subscribed.add(name)

    def _changed(self, name: str) -> Callable[[int | None], None]:
        def notice(version: int | None) -> None:
            connection = self.connections.get(name)
            if connection is not None:
                connection.manager.notice_change(version)

        return notice

    def start_refresher(self, connection: Connection) -> None:
        self.refreshers[connection.name] = asyncio.create_task(
            connection.manager.run_refresher(), name=f"refresher:{connection.name}")

    def retire(self, connection: Connection) -> None:
        """Stop the manager of a connection a reload removed or replaced, in the background,
        without cutting a refresh short (TokenManager.retire)."""
        refresher = self.refreshers.pop(connection.name, None)
        task = asyncio.create_task(connection.manager.retire(refresher),
                                   name=f"retire:{connection.name}")
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)


PROXY_STATE = web.AppKey("proxy_state", ProxyState)
