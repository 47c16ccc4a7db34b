"""The decisions of the shared refresh protocol, as tables."""

from __future__ import annotations

import pytest

from proxy.oauth.token_set import TokenSet
from proxy.tokens.rules import (
    Step,
    after_conflict,
    after_reload,
    changed_since,
    is_newer,
    same_tokens,
)


def v(version: int, refresh: str = "r", access: str = "a") -> TokenSet:
    return TokenSet(access_token=f"{access}{version}", expires_at=2000.0, obtained_at=1000.0,
                    refresh_token=f"{refresh}{version}", version=version)


@pytest.mark.parametrize(
    ("candidate", "than", "expected"),
    [
        (None, None, False),
        (None, v(1), False),
        (v(1), None, True),  # anything beats nothing
        (v(2), v(1), True),
        (v(1), v(1), False),
        (v(1), v(2), False),
    ],
)
def test_is_newer(candidate: TokenSet | None, than: TokenSet | None, expected: bool) -> None:
    assert is_newer(candidate, than) is expected


@pytest.mark.parametrize(
    ("one", "other", "expected"),
    [
        (v(1), v(1), True),
        (v(1), v(2), False),
        (v(1), v(1).with_subscription_key("k").with_version(2), True),  # only the key changed
        (v(1), v(1).with_refusal("invalid_grant"), True),  # only marked
        (v(1), v(1, refresh="other"), False),
        (None, None, True),
        (None, v(1), False),
    ],
)
def test_same_tokens(one: TokenSet | None, other: TokenSet | None, expected: bool) -> None:
    assert same_tokens(one, other) is expected


@pytest.mark.parametrize(
    ("current", "stored", "expected"),
    [
        (v(1), v(2), Step.ADOPT),  # another replica renewed it: use theirs, call nobody
        (None, v(1), Step.ADOPT),  # not loaded yet (the store was down at start)
        (v(1), v(1), Step.REFRESH),  # the stored set is ours: renew it
        (v(1), v(1, refresh="other"), Step.REFRESH),  # same version: the store's is the truth
        (None, None, Step.REFRESH),  # nothing anywhere: the grant decides (consent or mint)
        (v(3), v(2), Step.RESTORE),  # the store went back (restored backup, lost writes)
        (v(1), None, Step.FORGET),  # unlinked (revoked) by another replica: the store wins
        (v(1), v(1).with_refusal("invalid_grant"), Step.ADOPT),  # refused elsewhere
    ],
)
def test_after_reload(current: TokenSet | None, stored: TokenSet | None, expected: Step) -> None:
    assert after_reload(current, stored) is expected


BASE = v(1)
RENEWED = v(2, refresh="new", access="new")


@pytest.mark.parametrize(
    ("ours", "base", "stored", "expected"),
    [
        (RENEWED, BASE, RENEWED, Step.KEEP),  # an earlier attempt landed; its answer was lost
        (RENEWED, BASE, v(2, access="consent"), Step.ADOPT),  # another version 2 was saved
        (RENEWED, BASE, v(3, refresh="linked"), Step.ADOPT),  # linked again meanwhile
        # A key entered (or a refusal marked) meanwhile: keep our renewed tokens, and that.
        (RENEWED, BASE, BASE.with_subscription_key("k").with_version(2), Step.MERGE),
        (RENEWED, BASE, BASE.with_refusal("invalid_grant"), Step.MERGE),
        (v(6, refresh="new"), v(5), v(3, refresh="old"), Step.RESTORE),  # store went back
        (RENEWED, BASE, None, Step.FORGET),  # unlinked meanwhile
        (v(1, access="linked"), None, v(1, refresh="x"), Step.ADOPT),  # a consent lost a race
    ],
)
def test_after_conflict(
    ours: TokenSet, base: TokenSet | None, stored: TokenSet | None, expected: Step
) -> None:
    assert after_conflict(ours, base, stored) is expected


@pytest.mark.parametrize(
    ("presented", "stored", "expected"),
    [
        (v(1), v(1), False),  # unchanged: consent is really needed
        (v(1), None, False),  # nothing to adopt
        (v(1), v(2), True),  # renewed elsewhere while our request was in flight
        (v(1), v(1, refresh="relinked"), True),  # same version, another refresh token
        (v(1), v(1).with_subscription_key("k").with_version(2), False),  # only the key
        (None, v(1), True),  # linked while we had nothing
        (None, None, False),
        (v(1), v(1).with_refusal("invalid_grant"), True),  # adopted, and it says: consent
    ],
)
def test_changed_since(presented: TokenSet | None, stored: TokenSet | None,
                       expected: bool) -> None:
    assert changed_since(presented, stored) is expected
