"""A configured connection at run time: its settings, grant, token manager and fixed headers,
and what keeps its traffic within the upstream's quota (shaper, key ring, response cache).

Which grant a connection gets is looked up by its provider in `GRANTS`, one small builder per
provider; everything else about a connection is the same whatever the provider.
"""

from __future__ import annotations

import dataclasses
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from proxy.config import ConnectionSettings
from proxy.core.errors import SubscriptionKeyRequired
from proxy.core.secret import plain
from proxy.forwarding.cache import ResponseCache
from proxy.forwarding.credentials import KeyRing
from proxy.forwarding.shaping import Shaper
from proxy.forwarding.upstream import Origin, Route
from proxy.oauth.nomba import ACCOUNT_HEADER
from proxy.telemetry.metrics import ConnectionMetrics, ConnectionReport, Metrics
from proxy.tokens.endpoints import DIRECT_REACH, Discovery, Reach
from proxy.tokens.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    Grant,
    NitroGrant,
    NombaGrant,
)
from proxy.tokens.health import DAY, assess
from proxy.tokens.manager import TokenManager
from proxy.tokens.store import TokenStore

Clock = Callable[[], float]
SUBSCRIPTION_KEY_HEADER: Final = "X-Subscription-Key"

# Headers the upstream expects that a legacy client may not send; a client's own value wins.
_PROVIDER_DEFAULT_HEADERS: Final[Mapping[str, Mapping[str, str]]] = {
    "nmbrs": {"Accept": "application/json"},
    "nomba": {"Accept": "application/json"},
    "nitro": {"Accept": "application/json"},
}
# Providers whose API gateway refuses every call without a subscription key.
_PROVIDERS_WITH_KEY: Final = frozenset({"nmbrs"})
# What a key entered on the page may look like: visible ASCII, no spaces (it becomes a header).
_SUBSCRIPTION_KEY: Final = re.compile(r"[\x21-\x7e]{1,256}")


def valid_subscription_key(text: str) -> bool:
    return _SUBSCRIPTION_KEY.fullmatch(text) is not None


@dataclass(frozen=True)
class GrantContext:
    """What every grant builder gets besides the connection's settings."""

    session: aiohttp.ClientSession
    timeout: aiohttp.ClientTimeout
    clock: Clock
    reach: Reach = DIRECT_REACH  # through which proxy, trusting which CAs


def _nmbrs(settings: ConnectionSettings, ctx: GrantContext) -> Grant:
    assert settings.issuer is not None  # required for this provider by the configuration
    assert settings.redirect_uri is not None
    return AuthorizationCodeGrant(
        ctx.session,
        Discovery(ctx.session, settings.issuer, timeout=ctx.timeout, clock=ctx.clock,
                  reach=ctx.reach),
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        redirect_uri=settings.redirect_uri,
        scopes=settings.scopes,
        timeout=ctx.timeout,
        clock=ctx.clock,
        reach=ctx.reach,
    )


def _machine(settings: ConnectionSettings, ctx: GrantContext) -> dict[str, Any]:
    """The arguments every machine-credential grant takes."""
    assert settings.token_url is not None  # every machine provider has one, or a default
    return {
        "session": ctx.session,
        "token_url": settings.token_url,
        "client_id": settings.client_id,
        "client_secret": settings.client_secret,
        "timeout": ctx.timeout,
        "clock": ctx.clock,
        "reach": ctx.reach,
    }


def _client_credentials(settings: ConnectionSettings, ctx: GrantContext) -> Grant:
    return ClientCredentialsGrant(
        **_machine(settings, ctx),
        auth_method=settings.auth_method,
        scopes=settings.scopes,
        audience=settings.audience,
        extra=tuple((name, plain(value)) for name, value in settings.token_params),
        revocation_url=settings.revocation_url,
    )


def _nomba(settings: ConnectionSettings, ctx: GrantContext) -> Grant:
    assert settings.account_id is not None  # required for this provider
    return NombaGrant(**_machine(settings, ctx), account_id=settings.account_id)


