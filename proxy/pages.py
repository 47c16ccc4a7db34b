"""The proxy's own HTML pages, rendered from plain data: no I/O, no request, no secrets.

Every value that reaches a page goes through `html.escape` (or `quote` and then `html.escape`
when it is part of a URL). The functions take what they show and a `now` (seconds since the
epoch) and return the whole document, so they are tested with plain tables of cases.

None of them is ever given a token, a secret, a subscription key or an authorization code.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote

from proxy.tokens.manager import TokenStatus

STATUS_PATH: Final = "/_proxy/"
LOGIN_PATH: Final = "/_proxy/login"

_CSS: Final = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem;color:#1f2328;
max-width:80rem}
h1{font-size:1.4rem;margin:0 0 .3rem}
p.lead{color:#59636e;margin:0 0 1.2rem}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:.45rem .6rem;border-bottom:1px solid #d1d9e0}
th{font-size:.8rem;text-transform:uppercase;letter-spacing:.03em;color:#59636e}
code{font-size:.85em;background:#f6f8fa;padding:.05rem .25rem;border-radius:4px}
small{color:#59636e}
.badge{display:inline-block;padding:.05rem .5rem;border-radius:1rem;font-size:.8rem;
font-weight:600}
.fresh{background:#dafbe1;color:#116329}
.stale{background:#fff8c5;color:#7d4e00}
.invalid,.consent{background:#ffebe9;color:#a40e26}
.none{background:#eff2f5;color:#59636e}
a.button{display:inline-block;padding:.3rem .8rem;border-radius:6px;background:#1f883d;
color:#fff;text-decoration:none;font-weight:600;white-space:nowrap}
a.button.secondary{background:#eff2f5;color:#1f2328;border:1px solid #d1d9e0}
.box{border:1px solid #d1d9e0;border-radius:8px;padding:1rem 1.2rem;max-width:44rem}
.box.error{border-color:#ff8182;background:#fff5f5}
.box.ok{border-color:#4ac26b;background:#f4fff6}
.box.warn{border-color:#d4a72c;background:#fffbea}
""".strip()


def esc(value: object) -> str:
    """Text for HTML element content and quoted attribute values."""
    return html.escape(str(value), quote=True)


def login_href(connection: str) -> str:
    return f"{LOGIN_PATH}?connection={quote(connection, safe='')}"


# --- time -----------------------------------------------------------------------------------


