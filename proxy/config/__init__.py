"""Settings: frozen dataclasses read from a TOML file; every problem is collected, none is silent.

The loader (`load`) resolves `env:NAME` and `file:PATH` references for any string value, checks
types and unknown keys, and raises one `ConfigError` listing every problem with its dotted key.

Reading works table by table through a small `_Reader`: it hands each value to a parser (a plain
function that returns the checked value or raises `_Invalid`), records every problem under the
value's dotted key, and remembers which keys were asked for, so whatever is left over is reported
as an unknown key. Which keys a connection takes depends on its provider: see `_PROVIDERS`.
"""

from __future__ import annotations

import base64
import difflib
import enum
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import SplitResult, urlsplit

from proxy.core.http import HOP_BY_HOP
from proxy.core.secret import Secret
from proxy.inbound.policy import (
    ANY_METHOD,
    LOOPBACK,
    AccessPolicy,
    AdminAccess,
    Client,
    IPNetwork,
    PathPattern,
    Rule,
    bind_problem,
)
from proxy.oauth.client_credentials import AUTH_METHODS, CLIENT_SECRET_BASIC

_CONFIG_ENV: Final = "NMBRS_PROXY_CONFIG"
_DEFAULT_CONFIG_FILE: Final = "config.toml"


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
    """One connection; which fields a provider uses is set by `_PROVIDERS` below."""

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


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    connections: tuple[ConnectionSettings, ...] = ()
    clients: tuple[Client, ...] = ()
    admin: AdminAccess = field(default_factory=AdminAccess)
    audit: AuditSettings = field(default_factory=AuditSettings)

    def access_policy(self) -> AccessPolicy:
        return AccessPolicy(
            clients=self.clients, allow_anonymous=self.server.allow_anonymous, admin=self.admin
        )


class ConfigError(ValueError):
    """The configuration cannot be used; `problems` holds every reason, each led by its key."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


# --- entry points ---------------------------------------------------------------------------


def config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """Where the configuration lives: `--config`, else $NMBRS_PROXY_CONFIG, else ./config.toml."""
    return Path(cli_value or environ.get(_CONFIG_ENV) or _DEFAULT_CONFIG_FILE)


def load(path: Path, environ: Mapping[str, str]) -> Settings:
    """Read and check the TOML file at `path`; relative paths in it are relative to its folder."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise ConfigError([f"{path}: cannot read the configuration file ({_reason(err)})"]) from err
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: the configuration file is not UTF-8 text"]) from err
    except tomllib.TOMLDecodeError as err:  # its message ends with "(at line L, column C)"
        raise ConfigError([f"{path}: invalid TOML: {err}"]) from err
    return parse(data, base_dir=path.absolute().parent, environ=environ)


def parse(data: Mapping[str, Any], *, base_dir: Path, environ: Mapping[str, str]) -> Settings:
    """Check already-decoded TOML. Only `file:` references touch the file system."""
    context = _Context(base_dir.absolute(), environ)
    root = _Reader(data, "", context)
    server = root.table("server")
    store = root.table("store")
    session = root.table("session")
    settings = Settings(
        server=_server(server) if server is not None else ServerSettings(),
        store=_store(store) if store is not None else StoreSettings(),
        session=_session(session) if session is not None else SessionSettings(),
        connections=_connections(root.table("connections")),
    )
    settings = _with_access(root, settings, _connection_names(data))
    root.finish()
    if (
        settings.store.backend == "redis"
        and settings.session.secret is None
        and session is not None
        and session.is_valid("secret")
    ):
        # Replicas share one Redis; a login started on one may come back to another.
        session.problem(
            'required when store.backend = "redis": every replica must read the consent '
            "cookie the others set",
            "secret",
        )
    if context.problems:
        raise ConfigError(context.problems)
    return settings


# --- the reader -----------------------------------------------------------------------------

_T = TypeVar("_T")

_ENV_PREFIX: Final = "env:"
_FILE_PREFIX: Final = "file:"
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


