"""What a connection's status says, from the set it uses and its failure record, as a table."""

from __future__ import annotations

import pytest

from proxy.oauth.token_set import TokenSet
from proxy.tokens.model import TokenState
from proxy.tokens.status import NoEvents, TokenEvents, TokenStatus, describe

LINKED = TokenSet(access_token="secret-access", expires_at=2000.0, obtained_at=1000.0,
                  refresh_token="secret-refresh", refresh_issued_at=900.0,
                  scopes=("read", "write"), version=3)
KEYED = LINKED.with_subscription_key("entered-on-the-page")


@pytest.mark.parametrize(
    ("tokens", "state", "needs_consent", "linked", "ready"),
    [
        (None, TokenState.INVALID, False, False, False),  # nobody linked it yet
        (None, TokenState.INVALID, True, False, False),
        (LINKED, TokenState.FRESH, False, True, True),
        (LINKED, TokenState.STALE, False, True, True),  # still serves while it is renewed
        (LINKED, TokenState.INVALID, False, True, False),  # waits for a refresh
        (LINKED, TokenState.FRESH, True, True, False),  # refused: consent first
        (LINKED, TokenState.INVALID, True, True, False),
    ],
)
def test_linked_and_ready(
    *, tokens: TokenSet | None, state: TokenState, needs_consent: bool, linked: bool, ready: bool
) -> None:
    status = describe("nmbrs", tokens, state, needs_consent=needs_consent, last_refresh_at=None,
                      last_error=None, failures=0, failing_since=None)
    assert (status.linked, status.ready) == (linked, ready)
    assert status.state is state
    assert status.needs_consent is needs_consent


def _record(tokens: TokenSet | None, state: TokenState) -> TokenStatus:
    return describe("nmbrs", tokens, state, needs_consent=False, last_refresh_at=950.0,
                    last_error="invalid_grant", failures=2, failing_since=940.0)


@pytest.mark.parametrize(
    ("tokens", "state", "expected"),
    [
        (None, TokenState.INVALID, TokenStatus(
            connection="nmbrs", linked=False, state=TokenState.INVALID, needs_consent=False,
            ready=False, expires_at=None, refresh_issued_at=None, last_refresh_at=950.0,
            scopes=(), last_error="invalid_grant", obtained_at=None, failures=2,
            failing_since=940.0, stored_subscription_key=False)),
        (LINKED, TokenState.FRESH, TokenStatus(
            connection="nmbrs", linked=True, state=TokenState.FRESH, needs_consent=False,
            ready=True, expires_at=2000.0, refresh_issued_at=900.0, last_refresh_at=950.0,
            scopes=("read", "write"), last_error="invalid_grant", obtained_at=1000.0,
            failures=2, failing_since=940.0, stored_subscription_key=False)),
        (KEYED, TokenState.STALE, TokenStatus(
            connection="nmbrs", linked=True, state=TokenState.STALE, needs_consent=False,
            ready=True, expires_at=2000.0, refresh_issued_at=900.0, last_refresh_at=950.0,
            scopes=("read", "write"), last_error="invalid_grant", obtained_at=1000.0,
            failures=2, failing_since=940.0, stored_subscription_key=True)),
    ],
)
def test_every_field_comes_from_the_set_or_the_record(
    tokens: TokenSet | None, state: TokenState, expected: TokenStatus
) -> None:
    assert _record(tokens, state) == expected


def test_the_status_carries_no_secret() -> None:
    status = describe("nmbrs", KEYED, TokenState.FRESH, needs_consent=False,
                      last_refresh_at=None, last_error=None, failures=0, failing_since=None)
    shown = repr(status)
    assert "secret" not in shown
    assert "entered-on-the-page" not in shown


def test_nobody_listening_hears_everything_and_does_nothing() -> None:
    events: TokenEvents = NoEvents()
    events.refreshed("nmbrs")
    events.refresh_failed("nmbrs", error="invalid_grant", fatal=True)
    events.store_failed("nmbrs", operation="save")
