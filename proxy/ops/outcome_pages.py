"""The pages a consent ends on, in the browser or after `nmbrs-proxy login`: the connection
is linked, or something went wrong and what to do next.

Rendered from plain data like the status page (`proxy.ops.pages`); none of them is ever given
a token, a secret, a subscription key or an authorization code.
"""

from __future__ import annotations

from collections.abc import Sequence

from proxy.ops.layout import (
    STATUS_PATH,
    document,
    esc,
    format_relative,
    format_utc,
    login_href,
    paragraphs,
)


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
        body.append(f'<div class="box warn">{paragraphs([warning])}</div>')
    if back_link:
        body.append(f'<p><a href="{STATUS_PATH}">Back to all connections</a></p>')
    else:
        body.append("<p>You can close this window and return to the terminal.</p>")
    return document(f"{connection} linked", "\n".join(body))


def problem_page(
    title: str,
    lines: Sequence[str],
    *,
    retry_connection: str | None = None,
    back_link: bool = True,
) -> str:
    """Something went wrong: say what, plainly, and offer the way forward."""
    body = [f"<h1>{esc(title)}</h1>", f'<div class="box error">{paragraphs(lines)}</div>']
    actions = []
    if retry_connection is not None:
        actions.append(
            f'<a class="button" href="{esc(login_href(retry_connection))}">Try again</a>'
        )
    if back_link:
        actions.append(f'<a class="button secondary" href="{STATUS_PATH}">All connections</a>')
    if actions:
        body.append("<p>" + " ".join(actions) + "</p>")
    return document(title, "\n".join(body))