class _Invalid(Exception):
    """Problems with one value, as (key suffix, message) pairs; the reader records them."""

    def __init__(self, message: str = "", *, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems) or (("", message),)


@dataclass
class _Context:
    """What parsers may look at: the folder for relative paths and the environment."""

    base_dir: Path
    environ: Mapping[str, str]
    problems: list[str] = field(default_factory=list)

    def resolve(self, text: str) -> str:
        """The value an `env:NAME` or `file:PATH` reference stands for; a literal as it is."""
        if text.startswith(_ENV_PREFIX):
            return self._env(text.removeprefix(_ENV_PREFIX))
        if text.startswith(_FILE_PREFIX):
            return self._file(text.removeprefix(_FILE_PREFIX))
        return text

    def path(self, text: str) -> Path:
        return (self.base_dir / text).absolute()

    def _env(self, name: str) -> str:
        if not name:
            raise _Invalid("an env: reference needs a variable name")
        value = self.environ.get(name)
        if value is None:
            raise _Invalid(f"environment variable {name} is not set")
        if not value:
            raise _Invalid(f"environment variable {name} is empty")
        return value

    def _file(self, name: str) -> str:
        if not name:
            raise _Invalid("a file: reference needs a path")
        path = self.path(name)
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as err:
            raise _Invalid(f"cannot read file {path} ({_reason(err)})") from err
        except UnicodeDecodeError as err:
            raise _Invalid(f"cannot read file {path} (not UTF-8 text)") from err
        return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")


_Parser = Callable[[Any, _Context], _T]


class _Missing(enum.Enum):
    MISSING = enum.auto()


class _Reader:
    """One TOML table under a dotted key: reads values, records problems instead of raising."""

    def __init__(self, data: Mapping[str, Any], key: str, context: _Context) -> None:
        self._data = data
        self._key = key
        self._context = context
        self._known: list[str] = []
        self._invalid: set[str] = set()  # keys with a recorded problem

    def key(self, name: str) -> str:
        shown = name if _BARE_KEY.fullmatch(name) else json.dumps(name)
        return f"{self._key}.{shown}" if self._key else shown

    def problem(self, message: str, name: str | None = None, suffix: str = "") -> None:
        """Record a problem with this table itself, or with its key `name`."""
        key = self._key if name is None else self.key(name)
        if name is not None:
            self._invalid.add(name)
        self._context.problems.append(f"{key}{suffix}: {message}")

    def require(self, name: str, parse: _Parser[_T]) -> _T | None:
        """The parsed value; None (with a problem recorded) when it is missing or invalid."""
        value = self._take(name)
        if value is _Missing.MISSING:
            self.problem("required", name)
            return None
        return self._parse(name, value, parse)

    def optional(self, name: str, parse: _Parser[_T]) -> _T | None:
        value = self._take(name)
        return None if value is _Missing.MISSING else self._parse(name, value, parse)

    def get(self, name: str, parse: _Parser[_T], default: object) -> _T:
        """The parsed value, or the parsed `default` (written as in the file) when missing.

        On a problem the default stands in, so callers always hold a well-typed value; the
        recorded problem keeps it from ever leaving `parse()`.
        """
        value = self._take(name)
        if value is not _Missing.MISSING:
            parsed = self._parse(name, value, parse)
            if parsed is not None:
                return parsed
        return parse(default, self._context)

    def table(self, name: str) -> _Reader | None:
        """The sub-table `name` (empty when absent); None when it is not a table."""
        value = self._take(name)
        if value is _Missing.MISSING:
            value = {}
        if not isinstance(value, Mapping):
            self.problem(_expected("a table", value), name)
            return None
        return _Reader(value, self.key(name), self._context)

    def array_of_tables(self, name: str) -> list[_Reader] | None:
        """Each table of the array `name` (`[[name]]`), keyed `name[i]`; None when absent."""
        value = self._take(name)
        if value is _Missing.MISSING:
            return None
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            self.problem(_expected("an array of tables", value), name)
            return []
        key = self.key(name)
        return [_Reader(item, f"{key}[{i}]", self._context) for i, item in enumerate(value)]

    def tables(self) -> Iterator[tuple[str, _Reader]]:
        """Every entry of this table, each of which must itself be a table."""
        for name in self._data:
            sub = self.table(name)
            if sub is not None:
                yield name, sub

    def has(self, name: str) -> bool:
        return name in self._data

    def is_empty(self) -> bool:
        return not self._data

    def problem_count(self) -> int:
        return len(self._context.problems)

    def is_valid(self, name: str) -> bool:
        return name not in self._invalid

    def finish(self, elsewhere: Mapping[str, str] = {}) -> None:
        """Report every key that nobody asked for; `elsewhere` explains some of them."""
        for name in self._data:
            if name not in self._known:
                close = difflib.get_close_matches(name, self._known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problem(elsewhere.get(name, f"unknown key{hint}"), name)

    def _take(self, name: str) -> Any:
        self._known.append(name)
        return self._data.get(name, _Missing.MISSING)

    def _parse(self, name: str, value: Any, parse: _Parser[_T]) -> _T | None:
        try:
            return parse(value, self._context)
        except _Invalid as err:
            for suffix, message in err.problems:
                self.problem(message, name, suffix)
            return None


# --- value parsers: (raw TOML value, context) -> checked value, or raise _Invalid -----------

_TYPE_NAMES: Final[Sequence[tuple[type | tuple[type, ...], str]]] = (
    (bool, "a boolean"),  # before int: a bool is an int to Python, never to us
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (Mapping, "a table"),
    ((datetime, date, time), "a date or time"),
)


def _type_name(value: object) -> str:
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)), "unknown")


