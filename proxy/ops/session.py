"""The consent session: the encrypted cookie every /_proxy/ form and login keeps its state in.

The cookie is aiohttp-session's EncryptedCookieStorage, keyed by the configured session secret
or else by a key file next to the token store (generated 0600 the first time, shared by every
worker). It carries the page's CSRF token and the logins still pending in this browser: each
one's `state`, PKCE verifier, connection, start time and (when entered with Connect) the
subscription key. The session is handled by the /_proxy/ handlers alone, never by an app-wide
middleware: forwarded requests do not pay for it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp_session import Session
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet
from yarl import URL

from proxy.config import Settings
from proxy.core.secret import Secret
from proxy.forwarding.connection import Connection
from proxy.tokens.store import write_atomically

log = logging.getLogger(__name__)

Clock = Callable[[], float]

SESSION_COOKIE: Final = "nmbrs_proxy_session"
# How long a started login may take, from the redirect to the callback.
LOGIN_MAX_AGE_SECONDS: Final = 600
# How long the cookie (and so a page's CSRF token) lives; each login has its own limit above.
SESSION_MAX_AGE_SECONDS: Final = 3600
# Logins started in other tabs that stay valid; the oldest beyond this are forgotten.
MAX_PENDING_LOGINS: Final = 5
SESSION_KEY_FILE: Final = "session.key"
_PENDING: Final = "pending"


class SessionKeyError(RuntimeError):
    """The session key file exists but cannot be used."""


# --- the session key ------------------------------------------------------------------------


def derive_session_key(secret: Secret) -> bytes:
    """A Fernet key (urlsafe base64 of 32 bytes) from the configured session secret."""
    digest = hashlib.sha256(secret.reveal().encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest)


def session_key_path(settings: Settings) -> Path:
    return settings.store.path.parent / SESSION_KEY_FILE


def load_or_create_session_key(path: Path) -> bytes:
    """The key kept at `path`; generated (0600, written atomically) the first time."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if _create_session_key(path):
            log.info("generated a new session key in %s", path)
        return load_or_create_session_key(path)  # ours, or the one another worker made first
    except OSError as exc:
        raise SessionKeyError(f"cannot read the session key {path}: {exc.strerror}") from None
    key = raw.strip()
    try:
        Fernet(key)
    except ValueError:
        raise SessionKeyError(
            f"{path} does not hold a session key; delete it to have a new one generated"
        ) from None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("the session key %s is readable by others (mode %o); chmod 600", path, mode)
    return key


def _create_session_key(path: Path) -> bool:
    """Write a new key unless one exists; several workers starting at once agree on one."""
    staged = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.new")
    write_atomically(staged, Fernet.generate_key() + b"\n", mode=0o600)
    try:
        path.hardlink_to(staged)  # fails when another process linked its key first
    except FileExistsError:
        return False
    finally:
        staged.unlink()
    return True


def session_key(settings: Settings) -> bytes:
    if settings.session.secret is not None:
        return derive_session_key(settings.session.secret)
    return load_or_create_session_key(session_key_path(settings))


# --- pending logins in the session ----------------------------------------------------------


@dataclass(frozen=True)
class PendingLogin:
    connection: str
    verifier: str = field(repr=False)
    created: float
    # Entered with Connect; kept with the token set once the login completes.
    subscription_key: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "connection": self.connection,
            "verifier": self.verifier,
            "created": self.created,
        }
        if self.subscription_key is not None:
            data["subscription_key"] = self.subscription_key
        return data

    @classmethod
    def from_json(cls, data: object) -> PendingLogin | None:
        if not isinstance(data, Mapping):
            return None
        connection, verifier, created = (
            data.get("connection"),
            data.get("verifier"),
            data.get("created"),
        )
        if not isinstance(connection, str) or not isinstance(verifier, str):
            return None
        if not isinstance(created, int | float) or isinstance(created, bool):
            return None
        key = data.get("subscription_key")
        return cls(
            connection=connection,
            verifier=verifier,
            created=float(created),
            subscription_key=key if isinstance(key, str) else None,
        )


def pending_logins(session: Session) -> dict[str, PendingLogin]:
    """The well-formed pending logins in `session`, by state (expired ones included)."""
    raw = session.get(_PENDING)
    if not isinstance(raw, Mapping):
        return {}
    found: dict[str, PendingLogin] = {}
    for state, data in raw.items():
        login = PendingLogin.from_json(data)
        if isinstance(state, str) and login is not None:
            found[state] = login
    return found


def unexpired(pending: Mapping[str, PendingLogin], now: float) -> dict[str, PendingLogin]:
    return {s: p for s, p in pending.items() if now - p.created < LOGIN_MAX_AGE_SECONDS}


def capped(pending: Mapping[str, PendingLogin]) -> dict[str, PendingLogin]:
    newest = sorted(pending.items(), key=lambda item: item[1].created)[-MAX_PENDING_LOGINS:]
    return dict(newest)


def store_pending(session: Session, pending: Mapping[str, PendingLogin]) -> None:
    if pending:
        session[_PENDING] = {state: login.to_json() for state, login in pending.items()}
    else:
        session.invalidate()  # nothing left: the cookie is deleted


def match_state(pending: Mapping[str, PendingLogin], state: str) -> str | None:
    """The pending state equal to `state`, compared in constant time against every one."""
    found = None
    for candidate in pending:
        if hmac.compare_digest(candidate.encode(), state.encode()):
            found = candidate
    return found


# --- app wiring -----------------------------------------------------------------------------


@dataclass
class Consent:
    """Per-app consent state: the cookie storages (made at startup) and the clock."""

    settings: Settings
    clock: Clock
    # One storage per value of the cookie's Secure flag; both use the same key.
    storages: dict[bool, EncryptedCookieStorage] = field(default_factory=dict, repr=False)
    # The callback paths the router serves (fixed at start; a reload can use only these).
    callback_paths: frozenset[str] = frozenset()

    async def startup(self, _app: web.Application) -> None:
        key = await asyncio.to_thread(session_key, self.settings)
        fernet = Fernet(key)
        for secure in (False, True):
            self.storages[secure] = EncryptedCookieStorage(
                fernet,
                cookie_name=SESSION_COOKIE,
                max_age=SESSION_MAX_AGE_SECONDS,
                path="/",
                secure=secure or None,
                httponly=True,
                samesite="Lax",
            )

    def storage_for(self, connection: Connection) -> EncryptedCookieStorage:
        """Secure cookies when the browser comes back over https."""
        grant = connection.consent
        return self.storages[grant is not None and URL(grant.redirect_uri).scheme == "https"]

    async def load(self, request: web.Request) -> Session:
        return await self.storages[False].load_session(request)


CONSENT = web.AppKey("consent", Consent)
