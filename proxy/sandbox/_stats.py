"""Counters and request logs that tests read to see what the proxy really sent."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict

_LOG_SIZE = 1000


@dataclass
class RecordedRequest:
    """One request as it reached the fake (raw path with query, headers as sent)."""

    method: str
    path_qs: str
    headers: CIMultiDict[str]
    status: int | None = None  # filled in once answered
    at: float | None = None  # the sandbox clock when it arrived (API requests)


@dataclass
class SandboxStats:
    """Mutable counters; a test may also replace this object with a fresh one."""

    token_requests: Counter[str] = field(default_factory=Counter)  # by grant_type ("" if none)
    token_errors: Counter[str] = field(default_factory=Counter)  # by RFC 6749 error code
    refresh_redemptions: Counter[str] = field(default_factory=Counter)  # by sha256 hex of token
    token_in_flight: int = 0  # /connect/token requests received and not yet answered
    token_log: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=_LOG_SIZE))
    authorize_requests: int = 0
    revocations: int = 0  # answered /connect/revocation requests (200)
    api_requests: int = 0
    api_statuses: Counter[int] = field(default_factory=Counter)
    api_log: deque[RecordedRequest] = field(default_factory=lambda: deque(maxlen=_LOG_SIZE))

    @property
    def last_api_request(self) -> RecordedRequest | None:
        return self.api_log[-1] if self.api_log else None

    @property
    def last_api_headers(self) -> CIMultiDict[str] | None:
        last = self.last_api_request
        return None if last is None else last.headers


class TokenEndpointOwner(Protocol):
    """A fake with a token endpoint that tests can hold (`token_gate`) or slow down."""

    stats: SandboxStats
    token_gate: asyncio.Event
    token_delay: float


async def recorded_token_call(
    owner: TokenEndpointOwner,
    request: web.Request,
    kind: str,
    respond: Callable[[], Awaitable[web.Response]],
) -> web.Response:
    """Answer a token request with `respond()`, counted under `kind`, logged with its status,
    and held by the owner's `token_delay` and `token_gate` while counted as in flight."""
    stats = owner.stats
    stats.token_requests[kind] += 1
    record = RecordedRequest(request.method, request.raw_path, CIMultiDict(request.headers))
    stats.token_log.append(record)
    stats.token_in_flight += 1
    try:
        if owner.token_delay > 0:
            await asyncio.sleep(owner.token_delay)
        await owner.token_gate.wait()
        response = await respond()
        record.status = response.status
        return response
    finally:
        stats.token_in_flight -= 1
