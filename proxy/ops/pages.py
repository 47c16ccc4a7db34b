"""The status page at /_proxy/, rendered from plain data: no I/O, no request, no secrets.

Every value that reaches the page goes through `esc` (`proxy.ops.layout`). The functions take
what they show and a `now` (seconds since the epoch) and return the whole document, so they
are tested with plain tables of cases. The pages a consent ends on are in
`proxy.ops.outcome_pages`.

The page is never given a token, a secret, a subscription key or an authorization code.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from proxy.ops.layout import (
    KEY_PATH,
    LOGIN_PATH,
    REVOKE_PATH,
    document,
    esc,
    format_duration,
    format_relative,
    format_utc,
    paragraphs,
)
from proxy.telemetry.metrics import ConnectionReport
from proxy.tokens.health import Concern, LinkState


class KeySource(enum.Enum):
    PAGE = "page"  # entered on this page, kept in the store with the tokens
    CONFIG = "config"  # from the configuration file
    MISSING = "missing"


@dataclass(frozen=True)
class ConnectionCard:
    """What the status page shows about one connection; `report` comes from the Connection."""

    name: str
    provider: str
    prefix: str
    upstream: str
    client_id: str
    scopes_asked: tuple[str, ...]
    report: ConnectionReport
    key_source: KeySource | None  # None: this connection sends no subscription key
    refresh_token_lifetime: float  # seconds
    # False for machine credentials: the proxy fetches their tokens, nobody links them.
    interactive: bool = True


@dataclass(frozen=True)
class Notice:
    """A one-line outcome shown at the top of the page after an action (never user text)."""

    kind: str  # "ok" or "warn"
    text: str


_STATE_LABELS: Final = {
    LinkState.LINKED: "Linked",
    LinkState.FAILING: "Failing",
    LinkState.NEEDS_CONSENT: "Needs consent",
    LinkState.NOT_LINKED: "Not linked",
    LinkState.REFUSED: "Credentials refused",
}

# Ticks the "expires in" countdowns once a second; the server-rendered text stands without it.
_COUNTDOWN_SCRIPT: Final = """
(function(){function f(s){s=Math.max(0,s);if(s<60)return Math.floor(s)+" s";var m=Math.floor(s/60);
if(m<60)return m+" min";var h=Math.floor(m/60);m=m%60;if(h<48)return m?h+" h "+m+" min":h+" h";
return Math.floor(h/24)+" d";}
function tick(){var now=Date.now()/1000;document.querySelectorAll("[data-expires]").forEach(
function(e){var d=parseFloat(e.getAttribute("data-expires"))-now;
e.textContent=d>=0?"expires in "+f(d):"expired "+f(-d)+" ago";});}
tick();setInterval(tick,1000);})();
""".strip()


def expiry_phrase(expires_at: float, now: float) -> str:
    """"expires in 5 min" or "expired 3 min ago" (the page's script ticks the same words)."""
    if expires_at >= now:
        return f"expires in {format_duration(expires_at - now)}"
    return f"expired {format_duration(now - expires_at)} ago"


def status_page(
    cards: Sequence[ConnectionCard],
    *,
    now: float,
    csrf_token: str,
    nonce: str | None = None,
    notice: Notice | None = None,
) -> str:
    ready = sum(1 for card in cards if card.report.ready)
    count = len(cards)
    body = [
        "<header>",
        "<h1>nmbrs-proxy</h1>",
        (
            f'<p class="lead">{ready} of {count} connection{"" if count == 1 else "s"} '
            f"ready · {esc(format_utc(now))}</p>"
        ),
        "</header>",
    ]
    if notice is not None:
        body.append(f'<div class="box {esc(notice.kind)} notice" role="status">'
                    f"<p>{esc(notice.text)}</p></div>")
    if not cards:
        body.append("<p>No connections are configured.</p>")
    body.append('<div class="cards">')
    body.extend(_card(card, now, csrf_token) for card in cards)
    body.append("</div>")
    if nonce is not None:
        body.append(f'<script nonce="{esc(nonce)}">{_COUNTDOWN_SCRIPT}</script>')
    return document("Connections", "\n".join(body))


def _card(card: ConnectionCard, now: float, csrf_token: str) -> str:
    report = card.report
    state = report.assessment.state
    slug = state.value.replace("_", "-")
    parts = [
        f'<section class="card" id="connection-{esc(card.name)}" data-state="{esc(state.value)}">',
        '<div class="card-head">',
        f"<h2>{esc(card.name)}</h2>",
        f'<span class="badge {esc(slug)}">{esc(_state_label(card))}</span>',
        "</div>",
        (
            f'<p class="meta">{esc(card.provider)} · client <code>{esc(card.client_id)}</code>'
            f" · <code>{esc(card.prefix)}</code> → {esc(card.upstream)}</p>"
        ),
    ]
    parts.extend(_warnings(card, now))
    parts.append('<dl class="facts">')
    parts.extend(_facts(card, now, csrf_token))
    parts.append("</dl>")
    parts.append(_actions(card, csrf_token))
    parts.append("</section>")
    return "\n".join(parts)


def _state_label(card: ConnectionCard) -> str:
    state = card.report.assessment.state
    if state is LinkState.NOT_LINKED and not card.interactive:
        return "No token yet"
    return _STATE_LABELS[state]


def _warnings(card: ConnectionCard, now: float) -> list[str]:
    status = card.report.status
    assessment = card.report.assessment
    out = []
    if assessment.has(Concern.CONSENT_REQUIRED):
        error = f" ({status.last_error})" if status.last_error else ""
        out.append(
            f"The identity service refused the refresh token{error}. The grant is gone: "
            "connect again to link the account."
        )
    if assessment.has(Concern.CREDENTIALS_REFUSED):
        error = f" ({status.last_error})" if status.last_error else ""
        out.append(
            f"The provider refused the credentials{error}: check the connection's client_id, "
            "client_secret and account settings. The proxy keeps asking, with backoff."
        )
    if assessment.has(Concern.REFRESH_FAILING):
        since = status.failing_since
        when = f" since {format_utc(since)}" if since is not None else ""
        error = f" (last error: {status.last_error})" if status.last_error else ""
        expiry = ""
        if status.expires_at is not None:
            expiry = (
                f" The current access token expires {format_relative(status.expires_at, now)}; "
                "requests fail after that unless a refresh succeeds."
                if status.expires_at > now
                else " The access token has expired: requests fail until a refresh succeeds."
            )
        attempts = "attempt" if status.failures == 1 else "attempts"
        out.append(
            f"Refreshing the token has failed {status.failures} {attempts} in a row{when}"
            f"{error}. The proxy keeps retrying.{expiry}"
        )
    expires = assessment.refresh_token_expires_at
    if assessment.has(Concern.REFRESH_TOKEN_EXPIRING) and expires is not None:
        lifetime = format_duration(card.refresh_token_lifetime)
        if expires > now:
            out.append(
                f"The refresh token reaches the end of its {lifetime} lifetime "
                f"{format_relative(expires, now)} ({format_utc(expires)}). A successful "
                "refresh renews it; otherwise connect again before then."
            )
        else:
            out.append(
                f"The refresh token is older than its {lifetime} lifetime: it has most likely "
                "lapsed. Connect again."
            )
    if assessment.has(Concern.NO_REFRESH_TOKEN):
        out.append(
            "There is no refresh token: the connection stops when the access token expires. "
            "Ask for the offline_access scope and connect again."
        )
    if assessment.has(Concern.NO_SUBSCRIPTION_KEY):
        out.append("No subscription key: requests are refused until one is entered below.")
    return [f'<div class="box warn">{paragraphs([line])}</div>' for line in out]


def _facts(card: ConnectionCard, now: float, csrf_token: str) -> list[str]:
    status = card.report.status
    rows: list[tuple[str, str]] = []
    if status.expires_at is not None:
        expiry = (
            f'{esc(status.state.value)} · <span data-expires="{status.expires_at:.0f}">'
            f"{esc(expiry_phrase(status.expires_at, now))}</span>"
            f" <small>({esc(format_utc(status.expires_at))})</small>"
        )
        rows.append(("Access token", expiry))
    else:
        rows.append(("Access token", "none"))
    if status.obtained_at is not None:
        rows.append(("Last refresh", esc(format_relative(status.obtained_at, now))))
    if status.refresh_issued_at is not None:
        rows.append(("Refresh token", esc(format_duration(now - status.refresh_issued_at))
                     + " old"))
    elif status.linked:
        rows.append(("Refresh token", "none"))
    if card.scopes_asked or status.scopes:
        granted = status.scopes if status.linked else None
        rows.append(("Scopes", _scopes(card.scopes_asked, granted)))
    if card.key_source is not None:
        rows.append(("Subscription key", _key_fact(card, card.key_source, csrf_token)))
    if card.report.learned_rate is not None:  # the upstream's 429s taught it a rate
        rows.append(("Upstream rate", esc(f"learned: {card.report.learned_rate:.1f}/s")))
    return [f"<dt>{esc(name)}</dt><dd>{value}</dd>" for name, value in rows]


def _scopes(asked: Sequence[str], granted: Sequence[str] | None) -> str:
    """Each scope asked for, marked granted or not; scopes granted without being asked."""
    if granted is None:
        items = [f'<li class="asked">{esc(scope)}</li>' for scope in asked]
        return f'<ul class="scopes" title="asked for">{"".join(items)}</ul>'
    have = set(granted)
    items = []
    for scope in asked:
        if scope in have:
            items.append(f'<li class="granted" title="granted">{esc(scope)}</li>')
        else:
            items.append(f'<li class="missing" title="asked for, not granted">{esc(scope)}</li>')
    wanted = set(asked)
    items.extend(
        f'<li class="extra" title="granted, not asked for">{esc(scope)}</li>'
        for scope in granted
        if scope not in wanted
    )
    return f'<ul class="scopes">{"".join(items)}</ul>'


def _hidden(csrf_token: str, connection: str) -> str:
    return (
        f'<input type="hidden" name="csrf_token" value="{esc(csrf_token)}">'
        f'<input type="hidden" name="connection" value="{esc(connection)}">'
    )


def _key_input(*, required: bool) -> str:
    return (
        '<input type="password" name="subscription_key" autocomplete="off" spellcheck="false" '
        f'maxlength="256" placeholder="subscription key"{" required" if required else ""}>'
    )


def _key_fact(card: ConnectionCard, key_source: KeySource, csrf_token: str) -> str:
    source = {
        KeySource.PAGE: "entered on this page",
        KeySource.CONFIG: "from the configuration",
        KeySource.MISSING: "missing",
    }[key_source]
    if not card.interactive:
        return esc(source)
    if not card.report.status.linked:
        hint = {
            KeySource.PAGE: "",
            KeySource.CONFIG: " <small>(a key entered with Connect replaces it)</small>",
            KeySource.MISSING: " <small>(enter it with Connect)</small>",
        }[key_source]
        return esc(source) + hint
    return (
        f"{esc(source)}"
        f'<form class="inline" method="post" action="{KEY_PATH}">'
        f"{_hidden(csrf_token, card.name)}{_key_input(required=True)}"
        '<button type="submit" class="secondary">'
        f'{"Replace key" if key_source is not KeySource.MISSING else "Save key"}</button>'
        "</form>"
    )


def _actions(card: ConnectionCard, csrf_token: str) -> str:
    linked = card.report.status.linked
    out = ['<div class="actions">']
    if card.interactive:
        out.extend(_connect_form(card, csrf_token))
    else:
        out.append("<p><small>Machine credentials: the proxy fetches its tokens by itself; "
                   "there is nothing to link.</small></p>")
    if linked:
        out.append(
            '<details class="revoke"><summary>Revoke…</summary>'
            "<p>Revokes the token at the provider and forgets it here (and a key entered on "
            "this page). "
            + ("Requests fail until someone connects again.</p>" if card.interactive else
               "The proxy then fetches a new token with its credentials.</p>")
            + f'<form method="post" action="{REVOKE_PATH}">{_hidden(csrf_token, card.name)}'
            '<button type="submit" class="danger">Revoke access</button></form></details>'
        )
    out.append("</div>")
    return "".join(out)


def _connect_form(card: ConnectionCard, csrf_token: str) -> list[str]:
    linked = card.report.status.linked
    connect = [
        f'<form class="connect" method="post" action="{LOGIN_PATH}">',
        _hidden(csrf_token, card.name),
    ]
    if not linked and card.key_source is not None:
        key_input = _key_input(required=card.key_source is KeySource.MISSING)
        connect.append(f"<label>Subscription key {key_input}</label>")
    label = "Reconnect" if linked else "Connect"
    connect.append(f'<button type="submit" class="primary">{label}</button></form>')
    return connect