def _nitro(settings: ConnectionSettings, ctx: GrantContext) -> Grant:
    return NitroGrant(**_machine(settings, ctx))


GRANTS: Final[Mapping[str, Callable[[ConnectionSettings, GrantContext], Grant]]] = {
    "nmbrs": _nmbrs,
    "client_credentials": _client_credentials,
    "nomba": _nomba,
    "nitro": _nitro,
}


def fixed_headers(settings: ConnectionSettings) -> dict[str, str]:
    """Headers sent with every request besides the bearer token and the subscription key,
    replacing a client's own: Nomba's account id, and the configured `headers`."""
    out: dict[str, str] = {}
    if settings.account_id is not None:
        out[ACCOUNT_HEADER] = settings.account_id
    out.update((name, plain(value)) for name, value in settings.headers)
    return out


@dataclass
class UpstreamCounters:
    upstream_429: int = 0  # 429 answers the upstream gave
    retries: int = 0  # attempts sent again after a 429/5xx or a failed connect


@dataclass
class Connection:
    settings: ConnectionSettings
    route: Route  # where forwarded requests go, and how (directly, or via an HTTP proxy)
    base_path: str  # the upstream URL's path ("" or e.g. "/v1"), put before every target
    grant: Grant
    manager: TokenManager
    timeout: aiohttp.ClientTimeout
    shaper: Shaper
    metrics: ConnectionMetrics
    default_headers: Mapping[str, str] = field(default_factory=dict)
    # Fixed headers sent with every request besides the bearer token and subscription key
    # (see `fixed_headers`).
    static_credentials: dict[str, str] = field(default_factory=dict, repr=False)
    keys: KeyRing | None = None
    cache: ResponseCache | None = None
    counters: UpstreamCounters = field(default_factory=UpstreamCounters)
    requires_key: bool = False  # the upstream's gateway refuses every call without one
    # The names `credentials()` sends, lower case: a client's own fields of these names are
    # dropped (proxy.forwarding.headers.upstream_request_lines).
    credential_names: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.credential_names = frozenset(
            {"authorization", SUBSCRIPTION_KEY_HEADER.lower(),
             *(name.lower() for name in self.static_credentials)})

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def origin(self) -> Origin:
        return self.route.origin

    @property
    def consent(self) -> AuthorizationCodeGrant | None:
        """The grant a person links by consenting; None for machine credentials."""
        return self.grant if isinstance(self.grant, AuthorizationCodeGrant) else None

    @property
    def gateway_keyed(self) -> bool:
        """A gateway checks a subscription key first: its 401s are not about the token."""
        return self.keys is not None or self.manager.subscription_key is not None

    def subscription_key(self) -> str | None:
        """The key requests carry now: one entered on the page wins over the configured ones."""
        stored = self.manager.subscription_key
        if stored is not None:
            return stored
        return None if self.keys is None else self.keys.value(self.keys.current)

    def key_index(self) -> int | None:
        """Which configured key is in use, for rotation; None when it is the page's (or none)."""
        if self.keys is None or self.manager.subscription_key is not None:
            return None
        return self.keys.current

    def credentials(self, access_token: str, key: int | None = None) -> dict[str, str]:
        """The bearer token, and the subscription key: the one entered on the page, else the
        configured key number `key` (default: the current one)."""
        credentials = {"Authorization": "Bearer " + access_token, **self.static_credentials}
        stored = self.manager.subscription_key
        if stored is not None:
            credentials[SUBSCRIPTION_KEY_HEADER] = stored
        elif self.keys is not None:
            index = self.keys.current if key is None else key
            credentials[SUBSCRIPTION_KEY_HEADER] = self.keys.value(index)
        elif self.requires_key:
            raise SubscriptionKeyRequired(
                f"connection {self.name!r} has no subscription key: enter it at /_proxy/",
                connection=self.name,
            )
        return credentials

    def report(self, now: float) -> ConnectionReport:
        status = self.manager.status()
        has_key = not self.requires_key or self.subscription_key() is not None
        assessment = assess(
            status,
            now=now,
            refresh_token_lifetime=self.settings.refresh_token_lifetime_days * DAY,
            has_subscription_key=has_key,
            interactive=self.consent is not None,
        )
        return ConnectionReport(self.name, status, assessment, now,
                                learned_rate=self.shaper.learned_rate())

    def quota_stats(self) -> dict[str, Any]:
        """Counters of shaping, retries, key rotation and caching (no secrets), all int, and
        `learned_rate`: requests/s learned from the upstream's 429s (None: nothing learned)."""
        stats: dict[str, Any] = {
            **dataclasses.asdict(self.counters), **dataclasses.asdict(self.shaper.counters),
        }
        stats["waiting"] = self.shaper.waiting
        stats["learned_rate"] = self.shaper.learned_rate()
        stats["key_rotations"] = 0 if self.keys is None else self.keys.rotations
        if self.cache is not None:
            cached = dataclasses.asdict(self.cache.counters)
            stats.update({f"cache_{name}": value for name, value in cached.items()})
            stats["cache_entries"] = len(self.cache)
        return stats