def _expected(what: str, value: object) -> str:
    return f"expected {what}, got {_type_name(value)}"


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _text(value: Any, context: _Context) -> str:
    """A non-empty string, with an `env:`/`file:` reference resolved."""
    if not isinstance(value, str):
        raise _Invalid(_expected("a string", value))
    text = context.resolve(value)
    if not text:
        raise _Invalid("must not be empty")
    return text


def _secret(value: Any, context: _Context) -> Secret:
    return Secret(_text(value, context))


def _session_secret(value: Any, context: _Context) -> Secret:
    text = _text(value, context)
    if len(text) < 16:
        raise _Invalid("must be at least 16 characters")
    return Secret(text)


def _one_of(*allowed: str) -> _Parser[str]:
    shown = ", ".join(repr(choice) for choice in allowed)

    def parse(value: Any, context: _Context) -> str:
        text = _text(value, context)
        if text not in allowed:  # the value is not echoed: it may come from a reference
            raise _Invalid(f"must be one of: {shown}")
        return text

    return parse


def _integer(value: Any, _context: _Context) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Invalid(_expected("an integer", value))
    return value


def _port(value: Any, context: _Context) -> int:
    port = _integer(value, context)
    if not 0 <= port <= 65535:
        raise _Invalid("must be between 0 and 65535")
    return port


def _seconds(*, allow_zero: bool) -> _Parser[float]:
    def parse(value: Any, _context: _Context) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Invalid(_expected("a number", value))
        if not math.isfinite(value):
            raise _Invalid("must be a finite number")
        if value < 0 or (value == 0 and not allow_zero):
            raise _Invalid("must be at least 0" if allow_zero else "must be greater than 0")
        return float(value)

    return parse


def _store_path(value: Any, context: _Context) -> Path:
    return context.path(_text(value, context))


def _word(value: Any, context: _Context) -> str:
    text = _text(value, context)
    if any(char.isspace() for char in text):
        raise _Invalid("must not contain whitespace")
    return text


