"""Reloading the configuration file while the proxy serves: SIGHUP, `POST /_proxy/api/reload`.

The file is read and checked whole first; an invalid file changes nothing (the proxy keeps
serving as before) and every problem is reported with its key. A valid one is applied in one
step between two requests: the access door (clients, admin, anonymous access), the audit
settings and the connections are replaced whole, so a request in flight finishes with the
settings (and the connection) it started with and the next one sees the new ones. A changed
connection keeps its token manager when its identity is the same; a removed or replaced
manager stops once no refresh of its is in flight (TokenManager.retire). The listener's TLS
certificate, key and client CAs are read again with the file (a file renewed in place is a
change too) and handed to the handshakes that start after the step (established connections
keep theirs; proxy.core.listener_tls). What only a restart applies (proxy.config.changes) is
reported as such, and the rest is applied anyway. Reloads run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from yarl import URL

from proxy.config import ConfigError, Settings
from proxy.config.changes import applied, changes, same_identity
from proxy.config.schema import ConnectionSettings
from proxy.core.listener_tls import ListenerCertificates
from proxy.forwarding.connection import Connection, build_connection
from proxy.forwarding.observe import METRICS
from proxy.forwarding.state import PROXY_STATE, ProxyState
from proxy.inbound import csrf
from proxy.inbound.access import DOOR, QUOTAS, Door
from proxy.ops.consent import callback_path
from proxy.ops.responses import api_problem
from proxy.ops.session import CONSENT
from proxy.telemetry.audit import AUDITING
from proxy.telemetry.logs import set_level
from proxy.tokens.store import StoreError

log = logging.getLogger(__name__)

# Reads the configuration file again: the new Settings, or ConfigError with every problem.
SettingsSource = Callable[[], Settings]
# Set by `serve --workers N` in each worker: the supervisor, which passes a SIGHUP to them all.
SUPERVISOR_ENV: Final = "NMBRS_PROXY_SUPERVISOR_PID"
# The TLS contexts the listeners serve with (proxy.server sets it when TLS is on).
LISTENER_CERTIFICATES: Final = web.AppKey("listener_certificates", ListenerCertificates)


def door_for(settings: Settings) -> Door:
    """The access middleware's plain data, compiled from the configuration (at start and at
    every reload)."""
    return Door(
        policy=settings.access_policy(),
        callback_paths=frozenset(
            URL(c.redirect_uri).path_safe or "/"
            for c in settings.connections
            if c.redirect_uri is not None
        ),
        connections={c.prefix: c.name for c in settings.connections},
    )


@dataclass(frozen=True)
class Outcome:
    result: str  # "applied", "unchanged", "invalid" or "failed"
    applied: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"result": self.result, "applied": list(self.applied),
                "needs_restart": list(self.needs_restart), "errors": list(self.errors)}


class Reloader:
    """Applies the configuration file to one running app; one reload at a time."""

    def __init__(self, source: SettingsSource | None) -> None:
        self.source = source
        self._lock = asyncio.Lock()

    async def reload(self, app: web.Application) -> Outcome:
        async with self._lock:
            outcome = await self._reload(app)
        app[METRICS].config_reloads.labels(outcome.result).inc()
        if outcome.result == "invalid":
            for error in outcome.errors:
                log.error("reload refused: %s", error)
            log.error("the configuration file was not applied: the proxy keeps its settings",
                      extra={"event": "reload", "result": outcome.result})
        elif outcome.result == "failed":
            log.error("reload failed: %s", "; ".join(outcome.errors),
                      extra={"event": "reload", "result": outcome.result})
        else:
            if outcome.needs_restart:
                log.warning("changed, applied at the next restart: %s",
                            ", ".join(outcome.needs_restart))
            log.info("configuration reloaded: %s", ", ".join(outcome.applied) or "no change",
                     extra={"event": "reload", "result": outcome.result,
                            "applied": list(outcome.applied),
                            "needs_restart": list(outcome.needs_restart)})
        return outcome

    async def _reload(self, app: web.Application) -> Outcome:
        if self.source is None:
            return Outcome("failed", errors=("this proxy was not started from a file",))
        try:
            new = await asyncio.to_thread(self.source)
        except ConfigError as exc:
            return Outcome("invalid", errors=tuple(exc.problems))
        state = app[PROXY_STATE]
        served = app[CONSENT].callback_paths
        usable, waiting = _usable_connections(state.settings.connections, new.connections, served)
        running = applied(state.settings, new, usable)
        found = changes(state.settings, running)
        restart = (*changes(running, new).restart, *waiting)
        if not found.live:
            return Outcome("unchanged", needs_restart=restart)
        return await self._apply(app, running, found.live, restart)

    async def _apply(self, app: web.Application, running: Settings, live: tuple[str, ...],
                     restart: tuple[str, ...]) -> Outcome:
        """Everything that may fail first, then the settings in one step."""
        state = app[PROXY_STATE]
        use_certificates = None
        certificates = app.get(LISTENER_CERTIFICATES)
        tls = running.server.tls
        if certificates is not None and tls is not None and tls != certificates.tls:
            try:  # the files were checked when the file was read; they may have changed since
                use_certificates = await asyncio.to_thread(certificates.prepare, tls)
            except ValueError as exc:
                return Outcome("failed", errors=(f"server.{exc}",))
        try:
            connections, fresh, leaving = await _connections(app, state, running.connections)
        except StoreError as exc:
            return Outcome("failed", errors=(f"the token store cannot be read: {exc}",))
        try:
            await app[AUDITING].switch(running.audit)
        except OSError as exc:
            return Outcome("failed", errors=(f"audit.destination: cannot open it ({exc})",))
        # One synchronous step: the next request sees all of it, none sees a part.
        if use_certificates is not None:
            use_certificates()
        app[DOOR].door = door_for(running)
        app[QUOTAS].configure(running.clients)
        if running.logs != state.settings.logs:
            set_level(running.logs.level)
        state.use(running, connections)
        for connection in leaving:
            state.retire(connection)
        for connection in fresh:
            state.start_refresher(connection)
        return Outcome("applied", applied=live, needs_restart=restart)


def _usable_connections(
    running: tuple[ConnectionSettings, ...], new: tuple[ConnectionSettings, ...],
    served: frozenset[str],
) -> tuple[tuple[ConnectionSettings, ...], tuple[str, ...]]:
    """The connections a reload can serve (the new ones, but where a callback path is not
    routed yet: the running one, or none), and the keys of those that wait for a restart."""
    before = {c.name: c for c in running}
    usable: list[ConnectionSettings] = []
    waiting: list[str] = []
    for connection in new:
        if connection.redirect_uri is None or callback_path(connection.redirect_uri) in served:
            usable.append(connection)
            continue
        waiting.append(f"connections.{connection.name}.redirect_uri")
        if connection.name in before:
            usable.append(before[connection.name])
    return tuple(usable), tuple(waiting)


async def _connections(
    app: web.Application, state: ProxyState, wanted: tuple[ConnectionSettings, ...],
) -> tuple[dict[str, Connection], list[Connection], list[Connection]]:
    """The connections to serve, those of them to start, and the running ones they replace.

    An unchanged connection stays as it is; a changed one with the same identity is rebuilt
    around its token manager (its token set, its refresher); any other is new, and its token
    set is loaded from the store before anything is swapped.
    """
    running = state.connections
    connections: dict[str, Connection] = {}
    fresh: list[Connection] = []
    for settings in wanted:
        before = running.get(settings.name)
        if before is not None and before.settings == settings:
            connections[settings.name] = before
            continue
        keep = before if before is not None and same_identity(before.settings, settings) else None
        connection = build_connection(settings, session=state.session, store=state.store,
                                      clock=state.clock, metrics=app[METRICS], keep=keep)
        if keep is None:
            await connection.manager.load()
            fresh.append(connection)
        connections[settings.name] = connection
    kept_managers = {id(c.manager) for c in connections.values()}
    leaving = [c for c in running.values() if id(c.manager) not in kept_managers]
    return connections, fresh, leaving


RELOADER: Final = web.AppKey("reloader", Reloader)


def tell_supervisor(environ: Mapping[str, str] = os.environ) -> None:
    """In a worker of `serve --workers N`: have the supervisor pass the reload to them all."""
    pid = environ.get(SUPERVISOR_ENV)
    if pid is not None and pid.isascii() and pid.isdigit():
        os.kill(int(pid), signal.SIGHUP)


async def reload_api(request: web.Request) -> web.Response:
    """`POST /_proxy/api/reload`: the outcome as JSON; an invalid file as problem+json (422)."""
    if not csrf.same_origin(request.headers, host=request.host):
        return api_problem(403, "forbidden", "Refused", "This request came from another site.")
    outcome = await request.app[RELOADER].reload(request.app)
    if outcome.result == "invalid":
        return api_problem(422, "invalid-configuration", "The configuration file is invalid",
                        "Nothing was applied: the proxy keeps serving with its settings.",
                        errors=list(outcome.errors))
    if outcome.result == "failed":
        return api_problem(409, "reload-failed", "The configuration could not be applied",
                        "; ".join(outcome.errors))
    tell_supervisor()
    return web.json_response(outcome.to_json())


def setup_reload(app: web.Application, source: SettingsSource | None) -> None:
    app[RELOADER] = Reloader(source)
    app.router.add_post("/_proxy/api/reload", reload_api)