def upstream_route(settings: ConnectionSettings, tls: ssl.SSLContext | None) -> Route:
    """How the connection's API is reached: its egress proxy (if any) and TLS context."""
    origin = Origin.parse(settings.upstream)
    via = settings.egress.proxy_for(origin.scheme, origin.host, origin.port)
    return Route(origin, via, tls)


def build_connection(
    settings: ConnectionSettings,
    *,
    session: aiohttp.ClientSession,
    store: TokenStore,
    clock: Clock,
    metrics: Metrics | None = None,
    keep: Connection | None = None,
) -> Connection:
    """The connection `settings` describe; with `keep` (a reload changed it, its identity is the
    same: proxy.config.changes.same_identity), around the grant and token manager of `keep`, and
    going on from the rate its shaper learned (and its pause) when the upstream is the same."""
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=settings.connect_timeout_seconds,
        sock_read=settings.read_timeout_seconds,
    )
    # One context for the API and the identity service (None: the system's CAs, shared).
    tls = None if settings.tls.is_default else settings.tls.context()
    if metrics is None:  # a connection outside a served app (the login command)
        metrics = Metrics(process=False)
    if keep is not None:
        grant, manager = keep.grant, keep.manager
    else:
        reach = Reach(settings.egress, tls)
        grant = GRANTS[settings.provider](settings, GrantContext(session, timeout, clock, reach))
        manager = TokenManager(
            settings.name,
            grant,
            store,
            refresh_margin=settings.refresh_margin_seconds,
            clock=clock,
            events=metrics,
        )
    shaper = Shaper(
        settings.name,
        rate_per_second=settings.rate_per_second,
        burst=settings.burst,
        max_concurrent=settings.max_concurrent,
        max_queue=settings.max_queue,
        max_wait_seconds=settings.max_wait_seconds,
    )
    if keep is not None and keep.settings.upstream == settings.upstream:
        shaper.take_over(keep.shaper)  # the quota is the upstream's, not the settings'
    keys = settings.subscription_keys
    return Connection(
        settings=settings,
        route=upstream_route(settings, tls),
        base_path=urlsplit(settings.upstream).path.rstrip("/"),
        grant=grant,
        manager=manager,
        timeout=timeout,
        shaper=shaper,
        metrics=metrics.connection(settings.name),
        default_headers=_PROVIDER_DEFAULT_HEADERS.get(settings.provider, {}),
        static_credentials=fixed_headers(settings),
        keys=KeyRing(settings.name, keys) if keys else None,
        cache=None if settings.cache is None else ResponseCache(settings.cache),
        requires_key=settings.provider in _PROVIDERS_WITH_KEY,
    )
