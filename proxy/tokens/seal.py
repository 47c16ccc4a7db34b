"""Token sets as stored entries: plain JSON, or sealed with Fernet when a key is configured.

Both backends store the same entry shape, so one codec serves both:

    no key:  {"access_token": ..., "refresh_token": ..., "version": 3, ...}   (TokenSet.to_json)
    a key:   {"fernet": "gAAAAA..."}   (the JSON above, encrypted and authenticated)

With a key, an unencrypted entry is refused rather than trusted: whoever can write the store
without the key could otherwise plant a token set of their own. Pure: no I/O, no logging.
"""

from __future__ import annotations

import json
from typing import Any, Final

from cryptography.fernet import Fernet, InvalidToken

from proxy.core.secret import Secret
from proxy.oauth.token_set import TokenSet

_SEALED: Final = "fernet"
_KEY: Final = "[store] encryption_key"


class SealError(ValueError):
    """An entry that cannot be turned back into a token set; the message says why."""


class Sealer:
    """Seals and opens stored entries with the store's encryption key (None: plain JSON)."""

    def __init__(self, key: Secret | None = None) -> None:
        self._fernet = None if key is None else Fernet(key.reveal().encode("ascii"))

    def __repr__(self) -> str:
        return f"Sealer(encrypted={self.encrypted})"

    @property
    def encrypted(self) -> bool:
        return self._fernet is not None

    def seal(self, tokens: TokenSet) -> dict[str, Any]:
        plain = tokens.to_json()
        if self._fernet is None:
            return plain
        sealed = self._fernet.encrypt(json.dumps(plain, separators=(",", ":")).encode())
        return {_SEALED: sealed.decode("ascii")}

    def open(self, entry: object) -> TokenSet:
        if not isinstance(entry, dict):
            raise SealError("is not a token set")
        if _SEALED in entry:
            plain = self._decrypt(entry[_SEALED])
        elif self._fernet is not None:
            raise SealError(
                f"is stored unencrypted, but {_KEY} is set: an entry written without the key "
                "is not trusted; link the connection again to store it encrypted"
            )
        else:
            plain = entry
        if not isinstance(plain, dict):
            raise SealError("is not a token set")
        try:
            return TokenSet.from_json(plain)
        except (KeyError, TypeError, ValueError):
            raise SealError("is not a valid token set") from None

    def _decrypt(self, sealed: object) -> object:
        if self._fernet is None:
            raise SealError(f"is encrypted, and {_KEY} is not set")
        if not isinstance(sealed, str):
            raise SealError("is not a token set")
        try:
            raw = self._fernet.decrypt(sealed.encode("ascii"))
        except (InvalidToken, UnicodeEncodeError):
            raise SealError(
                f"cannot be decrypted with {_KEY}: it was sealed with another key "
                "(or altered)"
            ) from None
        try:
            plain: object = json.loads(raw)
        except ValueError:
            raise SealError("is not a valid token set") from None
        return plain