def format_utc(timestamp: float) -> str:
    """An absolute moment, e.g. "2026-11-23 09:16:14 UTC"."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float) -> str:
    """A rough length of time: "45 s", "12 min", "3 h 5 min", "29 d"."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{math.floor(seconds)} s"
    minutes = math.floor(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{hours // 24} d"


def format_relative(timestamp: float, now: float) -> str:
    """In the future: "in 12 min"; in the past: "3 min ago"."""
    delta = timestamp - now
    if delta >= 0:
        return f"in {format_duration(delta)}"
    return f"{format_duration(-delta)} ago"


# --- layout ---------------------------------------------------------------------------------


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{esc(title)} · nmbrs-proxy</title><style>{_CSS}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def _paragraphs(lines: Iterable[str]) -> str:
    return "".join(f"<p>{esc(line)}</p>" for line in lines)


# --- the status page ------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionRow:
    """What the status page shows about one connection; `status` comes from its TokenManager."""

    name: str
    provider: str
    prefix: str
    upstream: str
    client_id: str
    status: TokenStatus
    # False for machine credentials: the proxy fetches their tokens, nobody links them.
    interactive: bool = True


def status_page(rows: Sequence[ConnectionRow], *, now: float) -> str:
    ready = sum(1 for row in rows if row.status.ready)
    body = [
        "<h1>nmbrs-proxy</h1>",
        (
            f'<p class="lead">{ready} of {len(rows)} connection{"" if len(rows) == 1 else "s"} '
            f"ready · {esc(format_utc(now))}</p>"
        ),
    ]
    if not rows:
        body.append("<p>No connections are configured.</p>")
    else:
        body.append(
            "<table><thead><tr><th>Connection</th><th>Route</th><th>Linked</th><th>State</th>"
            "<th>Access token expires</th><th>Scopes granted</th><th>Refresh token age</th>"
            "<th>Last error</th><th></th></tr></thead><tbody>"
        )
        body.extend(_status_row(row, now) for row in rows)
        body.append("</tbody></table>")
    return _document("Connections", "\n".join(body))


def _status_row(row: ConnectionRow, now: float) -> str:
    status = row.status
    cells = [
        (
            f"<strong>{esc(row.name)}</strong><br><small>{esc(row.provider)} · client "
            f"<code>{esc(row.client_id)}</code></small>"
        ),
        f"<code>{esc(row.prefix)}</code><br><small>→ {esc(row.upstream)}</small>",
        "yes" if status.linked else "no",
        _state_cell(status, interactive=row.interactive),
        _expiry_cell(status, now),
        " ".join(f"<code>{esc(scope)}</code>" for scope in status.scopes) or "—",
        _refresh_age_cell(status, now),
        f"<code>{esc(status.last_error)}</code>" if status.last_error else "—",
        _action_cell(row),
    ]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _state_cell(status: TokenStatus, *, interactive: bool) -> str:
    if not status.linked and not interactive:
        badge = '<span class="badge none">no token yet</span> <small>fetched automatically</small>'
    elif not status.linked:
        return '<span class="badge none">not linked</span> <small>needs consent</small>'
    else:
        badge = f'<span class="badge {esc(status.state.value)}">{esc(status.state.value)}</span>'
    if status.needs_consent:
        refused = "credentials refused" if not interactive else "needs consent"
        badge += f' <span class="badge consent">{refused}</span>'
    return badge


def _expiry_cell(status: TokenStatus, now: float) -> str:
    if status.expires_at is None:
        return "—"
    when = format_relative(status.expires_at, now)
    return f"{esc(format_utc(status.expires_at))}<br><small>{esc(when)}</small>"


def _refresh_age_cell(status: TokenStatus, now: float) -> str:
    if status.refresh_issued_at is None:
        return "no refresh token" if status.linked else "—"
    return esc(format_duration(now - status.refresh_issued_at))


def _action_cell(row: ConnectionRow) -> str:
    if not row.interactive:
        return "<small>machine credentials: no consent needed</small>"
    href = esc(login_href(row.name))
    if not row.status.linked:
        return f'<a class="button" href="{href}">Connect</a>'
    return f'<a class="button secondary" href="{href}">Reconnect</a>'


# --- outcome pages --------------------------------------------------------------------------


def linked_page(
    *,
    connection: str,
    scopes: Sequence[str],
    expires_at: float,
    now: float,
    warning: str | None = None,
    back_link: bool = True,
) -> str:
    """The consent worked: the connection has a token and serves requests."""
    scope_list = " ".join(f"<code>{esc(scope)}</code>" for scope in scopes) or "none reported"
    body = [
        f"<h1>Connection {esc(connection)} works</h1>",
        '<div class="box ok">',
        (
            f"<p>The account is linked: requests through the proxy for <strong>{esc(connection)}"
            "</strong> now carry a fresh access token, which the proxy keeps renewing.</p>"
        ),
        f"<p>Scopes granted: {scope_list}</p>",
        (
            f"<p>Access token valid until {esc(format_utc(expires_at))} "
            f"({esc(format_relative(expires_at, now))}).</p>"
        ),
        "</div>",
    ]
    if warning:
        body.append(f'<div class="box warn">{_paragraphs([warning])}</div>')
    if back_link:
        body.append(f'<p><a href="{STATUS_PATH}">Back to all connections</a></p>')
    else:
        body.append("<p>You can close this window and return to the terminal.</p>")
    return _document(f"{connection} linked", "\n".join(body))


def problem_page(
    title: str,
    lines: Sequence[str],
    *,
    retry_connection: str | None = None,
    back_link: bool = True,
) -> str:
    """Something went wrong: say what, plainly, and offer the way forward."""
    body = [f"<h1>{esc(title)}</h1>", f'<div class="box error">{_paragraphs(lines)}</div>']
    actions = []
    if retry_connection is not None:
        actions.append(
            f'<a class="button" href="{esc(login_href(retry_connection))}">Try again</a>'
        )
    if back_link:
        actions.append(f'<a class="button secondary" href="{STATUS_PATH}">All connections</a>')
    if actions:
        body.append("<p>" + " ".join(actions) + "</p>")
    return _document(title, "\n".join(body))
