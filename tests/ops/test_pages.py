"""The HTML pages, rendered from plain data without a server."""

from __future__ import annotations

from dataclasses import replace

import pytest

from proxy.ops.layout import format_duration, format_relative, format_utc
from proxy.ops.outcome_pages import linked_page, problem_page
from proxy.ops.pages import ConnectionCard, KeySource, Notice, expiry_phrase, status_page
from proxy.telemetry.metrics import ConnectionReport
from proxy.tokens.health import DAY, assess
from proxy.tokens.model import TokenState
from proxy.tokens.status import TokenStatus

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
HOSTILE = '<img src=x onerror="alert(1)">&\'"'
CSRF = "csrf-token-value"
LIFETIME = 30 * DAY

UNLINKED = TokenStatus(
    connection="nmbrs",
    linked=False,
    state=TokenState.INVALID,
    needs_consent=False,
    ready=False,
    expires_at=None,
    refresh_issued_at=None,
    last_refresh_at=None,
    scopes=(),
    last_error=None,
)
FRESH = replace(
    UNLINKED,
    linked=True,
    state=TokenState.FRESH,
    ready=True,
    expires_at=NOW + 55 * 60,
    refresh_issued_at=NOW - 2 * 3600,
    last_refresh_at=NOW - 5 * 60,
    scopes=("offline_access", "company.info.read"),
    obtained_at=NOW - 5 * 60,
)




@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "0 s"),
        (0, "0 s"),
        (59.9, "59 s"),
        (60, "1 min"),
        (3599, "59 min"),
        (3600, "1 h"),
        (3660, "1 h 1 min"),
        (47 * 3600 + 59 * 60, "47 h 59 min"),
        (48 * 3600, "2 d"),
        (30 * 86400, "30 d"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("timestamp", "text"),
    [
        (NOW + 600, "in 10 min"),
        (NOW, "in 0 s"),
        (NOW - 90, "1 min ago"),
        (NOW - 3 * 86400, "3 d ago"),
    ],
)
def test_format_relative(timestamp: float, text: str) -> None:
    assert format_relative(timestamp, NOW) == text


@pytest.mark.parametrize(
    ("expires_at", "text"),
    [(NOW + 600, "expires in 10 min"), (NOW, "expires in 0 s"), (NOW - 90, "expired 1 min ago")],
)
def test_expiry_phrase(expires_at: float, text: str) -> None:
    assert expiry_phrase(expires_at, NOW) == text


def test_format_utc() -> None:
    assert format_utc(0) == "1970-01-01 00:00:00 UTC"
    assert format_utc(NOW) == "2027-01-15 08:00:00 UTC"


def card(
    status: TokenStatus,
    *,
    key_source: KeySource = KeySource.CONFIG,
    asked: tuple[str, ...] = ("offline_access", "company.info.read"),
    now: float = NOW,
    **overrides: str,
) -> ConnectionCard:
    fields = {
        "name": "nmbrs",
        "provider": "nmbrs",
        "prefix": "/",
        "upstream": "https://api.nmbrsapp.com",
        "client_id": "PartnerApp_x*$y",
        **overrides,
    }
    assessment = assess(
        status,
        now=now,
        refresh_token_lifetime=LIFETIME,
        has_subscription_key=key_source is not KeySource.MISSING,
    )
    report = ConnectionReport(fields["name"], status, assessment, now)
    return ConnectionCard(
        name=fields["name"],
        provider=fields["provider"],
        prefix=fields["prefix"],
        upstream=fields["upstream"],
        client_id=fields["client_id"],
        scopes_asked=asked,
        report=report,
        key_source=key_source,
        refresh_token_lifetime=LIFETIME,
    )


def page_of(*cards: ConnectionCard, notice: Notice | None = None) -> str:
    return status_page(cards, now=NOW, csrf_token=CSRF, nonce="n0nce", notice=notice)


