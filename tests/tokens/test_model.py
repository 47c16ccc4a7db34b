from __future__ import annotations

import pytest

from proxy.oauth.token_set import TokenSet
from proxy.tokens.model import TokenState, token_state


def _tokens(obtained_at: float, lifetime: float) -> TokenSet:
    return TokenSet(access_token="a", expires_at=obtained_at + lifetime, obtained_at=obtained_at)


@pytest.mark.parametrize(
    ("lifetime", "margin", "age", "expected"),
    [
        (3600, 300, 0, TokenState.FRESH),
        (3600, 300, 3299, TokenState.FRESH),
        (3600, 300, 3300, TokenState.STALE),  # five minutes early
        (3600, 300, 3589, TokenState.STALE),
        (3600, 300, 3590, TokenState.INVALID),  # ten seconds of safety before exp
        (3600, 300, 9999, TokenState.INVALID),
        (3600, 0, 3589, TokenState.FRESH),  # no margin: fresh until unusable
        (10, 300, 4.9, TokenState.FRESH),  # margin capped at half the lifetime
        (10, 300, 5, TokenState.STALE),
        (10, 300, 9, TokenState.INVALID),  # safety capped at a tenth of the lifetime
        (10, 300, 8.9, TokenState.STALE),
    ],
)
def test_token_state(lifetime: float, margin: float, age: float, expected: TokenState) -> None:
    assert token_state(_tokens(1000.0, lifetime), 1000.0 + age, margin) is expected


def test_no_tokens_is_invalid() -> None:
    assert token_state(None, 0.0, 300) is TokenState.INVALID


def test_json_round_trip_and_repr_hides_tokens() -> None:
    tokens = TokenSet(access_token="secret-access", expires_at=2.0, obtained_at=1.0,
                      refresh_token="secret-refresh", refresh_issued_at=1.0,
                      scopes=("a", "b"), version=7)
    assert TokenSet.from_json(tokens.to_json()) == tokens
    assert "secret" not in repr(tokens)
