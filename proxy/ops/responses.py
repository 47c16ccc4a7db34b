"""How the /_proxy/ handlers answer: HTML pages with the area's security headers, the problem
page, the check every form POST passes first (same origin, and the CSRF token kept in the
session cookie), and the admin API's problem+json.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from proxy.core.errors import PROBLEM_CONTENT_TYPE
from proxy.inbound import csrf
from proxy.ops.outcome_pages import problem_page
from proxy.ops.session import CONSENT

PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
}


def page_response(
    text: str, status: int = 200, *, headers: Mapping[str, str] = PAGE_HEADERS
) -> web.Response:
    return web.Response(
        text=text, status=status, content_type="text/html", charset="utf-8", headers=headers
    )


def problem_response(
    status: int, title: str, *lines: str, retry_connection: str | None = None
) -> web.Response:
    page = problem_page(title, lines, retry_connection=retry_connection)
    return page_response(page, status)


async def checked_form(request: web.Request) -> Mapping[str, str] | web.Response:
    """The fields of a POST from the /_proxy/ page, or the page that refuses it (CSRF)."""
    if not csrf.same_origin(request.headers, host=request.host):
        return problem_response(403, "Refused", "This form was sent from another site.")
    form = await request.post()
    fields = {name: value for name, value in form.items() if isinstance(value, str)}
    session = await request.app[CONSENT].load(request)
    if not csrf.tokens_match(csrf.token_of(session), fields.get(csrf.FORM_FIELD)):
        return problem_response(
            403,
            "This form has expired",
            "The page this form came from is too old, or was opened in another browser.",
            "Reload the list of connections and try again.",
        )
    return fields


def api_problem(status: int, slug: str, title: str, detail: str, **extra: Any) -> web.Response:
    """An admin API error: problem+json (RFC 9457) with a stable `type` per kind of problem."""
    body = {"type": f"urn:nmbrs-proxy:problem:{slug}", "title": title, "status": status,
            "detail": detail, **extra}
    return web.json_response(body, status=status, content_type=PROBLEM_CONTENT_TYPE,
                             headers={"Cache-Control": "no-store"})
