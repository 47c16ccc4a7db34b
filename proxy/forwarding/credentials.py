"""Which credential the upstream refused, and the ring of subscription keys to rotate through.

A 401 from Nmbrs comes from one of two places (NMBRS.md):
- the API itself, for a bad or expired token: it carries `WWW-Authenticate: Bearer …`
  (RFC 6750 §3), and a new token fixes it;
- the API gateway in front, for a missing or wrong subscription key: no bearer challenge, and an
  API-management JSON body `{"statusCode": 401, "message": "Access denied due to invalid
  subscription key. …"}`. A new token would not help; another key might.

With several keys configured (primary, secondary), a key the gateway refuses makes the whole
connection move on to the next key, so that a key can be regenerated in the developer portal
without downtime: switch the apps to the secondary, regenerate the primary, and so on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Final

from multidict import MultiMapping

from proxy.core.secret import Secret

log = logging.getLogger(__name__)

# A gateway's key complaint is a short JSON document; a longer 401 body is not one.
KEY_COMPLAINT_MAX_BYTES: Final = 16 * 1024


def _bearer_challenge(headers: MultiMapping[str]) -> bool:
    return any(
        value.strip().lower().startswith("bearer")
        for value in headers.getall("WWW-Authenticate", ())
    )


def rejects_token(status: int, headers: MultiMapping[str], *, gateway_keyed: bool = True) -> bool:
    """The API (not a gateway) refused the access token itself.

    Behind a subscription-key gateway a 401 may be about the key: only the RFC 6750 §3 bearer
    challenge means the token. An upstream with no such gateway (Nomba, Nitro, most
    client-credentials APIs) means the token by any 401, since many answer without a challenge.
    """
    return status == 401 and (not gateway_keyed or _bearer_challenge(headers))


def may_reject_key(status: int, headers: MultiMapping[str]) -> bool:
    """A 401 without a bearer challenge: its body says whether the key was refused."""
    return status == 401 and not _bearer_challenge(headers)


def rejects_key(status: int, headers: MultiMapping[str], body: bytes) -> bool:
    """The gateway refused the subscription key (missing, wrong or disabled)."""
    if not may_reject_key(status, headers) or len(body) > KEY_COMPLAINT_MAX_BYTES:
        return False
    try:
        document = json.loads(body)
    except ValueError:
        return False
    if not isinstance(document, dict):
        return False
    message = document.get("message")
    return isinstance(message, str) and "subscription key" in message.lower()


class KeyRing:
    """The connection's subscription keys; `current` is the one sent. Never shows a key."""

    def __init__(self, connection: str, keys: Sequence[Secret]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self.connection = connection
        self._keys = tuple(keys)
        self._current = 0
        self.rotations = 0

    def __repr__(self) -> str:
        return f"KeyRing({self.connection!r}, keys={len(self._keys)}, current={self._current})"

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def current(self) -> int:
        return self._current

    def value(self, index: int) -> str:
        return self._keys[index].reveal()

    def rotate(self, refused: int) -> bool:
        """The gateway refused key `refused`: move on to the next one, if there is another.

        False when there is none, or when another request has moved on already (requests that
        were refused together make one switch, not one each).
        """
        if len(self._keys) < 2 or refused != self._current:
            return False
        self._current = (refused + 1) % len(self._keys)
        self.rotations += 1
        log.warning(
            "connection %s: the gateway refused subscription key #%d; switching to key #%d",
            self.connection,
            refused + 1,
            self._current + 1,
        )
        return True
