"""The small tables of the file, [server], [store] and [session], each read into its settings.

Each section reads its own keys with the shared parsers (plus the few only it needs), checks
what its keys say about one another, and reports whatever it did not ask for as unknown.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from proxy.config.problems import _Invalid
from proxy.config.reader import _Reader
from proxy.config.references import _FILE_PREFIX, _Context
from proxy.config.schema import ServerSettings, SessionSettings, StoreSettings
from proxy.config.values import (
    _boolean,
    _one_of,
    _port,
    _seconds,
    _secret,
    _split_url,
    _text,
    _word,
)
from proxy.core.listener_tls import CLIENT_AUTH_MODES, ListenerTls
from proxy.core.secret import Secret


def _pem_path(value: Any, context: _Context) -> Path:
    """Where a PEM file is: a path (relative to the config file), `file:PATH` (the same file,
    read whenever the configuration is: at start and at every reload), or `env:NAME` (a
    variable holding the path)."""
    if isinstance(value, str) and value.startswith(_FILE_PREFIX):
        text = value.removeprefix(_FILE_PREFIX)
        if not text:
            raise _Invalid("a file: reference needs a path")
    else:
        text = _text(value, context)
    if text.lstrip().startswith("-----BEGIN"):
        raise _Invalid("must be the path of a PEM file (or file:PATH), not the PEM text itself")
    return context.path(text)


_TLS_KEYS: Final = ("tls_cert", "tls_key", "tls_client_ca", "tls_client_auth")


def _listener_tls(table: _Reader) -> tuple[ListenerTls | None, bool]:
    """[server] tls_*: the listener's TLS (None: plain HTTP), and ops_tls."""
    cert = table.optional("tls_cert", _pem_path)
    key = table.optional("tls_key", _pem_path)
    client_ca = table.optional("tls_client_ca", _pem_path)
    client_auth = table.optional("tls_client_auth", _one_of(*CLIENT_AUTH_MODES))
    ops_tls = table.get("ops_tls", _boolean, default=False)
    if not all(table.is_valid(name) for name in _TLS_KEYS):
        return None, ops_tls
    needs = {"tls_key": "tls_cert", "tls_client_ca": "tls_cert",
             "tls_client_auth": "tls_client_ca", "ops_tls": "tls_cert"}
    given = {"tls_cert": cert, "tls_key": key, "tls_client_ca": client_ca,
             "tls_client_auth": client_auth, "ops_tls": ops_tls or None}
    missing = [(name, needed) for name, needed in needs.items()
               if given[name] is not None and given[needed] is None]
    for name, needed in missing:
        table.problem(f"needs server.{needed}", name)
    if missing or cert is None:
        return None, ops_tls
    try:
        tls = ListenerTls.read(cert, key, client_ca, client_auth or "required")
    except ValueError as exc:
        name, _, why = str(exc).partition(": ")
        table.problem(why, name)
        return None, ops_tls
    return tls, ops_tls


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
    tls, ops_tls = _listener_tls(table)
    settings = replace(settings, tls=tls, ops_tls=ops_tls)
    if ops_tls and settings.ops_port is None and table.is_valid("ops_port"):
        table.problem("has no effect without server.ops_port", "ops_tls")
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


def _store_path(value: Any, context: _Context) -> Path:
    return context.path(_text(value, context))


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


def _session_secret(value: Any, context: _Context) -> Secret:
    text = _text(value, context)
    if len(text) < 16:
        raise _Invalid("must be at least 16 characters")
    return Secret(text)


def _session(table: _Reader) -> SessionSettings:
    settings = SessionSettings(secret=table.optional("secret", _session_secret))
    table.finish()
    return settings
