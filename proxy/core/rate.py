"""A rate as a token bucket (GCRA): pure arithmetic on clock readings, no I/O.

Outbound shaping paces each connection with it (proxy.forwarding.shaping), and per-client
quotas hold each caller to its share with it (proxy.inbound.quotas).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` requests per second on average, at most `burst` at one instant. Pure: no clock."""

    rate: float
    burst: int = 1
    _tat: float = field(default=-math.inf, repr=False)  # theoretical arrival time

    def delay(self, now: float, ahead: int = 0) -> float:
        """Seconds from `now` until a request may go after `ahead` others have gone first."""
        tolerance = (self.burst - 1) / self.rate
        return max(0.0, max(self._tat, now) + ahead / self.rate - tolerance - now)

    def take(self, now: float, due: float | None = None) -> None:
        """One request goes at `now` (when `delay(now)` is 0); it was due at `due`, if it waited.

        A timer fires a little late; counting from `due` when the lateness is under a tenth of
        an interval keeps that from slowing the rate bit by bit. A longer delay (a stalled
        event loop) counts from `now`, so late requests never go together.
        """
        interval = 1 / self.rate
        if due is not None and 0 <= now - due <= interval / 10:
            now = due
        self._tat = max(self._tat, now) + interval
