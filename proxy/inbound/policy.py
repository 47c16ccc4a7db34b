"""Who may use the proxy, and for what: pure inbound access decisions, no I/O.

Every request falls in one area, by its (decoded) path:

- OPEN      `/_proxy/healthz`, `/_proxy/readyz`: served to anyone (probes);
- CALLBACK  the path of a configured redirect URI: the admin networks only, no key (the
            browser coming back from the identity service cannot add one; what protects the
            callback is the state and PKCE verifier in the encrypted, HttpOnly cookie that only
            an admitted `/_proxy/login` hands out);
- ADMIN     everything else under `/_proxy` (the page, login, and whatever is added there):
            the admin networks, plus the admin key when one is configured;
- FORWARD   the rest, which goes to an upstream: the clients.

A client is identified by its key, presented as `X-Proxy-Key: <key>` or, when that header is
absent, `Authorization: Bearer <key>` (the admin key may also come as the password of HTTP
Basic, so a browser can ask for it). Keys are only known by their SHA-256; the presented key's
digest is compared with every client's in constant time (hmac.compare_digest), all of them,
whichever matches.

Or by its TLS client certificate (proxy.inbound.certificates): a client naming a key and a
certificate needs both. A request with a key is identified by the key; one without, by the
first client naming no key (in the file's order) whose certificate it presents.

Denials: 401 when no key was presented where one is needed, or the key is unknown; 403 when
the caller is known (or anonymous callers are allowed) but the source address, connection,
method or path is not allowed for it.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Final

from proxy.core.errors import Forbidden, Unauthorized
from proxy.inbound.certificates import PeerCertificate
from proxy.inbound.rules import Rule, RuleSet

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK: Final[tuple[IPNetwork, ...]] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
READ_ONLY_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
KEY_HEADER: Final = "X-Proxy-Key"
KEY_PREFIX: Final = "npk_"
CLIENT_CHALLENGE: Final = 'Bearer realm="nmbrs-proxy"'
ADMIN_CHALLENGE: Final = 'Basic realm="nmbrs-proxy admin", charset="UTF-8"'

PROXY_PATH: Final = "/_proxy"
OPEN_PATHS: Final = frozenset({"/_proxy/healthz", "/_proxy/readyz"})


class Area(enum.Enum):
    OPEN = "open"
    CALLBACK = "callback"
    ADMIN = "admin"
    FORWARD = "forward"


def area_of(path: str, callback_paths: Collection[str]) -> Area:
    """The area of a decoded request path (the form aiohttp's router matches)."""
    if path in OPEN_PATHS:
        return Area.OPEN
    if path in callback_paths:
        return Area.CALLBACK
    if path == PROXY_PATH or path.startswith(PROXY_PATH + "/"):
        return Area.ADMIN
    return Area.FORWARD


# --- who ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    name: str
    key_sha256: bytes | None = field(default=None, repr=False)  # the digest, 32 bytes
    cidrs: tuple[IPNetwork, ...] = ()  # empty: any source address
    connections: frozenset[str] | None = None  # None: every connection
    rules: tuple[Rule, ...] | None = None  # None: every method and path
    read_only: bool = False
    # Its share of the upstreams (proxy.inbound.quotas): None means no limit of that kind.
    rate_per_second: float | None = None
    burst: int = 1
    max_concurrent: int | None = None
    # Its TLS client certificate (None: not identified by one): the SHA-256 of the DER
    # certificate, 32 bytes, and/or its subject as `certificates.canonical_subject` writes it.
    cert_sha256: bytes | None = None
    cert_subject: str | None = None

    @functools.cached_property
    def rule_set(self) -> RuleSet | None:
        """Its rules compiled (None: every method and path)."""
        return None if self.rules is None else RuleSet(self.rules)

    @property
    def by_certificate(self) -> bool:
        return self.cert_sha256 is not None or self.cert_subject is not None

    def certificate_matches(self, peer: PeerCertificate | None) -> bool:
        return peer is not None and peer.is_named(self.cert_sha256, self.cert_subject)


@dataclass(frozen=True)
class AdminAccess:
    key_sha256: bytes | None = field(default=None, repr=False)  # None: the networks suffice
    cidrs: tuple[IPNetwork, ...] = LOOPBACK  # empty: nobody


@dataclass(frozen=True)
class AccessPolicy:
    clients: tuple[Client, ...] = ()
    allow_anonymous: bool = False
    admin: AdminAccess = AdminAccess()

    @property
    def anonymous_allowed(self) -> bool:
        """Requests without a key are served when no clients are configured, or when asked to."""
        return self.allow_anonymous or not self.clients

    @functools.cached_property
    def by_certificate(self) -> bool:
        """Whether some client is identified by its certificate (else none is looked at)."""
        return any(client.by_certificate for client in self.clients)

    @functools.cached_property
    def _known_keys(self) -> dict[str, Client]:
        return {}

    def client_with_key(self, key: str) -> Client | None:
        """`identify(self.clients, key)`, remembering the keys that named a client: a client
        sends the same key with every request. Only keys that matched are kept, one per client
        at most (no two strings have one digest), so the memory is bounded; an unknown key is
        hashed and compared with every client's every time."""
        known = self._known_keys
        client = known.get(key)
        if client is None:
            client = identify(self.clients, key)
            if client is not None:
                known[key] = client
        return client


# --- keys -----------------------------------------------------------------------------------


def new_key() -> str:
    """A new random key (256 bits), recognisable by its prefix (and so redacted in logs)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key: what the configuration holds."""
    return key_digest(key).hex()


def presented_key(headers: Mapping[str, str], *, basic: bool = False) -> str | None:
    """The key a request presents: `X-Proxy-Key`, else `Authorization: Bearer`, else (when
    `basic`) the password of `Authorization: Basic`. None when it presents none."""
    key = headers.get(KEY_HEADER)
    if key is not None:
        return key.strip()
    scheme, _, credentials = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if basic and scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""  # presented, but no key can be read from it: a wrong key
        return decoded.partition(":")[2]
    return None


def identify(clients: Collection[Client], key: str) -> Client | None:
    """The client whose key this is. Every client's digest is compared, in constant time."""
    digest = key_digest(key)
    found = None
    for client in clients:
        if client.key_sha256 is not None and hmac.compare_digest(digest, client.key_sha256):
            found = client
    return found


def identify_by_certificate(clients: Collection[Client], peer: PeerCertificate) -> Client | None:
    """The first client without a key that `peer` is the certificate of."""
    return next((c for c in clients if c.key_sha256 is None and c.certificate_matches(peer)), None)


def key_matches(key: str | None, expected: bytes) -> bool:
    return key is not None and hmac.compare_digest(key_digest(key), expected)


# --- where from -----------------------------------------------------------------------------


def source_address(remote: str | None) -> IPAddress | None:
    """The peer address as an IP (an IPv4-mapped IPv6 address as IPv4); None if not an IP."""
    if not remote:
        return None
    return _parse_source(remote)


@functools.lru_cache(maxsize=4096)  # the same few peers send request after request
def _parse_source(remote: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(address: IPAddress | None, networks: Collection[IPNetwork]) -> bool:
    return address is not None and any(address in network for network in networks)


def is_loopback_host(host: str) -> bool:
    """Does listening on `host` keep the proxy on this machine?"""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- decisions ------------------------------------------------------------------------------


def identify_caller(
    policy: AccessPolicy, key: str | None, peer: PeerCertificate | None = None
) -> Client | None:
    """The client a request to be forwarded acts for (None: anonymous), or Unauthorized.

    `peer` is the connection's verified client certificate (None: it presented none).
    """
    if not policy.clients:
        return None
    if key is not None:
        client = policy.client_with_key(key)
        if client is None:
            raise Unauthorized(
                "the key is not valid", headers={"WWW-Authenticate": CLIENT_CHALLENGE}
            )
        if client.by_certificate and not client.certificate_matches(peer):
            raise Unauthorized(
                "this key is valid only with its client's TLS certificate",
                headers={"WWW-Authenticate": CLIENT_CHALLENGE},
            )
        return client
    if peer is not None and policy.by_certificate:
        client = identify_by_certificate(policy.clients, peer)
        if client is not None:
            return client
    if policy.anonymous_allowed:
        return None
    certificate = (" (or connect with a client certificate this proxy knows)"
                   if policy.by_certificate else "")
    raise Unauthorized(
        f"this proxy needs a key: send it as {KEY_HEADER} or Authorization: Bearer"
        f"{certificate}",
        headers={"WWW-Authenticate": CLIENT_CHALLENGE},
    )


def check_forward(
    client: Client,
    *,
    source: IPAddress | None,
    connection: str | None,
    method: str,
    path: str,
) -> None:
    """Forbidden unless `client` may send this request.

    `connection` is the one whose prefix matches (None: none does, and the answer will be 404
    once the caller is known), `path` the decoded path the upstream will see.
    """
    if client.cidrs and not in_networks(source, client.cidrs):
        raise Forbidden(f"client {client.name!r} may not call from this address")
    if connection is None:
        return
    if client.connections is not None and connection not in client.connections:
        raise Forbidden(f"client {client.name!r} may not use connection {connection!r}",
                        connection=connection)
    if client.read_only and method not in READ_ONLY_METHODS:
        raise Forbidden(f"client {client.name!r} is read-only: {method} is not allowed",
                        connection=connection)
    rules = client.rule_set
    if rules is not None and not rules.allows(method, path):
        raise Forbidden(f"client {client.name!r} may not {method} this path",
                        connection=connection)


def authorize_forward(
    policy: AccessPolicy,
    *,
    key: str | None,
    source: IPAddress | None,
    connection: str | None,
    method: str,
    path: str,
) -> Client | None:
    """identify_caller, then check_forward for a known client: the whole decision."""
    client = identify_caller(policy, key)
    if client is not None:
        check_forward(client, source=source, connection=connection, method=method, path=path)
    return client


def authorize_admin(policy: AccessPolicy, *, key: str | None, source: IPAddress | None) -> None:
    """The proxy's own pages and actions: the admin networks, and the admin key if one is set."""
    admin = policy.admin
    if not in_networks(source, admin.cidrs):
        raise Forbidden("the proxy's own pages are not served to this address")
    if admin.key_sha256 is not None and not key_matches(key, admin.key_sha256):
        raise Unauthorized(
            "the proxy's own pages need the admin key "
            f"({KEY_HEADER}, Authorization: Bearer, or the password of HTTP Basic)",
            headers={"WWW-Authenticate": ADMIN_CHALLENGE},
        )


def authorize_callback(policy: AccessPolicy, *, source: IPAddress | None) -> None:
    """The OAuth callback: the admin networks (the state in the session cookie does the rest)."""
    if not in_networks(source, policy.admin.cidrs):
        raise Forbidden("the login callback is not served to this address")


def bind_problem(host: str, policy: AccessPolicy) -> str | None:
    """Why listening on `host` with this policy is refused; None when it is fine."""
    if is_loopback_host(host) or policy.clients or policy.allow_anonymous:
        return None
    return (
        f"{host!r} is not a loopback address and no [[clients]] are configured, so anyone who "
        "can reach the proxy would act as the linked accounts: add [[clients]] with keys, or "
        "set server.allow_anonymous = true if something else guards the port"
    )


def exposure_warning(host: str, policy: AccessPolicy) -> str | None:
    """What to warn about at start: a reachable proxy that serves callers without a key."""
    if is_loopback_host(host) or not policy.allow_anonymous:
        return None
    return (
        f"server.allow_anonymous is set and the proxy listens on {host!r}: requests without a "
        "key are served, and whoever can reach the port acts as the linked accounts"
    )
