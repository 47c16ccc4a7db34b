"""The /_proxy/ page in a real headless Chromium: enter the key, Connect, consent, linked.

Debian's `chromium` (installed by `make test`), driven by Playwright for Python over the
DevTools protocol; Playwright's own browser download is never used. The sandbox asks for
consent with an Allow / Deny page, as the real identity service does. Screenshots go to
test-artifacts/ (not committed).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import unused_port
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect
from pytest_aiohttp import AiohttpServer

from proxy.app import create_app
from proxy.config import ConnectionSettings, Settings, StoreSettings
from proxy.core.secret import Secret
from proxy.ops.pages import ConnectionCard, KeySource, status_page
from proxy.sandbox import NMBRS_SCOPES, Sandbox, SandboxClient, SandboxSettings
from proxy.telemetry.metrics import ConnectionReport
from proxy.tokens.health import DAY, assess
from proxy.tokens.model import TokenState
from proxy.tokens.status import TokenStatus
from tests.conftest import ProxyServerFactory

ROOT = Path(__file__).parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLIENT_ID = "PartnerApp_browser_*$1"
CLIENT_SECRET = "s3cr:et%+browser"
KEY = "browser-test-subscription-key"
SCOPES = ("offline_access", "company.info.read", "employee.info.read")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = shutil.which("chromium")
    assert executable is not None, "Debian's chromium is needed: `make test` installs it"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable,
                                                    args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


async def start(aiohttp_server: AiohttpServer, proxy_server: ProxyServerFactory,
                tmp_path: Path) -> tuple[str, Sandbox]:
    """The sandbox (asking for consent) and a proxy whose connection has no key configured."""
    port = unused_port()
    proxy_url = f"http://127.0.0.1:{port}"
    sandbox = Sandbox(SandboxSettings(
        clients=(SandboxClient(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                               redirect_uris=(f"{proxy_url}/_proxy/callback",),
                               allowed_scopes=frozenset(NMBRS_SCOPES)),),
        subscription_keys=frozenset({KEY}),
        auto_consent=False,
    ))
    sandbox_url = str((await aiohttp_server(sandbox.app())).make_url("")).rstrip("/")
    settings = Settings(
        store=StoreSettings(path=tmp_path / "state" / "tokens.json"),
        connections=(
            ConnectionSettings(
                name="nmbrs",
                provider="nmbrs",
                prefix="/",
                upstream=sandbox_url,
                client_id=CLIENT_ID,
                client_secret=Secret(CLIENT_SECRET),
                issuer=sandbox_url,
                redirect_uri=f"{proxy_url}/_proxy/callback",
                scopes=SCOPES,
            ),
        ),
    )
    await proxy_server(create_app(settings), port=port)
    return proxy_url, sandbox


async def shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def test_link_an_account_from_the_page(
    browser: Browser, aiohttp_server: AiohttpServer, proxy_server: ProxyServerFactory,
    tmp_path: Path,
) -> None:
    proxy_url, sandbox = await start(aiohttp_server, proxy_server, tmp_path)
    page = await browser.new_page(viewport={"width": 1100, "height": 800})
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # the browser's own favicon.ico request is forwarded upstream, which has none
        if message.type == "error" and not message.location["url"].endswith("/favicon.ico"):
            problems.append(f"{message.text} at {message.location['url']}")

    page.on("console", on_console)
    page.on("pageerror", lambda e: problems.append(str(e)))

    await page.goto(f"{proxy_url}/_proxy/")
    card = page.locator("#connection-nmbrs")
    await expect(card).to_have_attribute("data-state", "not_linked")
    await expect(card.locator(".badge")).to_have_text("Not linked")
    await expect(card).to_contain_text("No subscription key")
    await shot(page, "connect-1-not-linked")

    # StackOne-Hub style: the key, then Connect
    await card.locator("form.connect input[name=subscription_key]").fill(KEY)
    await card.get_by_role("button", name="Connect").click()

    # the identity service's consent page
    await page.wait_for_url(re.compile(r".*/connect/authorize\?.*"))
    await expect(page.locator("#client-id")).to_have_text(CLIENT_ID)
    await expect(page.locator("#scopes")).to_contain_text("company.info.read")
    await shot(page, "connect-2-consent")
    await page.get_by_role("button", name="Allow").click()

    # back at the proxy: linked
    await page.wait_for_url(re.compile(r".*/_proxy/callback\?.*"))
    await expect(page.locator("h1")).to_have_text("Connection nmbrs works")
    await page.get_by_role("link", name="Back to all connections").click()
    await page.wait_for_url(f"{proxy_url}/_proxy/")
    card = page.locator("#connection-nmbrs")
    await expect(card).to_have_attribute("data-state", "linked")
    await expect(card.locator(".badge")).to_have_text("Linked")
    await expect(card).to_contain_text("entered on this page")
    await expect(card.locator("li.granted")).to_have_count(len(SCOPES))
    await expect(card.get_by_role("button", name="Reconnect")).to_be_visible()
    await expect(card.locator("[data-expires]")).to_have_text(re.compile(r"expires in (59|60) min"))
    await expect(page.locator("p.lead")).to_contain_text("1 of 1 connection ready")
    await shot(page, "connect-3-linked")

    # the proxy now serves requests with the token and the key entered on the page
    api = await page.request.get(f"{proxy_url}/api/companies")
    assert api.status == 200
    assert (await api.json())["data"]
    assert sandbox.stats.last_api_headers is not None
    assert sandbox.stats.last_api_headers["X-Subscription-Key"] == KEY

    # and a person can take it back
    await card.locator("summary", has_text="Revoke").click()
    await card.get_by_role("button", name="Revoke access").click()
    await page.wait_for_url(re.compile(r".*/_proxy/\?done=revoked.*"))
    await expect(page.locator(".notice")).to_contain_text("Revoked the grant of nmbrs")
    await expect(page.locator("#connection-nmbrs")).to_have_attribute("data-state", "not_linked")
    await shot(page, "connect-4-revoked")
    assert sandbox.stats.revocations == 1
    assert problems == []  # no script error, no Content-Security-Policy violation
    await page.close()


async def test_cards_with_warnings_fit_their_boxes(browser: Browser) -> None:
    """Every state and warning the page can show, rendered: no card overflows its box."""
    now = time.time()
    linked = TokenStatus(
        connection="x", linked=True, state=TokenState.FRESH, needs_consent=False, ready=True,
        expires_at=now + 3300, refresh_issued_at=now - 3600, last_refresh_at=now - 300,
        scopes=("offline_access", "company.info.read"), last_error=None, obtained_at=now - 300,
    )
    statuses = {
        "payroll-main": linked,
        "failing-refreshes": replace(linked, failures=4, failing_since=now - 900,
                                     last_error="temporarily_unavailable", expires_at=now + 200),
        "old-refresh-token": replace(linked, refresh_issued_at=now - 25 * DAY,
                                     scopes=("offline_access", "user.info.read")),
        "consent-needed": replace(linked, needs_consent=True, ready=False,
                                  state=TokenState.INVALID, expires_at=now - 60,
                                  last_error="invalid_grant", failures=1, failing_since=now),
    }
    cards = [
        ConnectionCard(
            name=name, provider="nmbrs", prefix=f"/{name}/", upstream="https://api.nmbrsapp.com",
            client_id="PartnerApp_example_*$1",
            scopes_asked=("offline_access", "company.info.read", "employee.info.read"),
            report=ConnectionReport(name, status, assess(
                status, now=now, refresh_token_lifetime=30 * DAY,
                has_subscription_key=name != "old-refresh-token"), now),
            key_source=KeySource.MISSING if name == "old-refresh-token" else KeySource.CONFIG,
            refresh_token_lifetime=30 * DAY,
        )
        for name, status in statuses.items()
    ]
    page = await browser.new_page(viewport={"width": 1100, "height": 900})
    await page.set_content(status_page(cards, now=now, csrf_token="t"))
    await shot(page, "cards-with-warnings")
    overflowing = await page.evaluate(
        "[...document.querySelectorAll('.card')]"
        ".filter(c => c.scrollWidth > c.clientWidth).map(c => c.id)"
    )
    assert overflowing == []
    # failing, refresh token near its end, no key, consent needed
    assert await page.locator(".card .box.warn").count() == 4
    await page.close()