def _array(item: _Parser[_T], *, allow_empty: bool) -> _Parser[tuple[_T, ...]]:
    """An array whose every item `item` parses; each problem keyed by its index."""

    def parse(value: Any, context: _Context) -> tuple[_T, ...]:
        if not isinstance(value, list):
            raise _Invalid(_expected("an array", value))
        if not value and not allow_empty:
            raise _Invalid("must not be empty")
        items: list[_T] = []
        problems: list[tuple[str, str]] = []
        for index, raw in enumerate(value):
            try:
                items.append(item(raw, context))
            except _Invalid as err:
                problems.extend((f"[{index}]{suffix}", message) for suffix, message in err.problems)
        if problems:
            raise _Invalid(problems=problems)
        return tuple(items)

    return parse


def _array_of(parse_item: _Parser[_T], what: str) -> _Parser[tuple[_T, ...]]:
    """A non-empty array of `what`; duplicates dropped, the first one kept."""
    items = _array(parse_item, allow_empty=False)

    def parse(value: Any, context: _Context) -> tuple[_T, ...]:
        if not isinstance(value, list):
            raise _Invalid(_expected(what, value))
        return tuple(dict.fromkeys(items(value, context)))

    return parse


_unique_words = _array_of(_word, "an array of strings")
_secrets = _array_of(_secret, "a string or an array of strings")


def _subscription_keys(value: Any, context: _Context) -> tuple[Secret, ...]:
    """One key, or several to rotate through: (primary, secondary, ...)."""
    return (_secret(value, context),) if isinstance(value, str) else _secrets(value, context)


def _count(minimum: int) -> _Parser[int]:
    def parse(value: Any, context: _Context) -> int:
        number = _integer(value, context)
        if number < minimum:
            raise _Invalid(f"must be at least {minimum}")
        return number

    return parse


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


def _split_url(text: str) -> SplitResult:
    """A URL with no whitespace, split; its port, if any, a number in range."""
    if any(char.isspace() for char in text):
        raise _Invalid("must not contain whitespace")
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError as err:
        raise _Invalid("is not a valid URL") from err
    return parts


def _http_url(text: str) -> SplitResult:
    """Checks shared by every URL: absolute http(s), a host, no user info, no fragment."""
    parts = _split_url(text)
    if parts.scheme not in {"http", "https"}:
        raise _Invalid("must be an absolute http or https URL")
    if not parts.hostname:
        raise _Invalid("must include a host")
    if "@" in parts.netloc:
        raise _Invalid("must not include user info")
    if "#" in text:
        raise _Invalid("must not include a fragment")
    return parts


def _base_url(value: Any, context: _Context) -> str:
    """An upstream origin (optionally with a base path) or an issuer; no trailing slash."""
    text = _text(value, context)
    _http_url(text)
    if "?" in text:
        raise _Invalid("must not include a query")
    return text.rstrip("/")


def _endpoint_url(value: Any, context: _Context) -> str:
    """A token or revocation endpoint: like a base URL, but kept exactly as written."""
    text = _text(value, context)
    _http_url(text)
    if "?" in text:
        raise _Invalid("must not include a query")
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


def _shown_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def _string_table(
    check: Callable[[str, str], str | None],
) -> _Parser[tuple[tuple[str, str | Secret], ...]]:
    """A table of strings, references resolved; `check(name, value)` returns a problem or None.

    A value given as an `env:`/`file:` reference is kept as a Secret: it may be a key, and the
    redaction of logs then masks it. Names are compared without regard to case: two entries
    differing only in case clash.
    """

    def parse(value: Any, context: _Context) -> tuple[tuple[str, str | Secret], ...]:
        if not isinstance(value, Mapping):
            raise _Invalid(_expected("a table", value))
        pairs: list[tuple[str, str | Secret]] = []
        seen: dict[str, str] = {}
        problems: list[tuple[str, str]] = []
        for name, raw in value.items():
            suffix = f".{_shown_key(name)}"
            try:
                text = _text(raw, context)
            except _Invalid as err:
                problems.extend((suffix + more, message) for more, message in err.problems)
                continue
            first = seen.setdefault(name.lower(), name)
            problem = check(name, text) if first == name else f"repeats {first!r}"
            if problem is not None:
                problems.append((suffix, problem))
            elif raw.startswith((_ENV_PREFIX, _FILE_PREFIX)):
                pairs.append((name, Secret(text)))
            else:
                pairs.append((name, text))
        if problems:
            raise _Invalid(problems=problems)
        return tuple(pairs)

    return parse


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


