"""What an operator can do to a connection, once: the page's forms and the JSON API both call
these, and each turns the outcome into its own answer (a redirect, or JSON).

An action that cannot be done raises `Refused` with an HTTP status and the words a person
needs; nothing in those words comes from a secret.
"""

from __future__ import annotations

import enum
import logging

from proxy.forwarding.connection import Connection, valid_subscription_key
from proxy.oauth.protocol import GrantError
from proxy.tokens.store import StoreError

log = logging.getLogger(__name__)


class Refused(Exception):
    def __init__(self, status: int, title: str, detail: str, slug: str) -> None:
        super().__init__(f"{title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug


class Revoked(enum.Enum):
    DONE = "revoked"
    # The identity service ended the grant, but the store still holds the (dead) tokens.
    UNSAVED = "revoked-unsaved"


async def revoke(connection: Connection, *, by: str) -> Revoked:
    """End the grant at the identity service and forget it in the store (every replica hears)."""
    try:
        revoked = await connection.manager.revoke()
    except GrantError as exc:
        log.warning("revoking the grant of connection %s failed: %s", connection.name, exc.error)
        raise Refused(
            502, "The grant could not be revoked",
            f"The identity service did not confirm the revocation: {exc.error}. Nothing was "
            "changed here; the connection stays linked. Try again in a moment.",
            "revoke-failed",
        ) from exc
    except StoreError:
        log.exception("revoked connection %s but could not update the store", connection.name)
        return Revoked.UNSAVED
    if not revoked:
        raise Refused(409, "Nothing to revoke", f"{connection.name} is not linked.", "not-linked")
    log.info("grant of connection %s revoked from the %s", connection.name, by)
    return Revoked.DONE


async def replace_subscription_key(connection: Connection, key: str, *, by: str) -> None:
    """Keep `key` with the connection's tokens, so every replica sends it from now on."""
    if not valid_subscription_key(key):
        raise Refused(
            400, "That subscription key cannot be right",
            "A subscription key is up to 256 visible characters, without spaces. Nothing was "
            "changed.",
            "invalid-subscription-key",
        )
    try:
        await connection.manager.set_subscription_key(key)
    except ValueError:
        raise Refused(
            409, "Connect first",
            f"{connection.name} is not linked yet: enter the key in its Connect form, and it "
            "is kept once the account is linked.",
            "not-linked",
        ) from None
    except StoreError:
        log.exception("could not save the subscription key of connection %s", connection.name)
        raise Refused(
            503, "The key could not be saved",
            "The token store refused the write (see the proxy's log). Nothing was changed.",
            "store-unavailable",
        ) from None
    log.info("subscription key of connection %s replaced from the %s", connection.name, by)


def check_reconnectable(connection: Connection) -> None:
    """Only a connection a person consents to has a login to start."""
    if connection.consent is None:
        raise Refused(
            409, "Nothing to reconnect",
            f"{connection.name} gets its tokens from its client credentials, without a person; "
            "it reconnects by itself.",
            "not-interactive",
        )