@pytest.mark.parametrize(
    ("status", "present", "absent"),
    [
        pytest.param(
            UNLINKED,
            [
                'data-state="not_linked"',
                '<span class="badge not-linked">Not linked</span>',
                ">Connect</button>",
                'name="subscription_key"',  # a key can come along with Connect
                "0 of 1 connection ready",
                '<li class="asked">company.info.read</li>',
            ],
            ["Reconnect", "Revoke", "box warn"],
            id="not-linked",
        ),
        pytest.param(
            FRESH,
            [
                'data-state="linked"',
                '<span class="badge linked">Linked</span>',
                ">Reconnect</button>",
                ">Revoke access</button>",
                "fresh · <span",
                f'data-expires="{NOW + 55 * 60:.0f}">expires in 55 min</span>',
                "2027-01-15 08:55:00 UTC",
                "<dt>Last refresh</dt><dd>5 min ago</dd>",
                "<dt>Refresh token</dt><dd>2 h old</dd>",
                '<li class="granted" title="granted">company.info.read</li>',
                "1 of 1 connection ready",
            ],
            [">Connect</button>", "box warn"],
            id="linked",
        ),
        pytest.param(
            replace(FRESH, state=TokenState.STALE, expires_at=NOW + 120),
            ["stale · <span", ">expires in 2 min</span>"],
            ["box warn"],
            id="stale",
        ),
        pytest.param(
            replace(
                FRESH,
                state=TokenState.INVALID,
                ready=False,
                needs_consent=True,
                expires_at=NOW - 300,
                last_error="invalid_grant",
                failures=1,
                failing_since=NOW - 300,
            ),
            [
                'data-state="needs_consent"',
                '<span class="badge needs-consent">Needs consent</span>',
                "refused the refresh token (invalid_grant)",
                ">expired 5 min ago</span>",
                ">Reconnect</button>",
            ],
            ["Refreshing the token has failed"],
            id="needs-consent",
        ),
        pytest.param(
            replace(
                FRESH,
                last_error="temporarily_unavailable",
                failures=3,
                failing_since=NOW - 600,
                expires_at=NOW + 240,
            ),
            [
                'data-state="failing"',
                '<span class="badge failing">Failing</span>',
                (
                    "Refreshing the token has failed 3 attempts in a row since "
                    "2027-01-15 07:50:00 UTC (last error: temporarily_unavailable)"
                ),
                "expires in 4 min; requests fail after that",
            ],
            ["refused the refresh token"],
            id="failing",
        ),
        pytest.param(
            replace(FRESH, refresh_issued_at=NOW - 24 * DAY),
            [
                'data-state="linked"',
                "<dt>Refresh token</dt><dd>24 d old</dd>",
                "reaches the end of its 30 d lifetime in 6 d",
            ],
            [],
            id="refresh-token-within-seven-days",
        ),
        pytest.param(
            replace(FRESH, refresh_issued_at=NOW - 22 * DAY),
            ["<dt>Refresh token</dt><dd>22 d old</dd>"],
            ["box warn"],
            id="refresh-token-eight-days-left",
        ),
        pytest.param(
            replace(FRESH, refresh_issued_at=NOW - 31 * DAY),
            ["older than its 30 d lifetime"],
            [],
            id="refresh-token-lapsed",
        ),
        pytest.param(
            replace(FRESH, refresh_issued_at=None),
            ["<dt>Refresh token</dt><dd>none</dd>", "There is no refresh token"],
            [],
            id="no-refresh-token",
        ),
        pytest.param(
            replace(FRESH, scopes=("offline_access", "user.info.read")),
            [
                '<li class="granted" title="granted">offline_access</li>',
                '<li class="missing" title="asked for, not granted">company.info.read</li>',
                '<li class="extra" title="granted, not asked for">user.info.read</li>',
            ],
            [],
            id="scopes-granted-vs-asked",
        ),
    ],
)
def test_status_page_cards(status: TokenStatus, present: list[str], absent: list[str]) -> None:
    page = page_of(card(status))
    for text in present:
        assert text in page
    for text in absent:
        assert text not in page
    assert page.count('name="csrf_token" value="csrf-token-value"') == page.count("<form")


@pytest.mark.parametrize(
    ("status", "key_source", "present", "absent"),
    [
        pytest.param(
            FRESH,
            KeySource.CONFIG,
            ["<dd>from the configuration<form", ">Replace key</button>"],
            ["No subscription key"],
            id="configured",
        ),
        pytest.param(
            FRESH,
            KeySource.PAGE,
            ["<dd>entered on this page<form", ">Replace key</button>"],
            ["No subscription key"],
            id="entered-on-the-page",
        ),
        pytest.param(
            FRESH,
            KeySource.MISSING,
            ["<dd>missing<form", ">Save key</button>", "No subscription key", "0 of 1"],
            [],
            id="missing-when-linked",
        ),
        pytest.param(
            UNLINKED,
            KeySource.MISSING,
            ['placeholder="subscription key" required>', "No subscription key"],
            ["Save key"],  # before linking, the key comes with Connect
            id="missing-before-linking",
        ),
        pytest.param(
            UNLINKED,
            KeySource.CONFIG,
            ['placeholder="subscription key">'],  # optional: it would replace the configured one
            ["required>"],
            id="configured-before-linking",
        ),
    ],
)
def test_status_page_subscription_key(
    status: TokenStatus, key_source: KeySource, present: list[str], absent: list[str]
) -> None:
    page = page_of(card(status, key_source=key_source))
    for text in present:
        assert text in page
    for text in absent:
        assert text not in page
    assert 'type="password" name="subscription_key" autocomplete="off"' in page


