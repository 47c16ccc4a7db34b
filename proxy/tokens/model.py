"""A token set's state on a clock reading (FRESH, STALE, INVALID): pure arithmetic, no I/O."""

from __future__ import annotations

import enum

from proxy.oauth.token_set import TokenSet


class TokenState(enum.Enum):
    FRESH = "fresh"  # use it, nothing to do
    STALE = "stale"  # use it, and refresh in the background
    INVALID = "invalid"  # do not use it: wait for a refresh


def token_state(tokens: TokenSet | None, now: float, margin: float) -> TokenState:
    if tokens is None or now >= tokens.unusable_at:
        return TokenState.INVALID
    if now >= tokens.refresh_at(margin):
        return TokenState.STALE
    return TokenState.FRESH
