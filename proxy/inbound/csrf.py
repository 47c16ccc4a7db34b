"""Cross-site request forgery checks for the forms of the /_proxy/ page: pure functions.

The token lives in the encrypted, HttpOnly session cookie and in a hidden field of each form; a
POST must carry both, equal (compared in constant time). A browser also names the page a POST
came from (`Origin`, or `Sec-Fetch-Site`); when it does, it must be this proxy.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

SESSION_FIELD: Final = "csrf"
FORM_FIELD: Final = "csrf_token"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_of(session: Mapping[str, Any]) -> str | None:
    token = session.get(SESSION_FIELD)
    return token if isinstance(token, str) and token else None


def put_token(session: MutableMapping[str, Any], token: str) -> None:
    session[SESSION_FIELD] = token


def tokens_match(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def same_origin(headers: Mapping[str, str], *, host: str) -> bool:
    """False when the browser says the request came from another site.

    `Sec-Fetch-Site` (Fetch Metadata) is trusted first; else the host of `Origin` must be this
    proxy's (the scheme may differ behind a TLS terminator). A request with neither (an old
    browser, curl) is left to the token check.
    """
    site = headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in {"same-origin", "none"}
    origin = headers.get("Origin")
    if origin is None:
        return True
    _, separator, origin_host = origin.partition("://")
    return bool(separator) and origin_host == host
