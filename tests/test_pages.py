"""The HTML pages, rendered from plain data without a server."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from proxy.pages import (
    ConnectionRow,
    format_duration,
    format_relative,
    format_utc,
    linked_page,
    problem_page,
    status_page,
)
from proxy.tokens.manager import TokenStatus
from proxy.tokens.model import TokenState

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
HOSTILE = '<img src=x onerror="alert(1)">&\'"'

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
)


def row(status: TokenStatus, *, interactive: bool = True, **overrides: str) -> ConnectionRow:
    fields = {
        "name": "nmbrs",
        "provider": "nmbrs",
        "prefix": "/",
        "upstream": "https://api.nmbrsapp.com",
        "client_id": "PartnerApp_x*$y",
        **overrides,
    }
    return ConnectionRow(status=status, interactive=interactive, **fields)


def cells(page: str) -> list[str]:
    return re.findall(r"<td>(.*?)</td>", page, flags=re.DOTALL)


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


def test_format_utc() -> None:
    assert format_utc(0) == "1970-01-01 00:00:00 UTC"
    assert format_utc(NOW) == "2027-01-15 08:00:00 UTC"


@pytest.mark.parametrize(
    ("status", "present", "absent"),
    [
        (
            UNLINKED,
            ["Connect</a>", "not linked", "needs consent", "0 of 1 connection ready"],
            ["Reconnect", "badge fresh"],
        ),
        (
            FRESH,
            [
                "Reconnect</a>",
                '<span class="badge fresh">fresh</span>',
                "2027-01-15 08:55:00 UTC",
                "in 55 min",
                "<code>company.info.read</code>",
                "<td>2 h</td>",
                "1 of 1 connection ready",
            ],
            ["Connect</a>", "needs consent", "not linked"],
        ),
        (
            replace(FRESH, state=TokenState.STALE, expires_at=NOW + 120),
            ['<span class="badge stale">stale</span>', "in 2 min"],
            [],
        ),
        (
            replace(
                FRESH,
                state=TokenState.INVALID,
                ready=False,
                needs_consent=True,
                expires_at=NOW - 300,
                last_error="invalid_grant",
            ),
            [
                '<span class="badge invalid">invalid</span>',
                '<span class="badge consent">needs consent</span>',
                "5 min ago",
                "<code>invalid_grant</code>",
                "Reconnect</a>",
            ],
            [],
        ),
        (
            replace(FRESH, refresh_issued_at=None),
            ["no refresh token"],
            [],
        ),
    ],
)
def test_status_page_rows(status: TokenStatus, present: list[str], absent: list[str]) -> None:
    page = status_page([row(status)], now=NOW)
    for text in present:
        assert text in page
    for text in absent:
        assert text not in page
    assert 'href="/_proxy/login?connection=nmbrs"' in page
    assert len(cells(page)) == 9


@pytest.mark.parametrize(
    ("status", "present"),
    [
        (
            UNLINKED,
            ['<span class="badge none">no token yet</span> <small>fetched automatically</small>',
             "0 of 1 connection ready"],
        ),
        (
            replace(FRESH, refresh_issued_at=None, scopes=()),
            ['<span class="badge fresh">fresh</span>', "no refresh token", "in 55 min"],
        ),
        (
            replace(FRESH, state=TokenState.INVALID, ready=False, needs_consent=True,
                    expires_at=NOW - 300, last_error="invalid_client"),
            ['<span class="badge consent">credentials refused</span>',
             "<code>invalid_client</code>"],
        ),
    ],
)
def test_machine_credentials_rows_offer_no_consent(status: TokenStatus,
                                                   present: list[str]) -> None:
    page = status_page([row(status, interactive=False, provider="nomba")], now=NOW)
    for text in present:
        assert text in page
    assert "machine credentials: no consent needed" in page
    for text in ("Connect</a>", "/_proxy/login", "needs consent", "not linked"):
        assert text not in page
    assert len(cells(page)) == 9


def test_status_page_lists_every_connection() -> None:
    page = status_page([row(FRESH), row(UNLINKED, name="other", prefix="/other/")], now=NOW)
    assert "1 of 2 connections ready" in page
    assert page.count("<tr>") == 3  # the header and two rows
    assert 'href="/_proxy/login?connection=other"' in page


def test_status_page_without_connections() -> None:
    assert "No connections are configured." in status_page([], now=NOW)


def test_status_page_escapes_everything() -> None:
    status = replace(FRESH, scopes=(HOSTILE,), last_error=HOSTILE)
    hostile_row = row(
        status,
        name=HOSTILE,
        provider=HOSTILE,
        prefix=HOSTILE,
        upstream=HOSTILE,
        client_id=HOSTILE,
    )
    page = status_page([hostile_row], now=NOW)
    assert "<img" not in page
    assert 'onerror="' not in page
    assert page.count("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&#x27;&quot;") == 7
    assert "connection=%3Cimg%20src%3Dx%20onerror%3D%22alert%281%29%22%3E%26%27%22" in page


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
