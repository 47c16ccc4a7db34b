"""What a changed configuration file changes: which of its keys a running proxy can take on at
once, and which wait for a restart. Pure: two Settings in, two lists of keys out.

Live: who may call what (`[[clients]]`, `[admin]`, `server.allow_anonymous`) and what the audit
line records (`[audit]`). A restart: where the proxy listens (`server.host`, `server.port`, the
ops listener), the grace period it was started with, the token store, the session key, and
(for now) the connections, whose routes and token managers are built at start.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from proxy.config.schema import Settings

# Keys of [server] that the access policy reads (the rest belong to the listener).
_LIVE_SERVER_KEYS = frozenset({"allow_anonymous"})


@dataclass(frozen=True)
class Changes:
    live: tuple[str, ...]  # changed keys that a reload applies
    restart: tuple[str, ...]  # changed keys that only a restart applies

    @property
    def any(self) -> bool:
        return bool(self.live or self.restart)


def _changed_fields(old: object, new: object, section: str) -> list[str]:
    return [f"{section}.{f.name}" for f in dataclasses.fields(old)  # type: ignore[arg-type]
            if getattr(old, f.name) != getattr(new, f.name)]


def changes(old: Settings, new: Settings) -> Changes:
    """The keys that differ between `old` (running) and `new` (the file now), sorted by kind."""
    live: list[str] = []
    restart: list[str] = []
    for key in _changed_fields(old.server, new.server, "server"):
        (live if key.removeprefix("server.") in _LIVE_SERVER_KEYS else restart).append(key)
    restart += _changed_fields(old.store, new.store, "store")
    restart += _changed_fields(old.session, new.session, "session")
    if old.connections != new.connections:
        old_by_name = {c.name: c for c in old.connections}
        new_by_name = {c.name: c for c in new.connections}
        names = sorted(old_by_name.keys() | new_by_name.keys())
        differing = [f"connections.{name}" for name in names
                     if old_by_name.get(name) != new_by_name.get(name)]
        restart += differing or ["connections"]  # none differs: only their order changed
    if old.clients != new.clients:
        live.append("clients")
    if old.admin != new.admin:
        live.append("admin")
    live += _changed_fields(old.audit, new.audit, "audit")
    return Changes(live=tuple(live), restart=tuple(restart))


def applied(running: Settings, new: Settings) -> Settings:
    """The settings a reload runs with: the live sections of `new`, the rest as running."""
    server = dataclasses.replace(running.server, allow_anonymous=new.server.allow_anonymous)
    return dataclasses.replace(running, server=server, clients=new.clients, admin=new.admin,
                               audit=new.audit)
