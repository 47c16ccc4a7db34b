"""Which HTTP proxy, if any, a request to a given host goes through. Pure: no sockets.

The rules are curl's, the ones every operator already knows:
- `https_proxy` / `HTTPS_PROXY` for https URLs, `http_proxy` / `HTTP_PROXY` for http ones,
  `all_proxy` / `ALL_PROXY` for both; the lower-case name wins when both are set.
- `no_proxy` / `NO_PROXY`: a comma-separated list. `*` alone matches every host. A name matches
  itself and every name below it (`example.com` and `.example.com` both match
  `api.example.com`, not `badexample.com`). An IP address matches itself, a CIDR every address
  in it (only for hosts written as addresses: no name is resolved). `host:port` matches that
  port only. Case does not matter; IPv6 addresses may be written in brackets.
- The configuration wins over the environment: `proxy = "http://user:pass@host:port"` sends
  everything of its connection through that proxy, `proxy = "none"` nothing.

Only `http://` proxies: a TLS upstream is reached through `CONNECT` (the tunnel carries TLS end
to end), a plain one with absolute-form requests.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote, urlsplit

from proxy.core.secret import Secret

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressConfigError(ValueError):
    """A proxy URL or a no_proxy entry that cannot be used; the message names no secret."""


@dataclass(frozen=True)
class EgressProxy:
    """An HTTP proxy: where it is, and the Basic credentials its URL carried (if any)."""

    host: str
    port: int
    authorization: Secret | None = field(default=None, repr=False)  # "Basic …"

    @property
    def shown(self) -> str:
        """The proxy as logs and errors name it: never with its credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __repr__(self) -> str:
        return f"EgressProxy({self.shown!r})"


def parse_proxy_url(text: str) -> EgressProxy:
    """`http://[user:password@]host[:port]`, the form curl and the *_proxy variables take;
    a bare `host:port` means http, as it does for curl."""
    text = text.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise EgressConfigError("not a proxy URL (http://[user:password@]host[:port])") from None
    if parts.scheme.lower() != "http":
        raise EgressConfigError(
            f"only http:// proxies are supported, not {parts.scheme}:// (a TLS upstream is "
            "still reached with TLS end to end, through CONNECT)")
    if not parts.hostname:
        raise EgressConfigError("the proxy URL names no host")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise EgressConfigError("a proxy URL has no path, query or fragment")
    authorization = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        authorization = Secret("Basic " + base64.b64encode(pair.encode()).decode("ascii"))
    return EgressProxy(parts.hostname, port or 80, authorization)


@dataclass(frozen=True)
class _Entry:
    name: str | None = None  # a host name, lower case, without leading dot
    network: IPNetwork | None = None
    port: int | None = None

    def matches(self, host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
                port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return address is not None and address in self.network
        assert self.name is not None
        return host == self.name or host.endswith("." + self.name)


@dataclass(frozen=True)
class NoProxy:
    """A parsed no_proxy list."""

    everything: bool = False
    entries: tuple[_Entry, ...] = ()

    @classmethod
    def parse(cls, text: str) -> NoProxy:
        entries: list[_Entry] = []
        for raw in text.split(","):
            item = raw.strip().lower()
            if not item:
                continue
            if item == "*":
                return cls(everything=True)
            entries.append(_entry(item))
        return cls(entries=tuple(entries))

    def matches(self, host: str, port: int) -> bool:
        if self.everything:
            return True
        host = host.lower().strip("[]").rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        return any(entry.matches(host, address, port) for entry in self.entries)


def _entry(item: str) -> _Entry:
    port: int | None = None
    if item.startswith("["):  # [v6] or [v6]:port
        address, _, rest = item[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], item)
        item = address
    elif item.count(":") == 1:  # name:port or v4:port (a bare v6 address has several)
        item, _, number = item.partition(":")
        port = _port(number, item)
    try:
        network = ipaddress.ip_network(item, strict=False)
    except ValueError:
        name = item.lstrip(".").rstrip(".")
        if not name or "/" in name:
            raise EgressConfigError(f"no_proxy: {item!r} is not a host, address or CIDR") from None
        return _Entry(name=name, port=port)
    return _Entry(network=network, port=port)


def _port(text: str, item: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise EgressConfigError(f"no_proxy: {item!r} has no valid port")
    return int(text)


@dataclass(frozen=True)
class EgressPolicy:
    """How one connection reaches its hosts: `proxy_for(scheme, host, port)`.

    Made once, when the configuration is read: an explicit proxy (or none) from the file, or
    the environment's variables as they were then.
    """

    http: EgressProxy | None = None
    https: EgressProxy | None = None
    no_proxy: NoProxy = NoProxy()
    source: str = "none"  # "none", "config" or "environment": what the page and API show

    def proxy_for(self, scheme: str, host: str, port: int) -> EgressProxy | None:
        chosen = self.https if scheme == "https" else self.http
        if chosen is None or self.no_proxy.matches(host, port):
            return None
        return chosen


DIRECT: Final = EgressPolicy()


def configured_policy(setting: str | Secret | None, environ: Mapping[str, str]) -> EgressPolicy:
    """The policy a `proxy` setting gives: None (not set) reads the environment, "none" goes
    direct, anything else is the proxy's URL."""
    if setting is None:
        return policy_from_environment(environ)
    text = setting.reveal() if isinstance(setting, Secret) else setting
    if text.strip().lower() == "none":
        return DIRECT
    proxy = parse_proxy_url(text)
    return EgressPolicy(http=proxy, https=proxy, source="config")


def policy_from_environment(environ: Mapping[str, str]) -> EgressPolicy:
    def variable(name: str) -> str | None:
        value = environ.get(name.lower())
        if value is None:
            value = environ.get(name.upper())
        return value.strip() or None if value is not None else None

    every = variable("all_proxy")
    http = variable("http_proxy") or every
    https = variable("https_proxy") or every
    if http is None and https is None:
        return DIRECT
    return EgressPolicy(
        http=None if http is None else _from_variable(http, "http_proxy"),
        https=None if https is None else _from_variable(https, "https_proxy"),
        no_proxy=NoProxy.parse(variable("no_proxy") or ""),
        source="environment",
    )


def _from_variable(text: str, name: str) -> EgressProxy:
    try:
        return parse_proxy_url(text)
    except EgressConfigError as exc:
        raise EgressConfigError(f"${name}: {exc}") from None
