"""The fake API-management gateway in front of the Nmbrs API, and its maintenance switch.

Before any token is looked at: no `X-Subscription-Key` header or an unknown key is a 401, and
past `rate_limit` requests per key within `rate_window` seconds a 429 with `Retry-After` (the
whole seconds until the oldest one leaves the window). A maintenance window answers 503 after
these checks, with `Retry-After` when one is given. The bodies are the gateway's own shape
(`statusCode`, `message`), not the API's problem details.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from ._settings import SandboxSettings


def gateway_error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"statusCode": status, "message": message}, status=status, headers=headers
    )


@dataclass(frozen=True)
class Maintenance:
    """A maintenance window: every API call gets 503, with `Retry-After` when one is given."""

    retry_after: int | None = None

    def response(self) -> web.Response:
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        return gateway_error(
            503, "The service is temporarily unavailable for maintenance.", headers
        )


class GatewayHost(Protocol):
    """What the gateway reads of the sandbox, at each request (tests change it)."""

    settings: SandboxSettings
    clock: Callable[[], float]


class Gateway:
    """Subscription key, then rate limit; keeps each key's recent arrival times."""

    def __init__(self, host: GatewayHost) -> None:
        self.host = host
        self._windows: dict[str, deque[float]] = {}

    def check(self, request: web.Request) -> web.Response | None:
        """The gateway's refusal of `request`, or None to let it through (and count it)."""
        settings = self.host.settings
        key = request.headers.get("X-Subscription-Key")
        if key is None:
            return gateway_error(
                401,
                "Access denied due to missing subscription key. Make sure to include "
                "subscription key when making requests to an API.",
            )
        if key not in settings.subscription_keys:
            return gateway_error(
                401,
                "Access denied due to invalid subscription key. Make sure to provide a valid "
                "key for an active subscription.",
            )
        if settings.rate_limit is None:
            return None
        now = self.host.clock()
        window = self._windows.setdefault(key, deque())
        while window and window[0] <= now - settings.rate_window:
            window.popleft()
        if len(window) >= settings.rate_limit:
            wait = max(1, math.ceil(window[0] + settings.rate_window - now))
            return gateway_error(
                429,
                f"Rate limit is exceeded. Try again in {wait} seconds.",
                headers={"Retry-After": str(wait)},
            )
        window.append(now)
        return None
