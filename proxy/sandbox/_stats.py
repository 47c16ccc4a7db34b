"""Counters and request logs that tests read to see what the proxy really sent."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

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
