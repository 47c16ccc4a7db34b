"""What a changed configuration file changes: which of its keys a running proxy can take on at
once, and which wait for a restart. Pure: two Settings in, two lists of keys out.

Live: who may call what (`[[clients]]`, `[admin]`, `server.allow_anonymous`), what the audit
line records (`[audit]`), the log level (`[logs] level`), the connections (added, removed,
changed) and the listener's certificate, key and client CAs (`server.tls_cert`, `tls_key`,
`tls_client_ca`: a path or a file's bytes). A restart: where the proxy listens (`server.host`,
`server.port`, the ops listener, `server.ops_tls`), whether it listens with TLS, whether it
asks for client certificates and how (`tls_client_ca` added or removed, `tls_client_auth`; with
such a change the certificate waits for the restart too), the grace period it was started with,
the token store and the session key. (A connection whose OAuth callback path the running proxy
does not serve yet waits for a restart too: the reload decides that, proxy.ops.reload.)

A changed connection keeps its token manager, and so its token set and its refresher, when its
identity (`same_identity`) is unchanged: no new login and no extra token call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from proxy.config.schema import ConnectionSettings, Settings
from proxy.core.listener_tls import ListenerTls

# Keys of [server] that the access policy reads (the rest belong to the listener).
_LIVE_SERVER_KEYS = frozenset({"allow_anonymous"})
# What a connection's grant and token manager are made of: who it is at the identity service,
# and how its tokens are fetched and renewed.
IDENTITY_FIELDS = (
    "provider", "client_id", "client_secret", "issuer", "redirect_uri", "scopes", "token_url",
    "revocation_url", "auth_method", "audience", "token_params", "account_id",
    "refresh_margin_seconds", "connect_timeout_seconds", "read_timeout_seconds", "egress", "tls",
)


def same_identity(old: ConnectionSettings, new: ConnectionSettings) -> bool:
    """Whether `new` may keep the token manager (and token set) made for `old`."""
    return old.name == new.name and all(
        getattr(old, name) == getattr(new, name) for name in IDENTITY_FIELDS)


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


def _tls_keys(old: ListenerTls | None, new: ListenerTls | None) -> tuple[str, ...]:
    if old is None or new is None:
        turned = new if old is None else old
        return () if turned is None else tuple(name for name, _ in turned.files())
    return old.changed(new)


def tls_is_live(old: ListenerTls | None, new: ListenerTls | None) -> bool:
    """Whether a running listener can take on `new` (a new certificate, key or CA bundle),
    rather than only a restart (TLS on or off, client certificates asked for or not, or
    asked for otherwise)."""
    return (old is not None and new is not None
            and (old.client_ca is None) == (new.client_ca is None)
            and old.client_auth == new.client_auth)


def changes(old: Settings, new: Settings) -> Changes:
    """The keys that differ between `old` (running) and `new` (the file now), sorted by kind."""
    live: list[str] = []
    restart: list[str] = []
    for key in _changed_fields(old.server, new.server, "server"):
        if key == "server.tls":
            tls_keys = [f"server.{name}" for name in _tls_keys(old.server.tls, new.server.tls)]
            (live if tls_is_live(old.server.tls, new.server.tls) else restart).extend(tls_keys)
            continue
        (live if key.removeprefix("server.") in _LIVE_SERVER_KEYS else restart).append(key)
    restart += _changed_fields(old.store, new.store, "store")
    restart += _changed_fields(old.session, new.session, "session")
    if old.connections != new.connections:
        old_by_name = {c.name: c for c in old.connections}
        new_by_name = {c.name: c for c in new.connections}
        names = sorted(old_by_name.keys() | new_by_name.keys())
        differing = [f"connections.{name}" for name in names
                     if old_by_name.get(name) != new_by_name.get(name)]
        live += differing or ["connections"]  # none differs: only their order changed
    if old.clients != new.clients:
        live.append("clients")
    if old.admin != new.admin:
        live.append("admin")
    live += _changed_fields(old.audit, new.audit, "audit")
    live += _changed_fields(old.logs, new.logs, "logs")
    return Changes(live=tuple(live), restart=tuple(restart))


def applied(running: Settings, new: Settings,
            connections: tuple[ConnectionSettings, ...] | None = None) -> Settings:
    """The settings a reload runs with: the live sections of `new`, the rest as running;
    `connections`, when given, are the ones the reload could apply (default: all of `new`'s)."""
    tls = new.server.tls if tls_is_live(running.server.tls, new.server.tls) else running.server.tls
    server = dataclasses.replace(running.server, allow_anonymous=new.server.allow_anonymous,
                                 tls=tls)
    return dataclasses.replace(
        running, server=server, clients=new.clients, admin=new.admin, audit=new.audit,
        logs=new.logs,
        connections=new.connections if connections is None else connections)
