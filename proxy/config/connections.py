"""The [connections.NAME] tables: which keys each provider takes, and how each key is read.

Which keys a connection takes depends on its provider (`_PROVIDERS`): a key another provider
takes is refused with the names of those that do. The parsers here are the ones only a
connection needs (prefix, redirect URI, headers, token request fields, retries, the cache); a
connection with any problem is left out, and two may not serve the same prefix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.config.outbound import Outbound, read_outbound, resolve_outbound
from proxy.config.problems import _Invalid
from proxy.config.reader import _Parser, _Reader, _shown_key
from proxy.config.references import _Context
from proxy.config.schema import CacheSettings, ConnectionSettings, RetrySettings
from proxy.config.values import (
    _array_of,
    _base_url,
    _count,
    _endpoint_url,
    _http_url,
    _integer,
    _method,
    _one_of,
    _path_pattern,
    _seconds,
    _secret,
    _string_table,
    _text,
    _word,
)
from proxy.core.http import HOP_BY_HOP
from proxy.core.secret import Secret
from proxy.inbound.rules import ANY_METHOD
from proxy.oauth.client_credentials import AUTH_METHODS, CLIENT_SECRET_BASIC

_unique_words = _array_of(_word, "an array of strings")
_secrets = _array_of(_secret, "a string or an array of strings")


def _subscription_keys(value: Any, context: _Context) -> tuple[Secret, ...]:
    """One key, or several to rotate through: (primary, secondary, ...)."""
    return (_secret(value, context),) if isinstance(value, str) else _secrets(value, context)


_PROXY_PATH: Final = "/_proxy/"
_CALLBACK_PATH: Final = "/_proxy/callback"

_PREFIX_FORBIDDEN: Final = ("..", "//", "?", "#", "%")


def _prefix(value: Any, context: _Context) -> str:
    """An inbound path prefix, normalised to end with "/"."""
    text = _text(value, context)
    if not text.startswith("/"):
        raise _Invalid("must start with '/'")
    found = [repr(part) for part in _PREFIX_FORBIDDEN if part in text]
    if any(char.isspace() for char in text):
        found.append("whitespace")
    if found:
        raise _Invalid("must not contain " + ", ".join(found))
    text = text if text.endswith("/") else f"{text}/"
    if text.startswith(_PROXY_PATH):
        raise _Invalid(f"must not be under {_PROXY_PATH} (the proxy's own pages)")
    return text


def _redirect_uri(value: Any, context: _Context) -> str:
    text = _text(value, context)
    path = _http_url(text).path
    if not path:
        raise _Invalid(f"must include a path (e.g. {_CALLBACK_PATH})")
    if path.startswith(_PROXY_PATH) and path != _CALLBACK_PATH:
        raise _Invalid(
            f"path must not be under {_PROXY_PATH} (the proxy's own pages), except {_CALLBACK_PATH}"
        )
    return text


# RFC 9110 §5.6.2 `token`: what a header field name may be made of.
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: a field value is visible characters with inner spaces or tabs; no CR, LF, NUL.
_HEADER_VALUE: Final = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")
# Headers the proxy manages itself, whatever the provider; the reason is the message.
_MANAGED_HEADERS: Final[Mapping[str, str]] = {
    "authorization": "is set by the proxy: it carries the access token",
    "x-subscription-key": "is set by the proxy from subscription_key",
    **dict.fromkeys(
        (*sorted(HOP_BY_HOP), "host", "content-length", "expect", "via", "x-forwarded-for",
         "x-forwarded-proto", "x-forwarded-host"),
        "is managed by the proxy and cannot be set here",
    ),
}


def _header_problem(name: str, value: str) -> str | None:
    if not _HEADER_NAME.fullmatch(name):
        return "is not a valid header name (RFC 9110 token characters only)"
    managed = _MANAGED_HEADERS.get(name.lower())
    if managed is not None:
        return managed
    if not _HEADER_VALUE.fullmatch(value):  # the value is not echoed: it may be a key
        return "value must be printable ASCII without leading or trailing whitespace"
    return None


# Form fields of a client-credentials request that come from other keys.
_TOKEN_REQUEST_FIELDS: Final[Mapping[str, str]] = {
    "grant_type": "is always client_credentials",
    "client_id": "comes from client_id",
    "client_secret": "comes from client_secret",
    "scope": "comes from scopes",
    "audience": "comes from audience",
}


def _token_param_problem(name: str, _value: str) -> str | None:
    if not name:
        return "a form field needs a name"
    reason = _TOKEN_REQUEST_FIELDS.get(name)
    return None if reason is None else f"is set by the proxy: {reason}"


def _retry_method(value: Any, context: _Context) -> str:
    method = _method(value, context)
    if method == ANY_METHOD:
        raise _Invalid("name the methods to retry; a repeated POST may do its work twice")
    return method


def _retry_status(value: Any, context: _Context) -> int:
    status = _integer(value, context)
    if status != 429 and not 500 <= status <= 599:
        raise _Invalid("must be 429 or a 5xx status")
    return status


def _retries(table: _Reader) -> RetrySettings:
    default = RetrySettings()
    settings = RetrySettings(
        count=table.get("count", _count(0), default.count),
        deadline_seconds=table.get(
            "deadline_seconds", _seconds(allow_zero=False), default.deadline_seconds
        ),
        backoff_seconds=table.get(
            "backoff_seconds", _seconds(allow_zero=False), default.backoff_seconds
        ),
        methods=table.get(
            "methods", _array_of(_retry_method, "an array of strings"), list(default.methods)
        ),
        statuses=table.get(
            "statuses", _array_of(_retry_status, "an array of integers"), list(default.statuses)
        ),
    )
    table.finish()
    return settings


def _cache(table: _Reader) -> CacheSettings | None:
    default = CacheSettings(paths=())
    paths = table.require("paths", _array_of(_path_pattern, "an array of strings"))
    settings = CacheSettings(
        paths=paths or (),
        ttl_seconds=table.get("ttl_seconds", _seconds(allow_zero=False), default.ttl_seconds),
        max_entries=table.get("max_entries", _count(1), default.max_entries),
        max_body_bytes=table.get("max_body_bytes", _count(1), default.max_body_bytes),
    )
    table.finish()
    return settings if paths else None


# How each connection key is read. A provider picks which of them it requires or defaults.
_CONNECTION_KEYS: Final[Mapping[str, _Parser[Any]]] = {
    "prefix": _prefix,
    "upstream": _base_url,
    "issuer": _base_url,
    "subscription_key": _subscription_keys,
    "client_id": _text,  # not a secret: the status page shows it
    "client_secret": _secret,
    "redirect_uri": _redirect_uri,
    "scopes": _unique_words,
    "token_url": _endpoint_url,
    "revocation_url": _endpoint_url,
    "auth_method": _one_of(*AUTH_METHODS),
    "audience": _text,
    "token_params": _string_table(_token_param_problem),
    # An identifier like client_id: it grants nothing without the secret, and it travels in a
    # header of every request anyway.
    "account_id": _text,
    "headers": _string_table(_header_problem),
    "refresh_margin_seconds": _seconds(allow_zero=True),
    "connect_timeout_seconds": _seconds(allow_zero=False),
    "read_timeout_seconds": _seconds(allow_zero=False),
    "rate_per_second": _seconds(allow_zero=False),  # a positive number, as seconds are
    "burst": _count(1),
    "max_concurrent": _count(1),
    "max_queue": _count(0),
    "max_wait_seconds": _seconds(allow_zero=True),
    "refresh_token_lifetime_days": _seconds(allow_zero=False),
}

_COMMON_DEFAULTS: Final[Mapping[str, object]] = {
    "prefix": "/",
    "headers": {},
    "refresh_margin_seconds": 300,
    "connect_timeout_seconds": 10,
    "read_timeout_seconds": 60,
    "max_queue": 100,
    "max_wait_seconds": 10,
    "refresh_token_lifetime_days": 30,
}
# Keys every provider takes that have no default: absent means "no such limit".
_COMMON_OPTIONAL: Final = ("rate_per_second", "max_concurrent")


@dataclass(frozen=True)
class _Provider:
    """The keys one provider's connections take: required, optional (no default), defaulted.

    `own_headers` are header names (lower case) the provider's grant sets on every request,
    each with the key it comes from, so `headers` may not set them too.
    """

    required: tuple[str, ...]
    defaults: Mapping[str, object]
    optional: tuple[str, ...] = _COMMON_OPTIONAL
    own_headers: Mapping[str, str] = field(default_factory=dict)


_PROVIDERS: Final[Mapping[str, _Provider]] = {
    "nmbrs": _Provider(
        required=("client_id", "client_secret", "redirect_uri", "scopes"),
        # The subscription key may instead be entered on the /_proxy/ page.
        optional=(*_COMMON_OPTIONAL, "subscription_key"),
        defaults={
            **_COMMON_DEFAULTS,
            "upstream": "https://api.nmbrsapp.com",
            "issuer": "https://identityservice.nmbrs.com",
        },
    ),
    "client_credentials": _Provider(
        required=("upstream", "token_url", "client_id", "client_secret"),
        optional=(*_COMMON_OPTIONAL, "scopes", "audience", "revocation_url", "subscription_key"),
        defaults={**_COMMON_DEFAULTS, "auth_method": CLIENT_SECRET_BASIC, "token_params": {}},
    ),
    "nomba": _Provider(
        required=("client_id", "client_secret", "account_id"),
        defaults={
            **_COMMON_DEFAULTS,
            "upstream": "https://api.nomba.com",
            "token_url": "https://api.nomba.com/v1/auth/token",
        },
        own_headers={"accountid": "account_id"},
    ),
    "nitro": _Provider(
        required=("client_id", "client_secret"),
        defaults={
            **_COMMON_DEFAULTS,
            "upstream": "https://api.gonitro.dev",
            "token_url": "https://api.gonitro.dev/oauth/token",
        },
    ),
}


def _quota(table: _Reader, *, rate_per_second: float | None) -> dict[str, Any]:
    """The keys that shape traffic to the upstream: burst, retries and the response cache."""
    values: dict[str, Any] = {}
    burst = table.optional("burst", _CONNECTION_KEYS["burst"])
    if burst is not None:
        if rate_per_second is None and table.is_valid("rate_per_second"):
            table.problem("has no effect without rate_per_second", "burst")
        values["burst"] = burst
    retries = table.table("retries")
    if retries is not None:
        values["retries"] = _retries(retries)
    if table.has("cache"):
        cache = table.table("cache")
        values["cache"] = None if cache is None else _cache(cache)
    return values


_CONNECTION_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _connections(table: _Reader | None, upstream: Outbound,
                 ) -> tuple[ConnectionSettings, ...]:
    if table is None:  # not a table: already reported
        return ()
    if table.is_empty():
        table.problem("at least one connection is required")
        return ()
    prefixes: dict[str, str] = {}  # normalised prefix -> the connection that claimed it first
    connections = [_connection(name, sub, prefixes, upstream) for name, sub in table.tables()]
    return tuple(connection for connection in connections if connection is not None)


def _not_taken_by(provider: str) -> dict[str, str]:
    """Why each key that other providers take is refused for `provider`."""
    taken = _takes(_PROVIDERS[provider])
    return {
        key: f"not a key of provider {provider!r} (only for: {', '.join(map(repr, users))})"
        for key in _CONNECTION_KEYS
        if key not in taken
        for users in [[name for name, other in _PROVIDERS.items() if key in _takes(other)]]
        if users
    }


def _takes(profile: _Provider) -> set[str]:
    return {*profile.required, *profile.optional, *profile.defaults}


def _connection_values(table: _Reader, profile: _Provider) -> dict[str, Any]:
    """The keys `profile` takes, read from `table`; an optional key left out is not included."""
    values: dict[str, Any] = {}
    for key in profile.required:
        values[key] = table.require(key, _CONNECTION_KEYS[key])
    for key, default in profile.defaults.items():
        values[key] = table.get(key, _CONNECTION_KEYS[key], default)
    for key in profile.optional:
        value = table.optional(key, _CONNECTION_KEYS[key])
        if value is not None:
            values[key] = value
    values.update(_quota(table, rate_per_second=values.get("rate_per_second")))
    keys = values.pop("subscription_key", None)
    if keys:
        values["subscription_key"], *secondary = keys
        values["secondary_subscription_keys"] = tuple(secondary)
    for header, _value in values["headers"]:
        source = profile.own_headers.get(header.lower())
        if source is not None:
            table.problem(f"is set by the proxy from {source}", "headers", f".{_shown_key(header)}")
    return values


def _connection(name: str, table: _Reader, prefixes: dict[str, str],
                upstream: Outbound) -> ConnectionSettings | None:
    """One connection, or None when it has problems (all of them recorded)."""
    before = table.problem_count()
    if not _CONNECTION_NAME.fullmatch(name):
        table.problem("the name must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")
    provider = table.require("provider", _one_of(*_PROVIDERS))
    if provider is None:  # which keys are valid depends on the provider: nothing more to check
        return None
    profile = _PROVIDERS[provider]
    values = _connection_values(table, profile)
    written = read_outbound(table).over(upstream)
    table.finish(_not_taken_by(provider))
    if table.is_valid("prefix"):  # a bad prefix has the default standing in: nothing to compare
        prefix = values["prefix"]
        first = prefixes.setdefault(prefix, name)
        if first != name:
            table.problem(f"{prefix!r} is already served by connection {first!r}", "prefix")
    if table.problem_count() > before:
        return None
    outbound = resolve_outbound(written, table, table.context)
    if outbound is None:
        return None
    egress, tls = outbound
    return ConnectionSettings(name=name, provider=provider, egress=egress, tls=tls, **values)