_PROXY_PATH: Final = "/_proxy/"
_CALLBACK_PATH: Final = "/_proxy/callback"


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


# --- sections -------------------------------------------------------------------------------


def _server(table: _Reader) -> ServerSettings:
    settings = ServerSettings(
        host=table.get("host", _text, "127.0.0.1"),
        port=table.get("port", _port, 8080),
        allow_anonymous=table.get("allow_anonymous", _boolean, default=False),
        shutdown_grace_seconds=table.get(
            "shutdown_grace_seconds", _seconds(allow_zero=True), 25
        ),
        ops_host=table.get("ops_host", _text, "127.0.0.1"),
        ops_port=table.optional("ops_port", _port),
    )
    if (
        settings.ops_port is not None
        and settings.ops_port == settings.port != 0
        and table.is_valid("ops_port")
    ):
        table.problem("must differ from server.port", "ops_port")
    table.finish()
    return settings


_STORE_BACKENDS: Final = ("file", "redis")
# Keys that only one backend reads: giving one to the other backend is a mistake worth a word.
_STORE_KEYS_OF: Final[Mapping[str, tuple[str, ...]]] = {
    "file": ("path",),
    "redis": ("url", "password", "key_prefix", "lease_seconds", "timeout_seconds"),
}
_REDIS_SCHEMES: Final = ("redis", "rediss")
_FERNET_KEY_HINT: Final = (
    "must be a Fernet key: 32 random bytes, URL-safe base64 (44 characters); make one with "
    "python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


def _redis_url(value: Any, context: _Context) -> str:
    """redis://[user@]host[:port][/db] or rediss://…; the password goes in `password`."""
    text = _text(value, context)
    parts = _split_url(text)
    if parts.scheme not in _REDIS_SCHEMES:
        raise _Invalid("must be a redis:// or rediss:// URL")
    if not parts.hostname:
        raise _Invalid("must include a host")
    if parts.password is not None:
        raise _Invalid('must not include a password: set store.password (e.g. "env:NAME")')
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise _Invalid("must not include a query or fragment")
    database = parts.path.removeprefix("/")
    if database and not (database.isascii() and database.isdigit()):
        raise _Invalid("the path must be a database number, such as /0")
    return text


def _fernet_key(value: Any, context: _Context) -> Secret:
    text = _text(value, context)
    try:
        raw = base64.urlsafe_b64decode(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raw = b""
    if len(text) != 44 or len(raw) != 32:
        raise _Invalid(_FERNET_KEY_HINT)
    return Secret(text)


def _lease_seconds(value: Any, context: _Context) -> float:
    seconds = _seconds(allow_zero=False)(value, context)
    if seconds < 1:
        raise _Invalid("must be at least 1")
    return seconds


def _store(table: _Reader) -> StoreSettings:
    settings = StoreSettings(
        backend=table.get("backend", _one_of(*_STORE_BACKENDS), "file"),
        path=table.get("path", _store_path, "state/tokens.json"),
        url=table.optional("url", _redis_url),
        password=table.optional("password", _secret),
        key_prefix=table.get("key_prefix", _word, "nmbrs-proxy:"),
        encryption_key=table.optional("encryption_key", _fernet_key),
        lease_seconds=table.get("lease_seconds", _lease_seconds, 10),
        timeout_seconds=table.get("timeout_seconds", _seconds(allow_zero=False), 2),
    )
    table.finish()
    if not table.is_valid("backend"):
        return settings
    for backend, keys in _STORE_KEYS_OF.items():
        for key in keys:
            if backend != settings.backend and table.has(key):
                table.problem(f'only used when store.backend = "{backend}"', key)
    if settings.backend == "redis" and settings.url is None and table.is_valid("url"):
        table.problem('required when store.backend = "redis"', "url")
    return settings


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


def _session(table: _Reader) -> SessionSettings:
    settings = SessionSettings(secret=table.optional("secret", _session_secret))
    table.finish()
    return settings


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


def _connections(table: _Reader | None) -> tuple[ConnectionSettings, ...]:
    if table is None:  # not a table: already reported
        return ()
    if table.is_empty():
        table.problem("at least one connection is required")
        return ()
    prefixes: dict[str, str] = {}  # normalised prefix -> the connection that claimed it first
    connections = [_connection(name, sub, prefixes) for name, sub in table.tables()]
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


def _connection(name: str, table: _Reader, prefixes: dict[str, str]) -> ConnectionSettings | None:
    """One connection, or None when it has problems (all of them recorded)."""
    before = table.problem_count()
    if not _CONNECTION_NAME.fullmatch(name):
        table.problem("the name must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")
    provider = table.require("provider", _one_of(*_PROVIDERS))
    if provider is None:  # which keys are valid depends on the provider: nothing more to check
        return None
    profile = _PROVIDERS[provider]
    values = _connection_values(table, profile)
    table.finish(_not_taken_by(provider))
    if table.is_valid("prefix"):  # a bad prefix has the default standing in: nothing to compare
        prefix = values["prefix"]
        first = prefixes.setdefault(prefix, name)
        if first != name:
            table.problem(f"{prefix!r} is already served by connection {first!r}", "prefix")
    if table.problem_count() > before:
        return None
    return ConnectionSettings(name=name, provider=provider, **values)


# --- access: [[clients]], [admin], [audit] ----------------------------------------------------


def _boolean(value: Any, _context: _Context) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(_expected("a boolean", value))
    return value


_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")


def _sha256(value: Any, context: _Context) -> bytes:
    """A key's SHA-256 in hex (what `nmbrs-proxy hash-key` prints), as the 32-byte digest."""
    text = _text(value, context).strip()
    if not _SHA256_HEX.fullmatch(text):
        raise _Invalid(
            "must be 64 hexadecimal characters, the SHA-256 of the key "
            "(`nmbrs-proxy hash-key` prints one)"
        )
    return bytes.fromhex(text)


def _network(value: Any, context: _Context) -> IPNetwork:
    text = _text(value, context)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        if "host bits set" in str(err):
            loose = ipaddress.ip_network(text, strict=False)
            raise _Invalid(f"{text!r} has host bits set (did you mean {str(loose)!r}?)") from None
        raise _Invalid(f"{text!r} is not an IP address or network (e.g. '10.0.0.0/8')") from None


_METHOD: Final = re.compile(r"[A-Z]+")


def _method(value: Any, context: _Context) -> str:
    text = _text(value, context)
    if text != ANY_METHOD and not _METHOD.fullmatch(text):
        raise _Invalid(f"must be an HTTP method in capitals (e.g. 'GET') or {ANY_METHOD!r}")
    return text


def _path_pattern(value: Any, context: _Context) -> PathPattern:
    text = _text(value, context)
    try:
        return PathPattern.parse(text)
    except ValueError as err:
        raise _Invalid(str(err)) from None


def _audit_destination(value: Any, context: _Context) -> str:
    text = _text(value, context)
    if text in (AUDIT_OFF, *AUDIT_STREAMS):
        return text
    return str(context.path(text))


_CLIENT_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _client_name(value: Any, context: _Context) -> str:
    text = _text(value, context)
    if not _CLIENT_NAME.fullmatch(text):
        raise _Invalid("must be 1 to 64 characters from A-Z, a-z, 0-9, '_', '.' and '-'")
    return text


def _connection_names(data: Mapping[str, Any]) -> frozenset[str]:
    """Connection names as written, valid or not (a client naming a broken one is not wrong)."""
    connections = data.get("connections")
    return frozenset(connections) if isinstance(connections, Mapping) else frozenset()


def _with_access(root: _Reader, settings: Settings, connections: frozenset[str]) -> Settings:
    """`settings` with [[clients]], [admin] and [audit] read, and the listen address checked."""
    keys: dict[bytes, str] = {}  # key digest -> the dotted key that holds it first
    client_tables = root.array_of_tables("clients")
    clients = _clients(client_tables, connections, keys)
    admin_table = root.table("admin")
    admin = _admin(admin_table, keys) if admin_table is not None else AdminAccess()
    audit_table = root.table("audit")
    audit = _audit(audit_table) if audit_table is not None else AuditSettings()
    settings = replace(settings, clients=clients, admin=admin, audit=audit)
    problem = bind_problem(settings.server.host, settings.access_policy())
    if problem is not None and not client_tables:  # broken clients are reported themselves
        root.problem(problem, "server", ".host")
    return settings


def _clients(
    tables: list[_Reader] | None, connections: frozenset[str], keys: dict[bytes, str]
) -> tuple[Client, ...]:
    clients: list[Client] = []
    names: set[str] = set()
    for table in tables or ():
        client = _client(table, connections, keys)
        if client is None:
            continue
        if client.name in names:
            table.problem(f"another client is already named {client.name!r}", "name")
            continue
        names.add(client.name)
        clients.append(client)
    return tuple(clients)


def _client(
    table: _Reader, connections: frozenset[str], keys: dict[bytes, str]
) -> Client | None:
    before = table.problem_count()
    name = table.require("name", _client_name)
    digest = table.require("key_sha256", _sha256)
    cidrs = table.optional("cidrs", _array(_network, allow_empty=False)) or ()
    allowed = table.optional("connections", _array(_text, allow_empty=False))
    read_only = table.get("read_only", _boolean, default=False)
    rule_tables = table.array_of_tables("rules")
    rules = [_rule(rule) for rule in rule_tables] if rule_tables is not None else None
    if rule_tables == []:
        table.problem("must not be empty (leave it out to allow every method and path)", "rules")
    table.finish()
    for index, connection in enumerate(allowed or ()):
        if connection not in connections:
            table.problem(f"no connection is named {connection!r}", "connections", f"[{index}]")
    if digest is not None:
        first = keys.setdefault(digest, table.key("key_sha256"))
        if first != table.key("key_sha256"):
            table.problem(f"the same key as {first}: every key must be different", "key_sha256")
    if table.problem_count() > before or name is None or digest is None:
        return None
    return Client(
        name=name,
        key_sha256=digest,
        cidrs=cidrs,
        connections=frozenset(allowed) if allowed is not None else None,
        rules=tuple(rule for rule in rules if rule is not None) if rules is not None else None,
        read_only=read_only,
    )


def _rule(table: _Reader) -> Rule | None:
    methods = table.require("methods", _array(_method, allow_empty=False))
    paths = table.require("paths", _array(_path_pattern, allow_empty=False))
    table.finish()
    if methods is None or paths is None:
        return None
    return Rule(methods=frozenset(methods), paths=paths)


def _admin(table: _Reader, keys: dict[bytes, str]) -> AdminAccess:
    digest = table.optional("key_sha256", _sha256)
    loopback = [str(network) for network in LOOPBACK]
    cidrs = table.get("cidrs", _array(_network, allow_empty=True), default=loopback)
    table.finish()
    if digest is not None and digest in keys:
        table.problem(f"the same key as {keys[digest]}: the admin key must be its own",
                      "key_sha256")
    return AdminAccess(key_sha256=digest, cidrs=cidrs)


def _audit(table: _Reader) -> AuditSettings:
    settings = AuditSettings(
        destination=table.get("destination", _audit_destination, default=AUDIT_OFF),
        include_query=table.get("include_query", _boolean, default=False),
    )
    table.finish()
    return settings
