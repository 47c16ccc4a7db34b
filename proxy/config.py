"""Settings: frozen dataclasses read from a TOML file; every problem is collected, none is silent.

The loader (`load`) resolves `env:NAME` and `file:PATH` references for any string value, checks
types and unknown keys, and raises one `ConfigError` listing every problem with its dotted key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from proxy.secret import Secret


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class StoreSettings:
    backend: str = "file"
    path: Path = Path("state/tokens.json")


@dataclass(frozen=True)
class SessionSettings:
    # None: a key is generated and kept next to the token store.
    secret: Secret | None = None


@dataclass(frozen=True)
class ConnectionSettings:
    name: str
    provider: str  # "nmbrs"
    prefix: str  # normalised: starts and ends with "/" ("/" or "/acme/")
    upstream: str  # origin, no trailing slash, e.g. "https://api.nmbrsapp.com"
    client_id: str
    client_secret: Secret
    issuer: str  # no trailing slash
    redirect_uri: str
    scopes: tuple[str, ...]
    subscription_key: Secret | None = None
    refresh_margin_seconds: float = 300.0
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    connections: tuple[ConnectionSettings, ...] = ()
