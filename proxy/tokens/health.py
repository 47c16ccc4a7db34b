"""How a connection is doing, judged from its TokenStatus and a clock reading: pure, no I/O.

The status page, readiness and the metrics all show this one judgement, so a warning on the
page and an alert on a metric never disagree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from proxy.tokens.status import TokenStatus

DAY: Final = 86400.0
# Warn this long before the refresh token reaches the end of its lifetime (at most half of it).
REFRESH_TOKEN_WARNING_SECONDS: Final = 7 * DAY


class LinkState(enum.Enum):
    LINKED = "linked"  # serving, refreshes succeed
    FAILING = "failing"  # linked, but the last refresh attempts failed (network, 5xx, ...)
    NEEDS_CONSENT = "needs_consent"  # the grant is gone: a person must connect again
    NOT_LINKED = "not_linked"  # nobody has connected it yet (machine credentials: no token yet)
    REFUSED = "credentials_refused"  # machine credentials the provider refuses


class Concern(enum.Enum):
    """What the page warns about and `nmbrs_proxy_connection_warning` reports; names only."""

    CONSENT_REQUIRED = "consent_required"
    CREDENTIALS_REFUSED = "credentials_refused"
    REFRESH_FAILING = "refresh_failing"
    REFRESH_TOKEN_EXPIRING = "refresh_token_expiring"  # noqa: S105 - a warning's name
    NO_REFRESH_TOKEN = "no_refresh_token"  # noqa: S105 - a warning's name
    NO_SUBSCRIPTION_KEY = "no_subscription_key"


@dataclass(frozen=True)
class Assessment:
    state: LinkState
    concerns: frozenset[Concern]
    # When the refresh token stops working, as far as its lifetime tells (None: no such token).
    refresh_token_expires_at: float | None

    def has(self, concern: Concern) -> bool:
        return concern in self.concerns


def warning_window(lifetime: float) -> float:
    return min(REFRESH_TOKEN_WARNING_SECONDS, lifetime / 2)


def assess(
    status: TokenStatus,
    *,
    now: float,
    refresh_token_lifetime: float,
    has_subscription_key: bool,
    interactive: bool = True,
) -> Assessment:
    """`interactive`: a person links the connection (consent). Machine credentials fetch a new
    token by themselves, so their refresh token (if any) is nothing to warn about."""
    concerns: set[Concern] = set()
    if not has_subscription_key:
        concerns.add(Concern.NO_SUBSCRIPTION_KEY)
    if status.needs_consent and not interactive:
        concerns.add(Concern.CREDENTIALS_REFUSED)
        return Assessment(LinkState.REFUSED, frozenset(concerns), None)
    if not status.linked:
        return Assessment(LinkState.NOT_LINKED, frozenset(concerns), None)

    expires_at = None
    if not interactive:
        pass
    elif status.refresh_issued_at is None:
        concerns.add(Concern.NO_REFRESH_TOKEN)
    else:
        expires_at = status.refresh_issued_at + refresh_token_lifetime
        if expires_at - now <= warning_window(refresh_token_lifetime):
            concerns.add(Concern.REFRESH_TOKEN_EXPIRING)

    if status.needs_consent:
        concerns.add(Concern.CONSENT_REQUIRED)
        state = LinkState.NEEDS_CONSENT
    elif status.failures > 0:
        concerns.add(Concern.REFRESH_FAILING)
        state = LinkState.FAILING
    else:
        state = LinkState.LINKED
    return Assessment(state, frozenset(concerns), expires_at)
