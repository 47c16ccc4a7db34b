"""The settings themselves: frozen dataclasses, one per table of the TOML file, with defaults.

They hold checked values only (the sections build them), so the code that reads them needs no
checks of its own; `Settings` is the whole file, the rest are its tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from proxy.core.egress import DIRECT, EgressPolicy
from proxy.core.listener_tls import ListenerTls
from proxy.core.secret import Secret
from proxy.core.tls import OutboundTls
from proxy.inbound.policy import AccessPolicy, AdminAccess, Client
from proxy.inbound.rules import PathPattern
from proxy.oauth.client_credentials import CLIENT_SECRET_BASIC


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    # Serve requests that present no key even when [[clients]] exist or the bind is not loopback.
    allow_anonymous: bool = False
    # On SIGTERM: how long requests in flight may take to finish before they are cut off.
    shutdown_grace_seconds: float = 25.0
    # A second listener for probes and scrapers only (/_proxy/healthz, readyz, metrics): it
    # forwards nothing, so it may face the network while `host` stays on loopback. None: off.
    ops_host: str = "127.0.0.1"
    ops_port: int | None = None
    # HTTPS on the proxy's listener (tls_cert, tls_key; client certificates with
    # tls_client_ca, tls_client_auth). None: plain HTTP.
    tls: ListenerTls | None = None
    # The ops listener serves HTTPS too, with the same certificate (no client certificates).
    ops_tls: bool = False


@dataclass(frozen=True)
class StoreSettings:
    backend: str = "file"  # "file" | "redis"
    path: Path = Path("state/tokens.json")
    url: str | None = None  # redis:// or rediss://, no password in it
    password: Secret | None = None
    key_prefix: str = "nmbrs-proxy:"
    # A Fernet key: token sets are encrypted at rest (both backends) when it is set.
    encryption_key: Secret | None = None
    lease_seconds: float = 10.0
    timeout_seconds: float = 2.0


@dataclass(frozen=True)
class SessionSettings:
    # None: a key is generated and kept next to the token store.
    secret: Secret | None = None


# RFC 9110 §9.2.2: requests with these methods may be sent again without changing the outcome.
IDEMPOTENT_METHODS: Final = ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
RETRY_STATUSES: Final = (429, 502, 503, 504)


@dataclass(frozen=True)
class RetrySettings:
    """When a request is sent upstream again (proxy.forwarding.retry); count 0 turns retries off."""

    count: int = 2
    deadline_seconds: float = 30.0
    backoff_seconds: float = 0.5
    methods: tuple[str, ...] = IDEMPOTENT_METHODS
    statuses: tuple[int, ...] = RETRY_STATUSES


@dataclass(frozen=True)
class CacheSettings:
    """The opt-in response cache for GET (see proxy.forwarding.cache)."""

    paths: tuple[PathPattern, ...]  # of the decoded path the upstream sees
    ttl_seconds: float = 30.0
    max_entries: int = 1000
    max_body_bytes: int = 256 * 1024


@dataclass(frozen=True)
class ConnectionSettings:
    """One connection; which fields a provider uses is set by `connections._PROVIDERS`."""

    name: str
    provider: str  # "nmbrs", "client_credentials", "nomba" or "nitro"
    prefix: str  # normalised: starts and ends with "/" ("/" or "/acme/")
    upstream: str  # origin, no trailing slash, e.g. "https://api.nmbrsapp.com"
    client_id: str
    client_secret: Secret
    # Authorization code (nmbrs): the identity service (no trailing slash) and the consent.
    issuer: str | None = None
    redirect_uri: str | None = None
    scopes: tuple[str, ...] = ()
    # None: none configured (for nmbrs, a person may enter one on the /_proxy/ page).
    subscription_key: Secret | None = None
    # Machine credentials (client_credentials, nomba, nitro): where tokens come from.
    token_url: str | None = None
    revocation_url: str | None = None
    auth_method: str = CLIENT_SECRET_BASIC
    audience: str | None = None
    # Extra form fields of a client-credentials token request, in the order written. A value
    # given as an env:/file: reference is held as a Secret (masked in logs), a literal is not.
    token_params: tuple[tuple[str, str | Secret], ...] = field(default=(), repr=False)
    account_id: str | None = None  # Nomba: an identifier (sent as a header), not a secret
    # Sent with every forwarded request, replacing a client's own value; may carry a key, so a
    # referenced value is held as a Secret as in token_params.
    headers: tuple[tuple[str, str | Secret], ...] = field(default=(), repr=False)
    refresh_margin_seconds: float = 300.0
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0
    # Tried in order after the gateway refuses `subscription_key` (a key rotated in the portal).
    secondary_subscription_keys: tuple[Secret, ...] = ()
    # Outbound shaping (see proxy.forwarding.shaping): None means no limit of that kind.
    rate_per_second: float | None = None
    burst: int = 1
    max_concurrent: int | None = None
    max_queue: int = 100
    max_wait_seconds: float = 10.0
    retries: RetrySettings = field(default_factory=RetrySettings)
    cache: CacheSettings | None = None
    # How long the identity service honours a refresh token; the page warns near its end.
    refresh_token_lifetime_days: float = 30.0
    # How its upstream and identity service are reached (proxy.config.outbound): through which
    # HTTP proxy, trusting which CAs, with which client certificate.
    egress: EgressPolicy = DIRECT
    tls: OutboundTls = field(default_factory=OutboundTls)

    @property
    def subscription_keys(self) -> tuple[Secret, ...]:
        """Every configured key, the primary first."""
        primary = () if self.subscription_key is None else (self.subscription_key,)
        return (*primary, *self.secondary_subscription_keys)

    @property
    def interactive(self) -> bool:
        """A person links it by consenting; otherwise it has machine credentials."""
        return self.redirect_uri is not None


AUDIT_OFF: Final = "off"
AUDIT_STREAMS: Final = ("stdout", "stderr")


@dataclass(frozen=True)
class AuditSettings:
    # "off", "stdout", "stderr", or the absolute path of a file (appended to)
    destination: str = AUDIT_OFF
    include_query: bool = False  # query values are replaced by "_" unless this is set


LOG_LEVELS: Final = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class LogSettings:
    # None: the level `--log-level` (or NMBRS_PROXY_LOG_LEVEL) gave; set, it wins, and a reload
    # applies a change at once.
    level: str | None = None


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    connections: tuple[ConnectionSettings, ...] = ()
    clients: tuple[Client, ...] = ()
    admin: AdminAccess = field(default_factory=AdminAccess)
    audit: AuditSettings = field(default_factory=AuditSettings)
    logs: LogSettings = field(default_factory=LogSettings)

    def access_policy(self) -> AccessPolicy:
        return AccessPolicy(
            clients=self.clients, allow_anonymous=self.server.allow_anonymous, admin=self.admin
        )