@pytest.mark.parametrize(
    ("status", "present"),
    [
        pytest.param(
            UNLINKED,
            ['<span class="badge not-linked">No token yet</span>', "0 of 1 connection ready"],
            id="no-token-yet",
        ),
        pytest.param(
            replace(FRESH, refresh_issued_at=None, scopes=()),
            ['<span class="badge linked">Linked</span>', "55 min</span>", "Revoke access"],
            id="linked-without-refresh-token",  # nothing to warn about: it fetches a new one
        ),
        pytest.param(
            replace(FRESH, refresh_issued_at=NOW - 40 * DAY),
            ['<span class="badge linked">Linked</span>'],
            id="old-refresh-token",  # a machine connection does not depend on it
        ),
        pytest.param(
            replace(FRESH, state=TokenState.INVALID, ready=False, needs_consent=True,
                    expires_at=NOW - 300, last_error="invalid_client", failures=2),
            ['<span class="badge credentials-refused">Credentials refused</span>',
             'data-state="credentials_refused"',
             "The provider refused the credentials (invalid_client)"],
            id="credentials-refused",
        ),
    ],
)
def test_machine_credentials_cards_offer_no_consent(status: TokenStatus,
                                                    present: list[str]) -> None:
    machine = replace(card(status, asked=()), provider="nomba", key_source=None,
                      interactive=False)
    machine = replace(machine, report=replace(machine.report, assessment=assess(
        status, now=NOW, refresh_token_lifetime=LIFETIME, has_subscription_key=True,
        interactive=False)))
    page = page_of(machine)
    for text in present:
        assert text in page
    assert "Machine credentials: the proxy fetches its tokens by itself" in page
    for text in ("Connect</button>", "/_proxy/login", "Needs consent", "Not linked",
                 "Subscription key", "refresh token", "There is no refresh token"):
        assert text not in page


def test_status_page_lists_every_connection() -> None:
    page = page_of(card(FRESH), card(UNLINKED, name="other", prefix="/other/"))
    assert "1 of 2 connections ready" in page
    assert page.count('<section class="card"') == 2
    assert 'id="connection-other" data-state="not_linked"' in page


def test_status_page_without_connections() -> None:
    assert "No connections are configured." in page_of()


def test_status_page_script_and_notice() -> None:
    page = page_of(card(FRESH), notice=Notice("ok", "Saved the key of <b>x</b>."))
    assert '<script nonce="n0nce">' in page
    assert '<div class="box ok notice" role="status"><p>Saved the key of &lt;b&gt;x' in page
    assert "<script" not in status_page([card(FRESH)], now=NOW, csrf_token=CSRF)


def test_status_page_escapes_everything() -> None:
    status = replace(FRESH, scopes=(HOSTILE,), last_error=HOSTILE, failures=1)
    hostile_card = card(
        status,
        asked=(HOSTILE, "other"),
        name=HOSTILE,
        provider=HOSTILE,
        prefix=HOSTILE,
        upstream=HOSTILE,
        client_id=HOSTILE,
    )
    page = page_of(hostile_card)
    assert "<img" not in page
    assert 'onerror="' not in page
    escaped = "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&#x27;&quot;"
    # the name (heading, id, the hidden field of three forms), provider, client id, prefix,
    # upstream, the scope (granted and asked) and the error in the warning
    assert page.count(escaped) == 11


def test_linked_page() -> None:
    page = linked_page(
        connection="nmbrs", scopes=("offline_access", "a.b"), expires_at=NOW + 3600, now=NOW
    )
    assert "Connection nmbrs works" in page
    assert "<code>offline_access</code> <code>a.b</code>" in page
    assert "2027-01-15 09:00:00 UTC (in 1 h)" in page
    assert 'href="/_proxy/"' in page
    assert "box warn" not in page


def test_linked_page_with_a_warning_and_no_way_back() -> None:
    page = linked_page(
        connection=HOSTILE,
        scopes=(),
        expires_at=NOW + 60,
        now=NOW,
        warning=f"not saved {HOSTILE}",
        back_link=False,
    )
    assert "<img" not in page
    assert "none reported" in page
    assert "box warn" in page
    assert "close this window" in page
    assert 'href="/_proxy/"' not in page


@pytest.mark.parametrize(
    ("retry", "back_link", "present", "absent"),
    [
        (None, True, ['href="/_proxy/"'], ["Try again"]),
        ("nmbrs", True, ['href="/_proxy/login?connection=nmbrs"', "Try again"], []),
        ("a b&c", False, ['href="/_proxy/login?connection=a%20b%26c"'], ['href="/_proxy/"']),
        (None, False, [], ["<a "]),
    ],
)
def test_problem_page(
    retry: str | None, back_link: bool, present: list[str], absent: list[str]
) -> None:
    page = problem_page(
        f"Failed {HOSTILE}",
        [f"first {HOSTILE}", "second line"],
        retry_connection=retry,
        back_link=back_link,
    )
    assert "<img" not in page
    assert "<p>second line</p>" in page
    assert "<title>Failed &lt;img" in page
    for text in present:
        assert text in page
    for text in absent:
        assert text not in page
