"""Rates as pure arithmetic on clock readings, no I/O.

`TokenBucket` is a rate as a token bucket (GCRA): outbound shaping paces each connection with it
(proxy.forwarding.shaping), and per-client quotas hold each caller to its share with it
(proxy.inbound.quotas). `LearnedRate` is the rate an upstream that does not publish its quota
teaches with its 429s (AIMD); the shaper paces a connection with it once it has been taught.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Final


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


# --- a rate learned from the upstream's 429s (AIMD) ----------------------------------------------

# "What got through" is counted over the last second: a quota that is not published is most often
# per second, and a second is short enough to be about the burst that met the 429.
WINDOW_SECONDS: Final = 1.0
# A 429 sets the rate to this share of what got through in the last window (and never above this
# share of the rate in force): the count is a direct estimate of the quota, so a 30 % margin (the
# β of CUBIC, RFC 9438) suffices; with `INCREASE` it keeps the rate between 0.7 and 1 times the
# quota, one 429 every 0.3·quota seconds under a steady overload.
DECREASE: Final = 0.7
# Each clean answer adds INCREASE / rate: +1 request/s per second of sending at the learned rate
# (TCP's congestion avoidance, one unit per round of answers). A connection that sends less than
# its learned rate grows more slowly; an idle one learns nothing and does not grow.
INCREASE: Final = 1.0
# Never slower than this, however often the upstream says no (an hour-long pause aside).
MIN_RATE: Final = 0.5
# A clean stretch this long (no 429 at all) ends the lesson: back to unshaped, or to the
# configured rate. Longer than any per-second or per-minute quota's window, short enough that a
# quota raised by the provider is used within minutes.
FORGET_AFTER_SECONDS: Final = 300.0
# Memory bound of the count of what got through (a rate above it counts as this rate).
_MAX_COUNTED: Final = 10_000


@dataclass
class LearnedRate:
    """The rate an upstream's 429s teach, AIMD: pure arithmetic on clock readings, no I/O.

    `rate` is None until the first 429 (nothing learned: the connection is not held back), and
    again once forgotten. `passed(now)` is each answer that was not refused for the quota,
    `throttled(now)` each 429.

    - Multiplicative decrease: a 429 sets the rate to `DECREASE` times what got through in the
      last `WINDOW_SECONDS` (at most `DECREASE` times the rate in force), at least `MIN_RATE`.
      Answers that come in the window after it (requests sent before it, answered late) still
      count for that decrease, and 429s in that window are the same burst's: one decrease per
      window.
    - Additive increase: after that window, each clean answer adds `INCREASE` / rate.
    - Forgetting: after `FORGET_AFTER_SECONDS` without a 429, or once the rate reaches `cap`
      (the configured `rate_per_second`, which a learned rate never passes).
    """

    cap: float | None = None
    rate: float | None = None
    _through: deque[float] = field(default_factory=lambda: deque(maxlen=_MAX_COUNTED), repr=False)
    _decreased_at: float = field(default=-math.inf, repr=False)
    _counted: int = field(default=0, repr=False)  # what got through, for the last decrease
    _limit: float = field(default=math.inf, repr=False)  # DECREASE times the rate before it
    _throttled_at: float = field(default=-math.inf, repr=False)

    def through(self, now: float) -> int:
        """Answers that got through in the `WINDOW_SECONDS` before `now`."""
        through = self._through
        while through and through[0] <= now - WINDOW_SECONDS:
            through.popleft()
        return len(through)

    def passed(self, now: float) -> None:
        """An answer that was not a 429."""
        through = self._through
        through.append(now)
        if through[0] <= now - WINDOW_SECONDS:  # keep the last window only (memory: its rate)
            self.through(now)
        rate = self.rate
        if rate is None:
            return
        if now < self._decreased_at + WINDOW_SECONDS:  # a late answer of the burst: it got in
            self._counted += 1
            self.rate = self._decreased()
        elif now - self._throttled_at >= FORGET_AFTER_SECONDS:
            self.rate = None
        else:
            grown = rate + INCREASE / rate
            self.rate = None if self.cap is not None and grown >= self.cap else grown

    def throttled(self, now: float) -> bool:
        """A 429; True when it lowered the rate (not one more of a burst already answered)."""
        self._throttled_at = now
        if now < self._decreased_at + WINDOW_SECONDS:
            return False
        before = self.rate if self.rate is not None else self.cap
        self._limit = math.inf if before is None else DECREASE * before
        self._counted = self.through(now)
        self._decreased_at = now
        self.rate = self._decreased()
        return True

    def at(self, now: float) -> float | None:
        """The rate in force at `now`: forgotten once the clean stretch is long enough."""
        if self.rate is not None and now - self._throttled_at >= FORGET_AFTER_SECONDS:
            self.rate = None
        return self.rate

    def under(self, cap: float | None) -> LearnedRate:
        """A copy of what was learned, held to another `cap` (a reload changed it)."""
        through = deque(self._through, maxlen=_MAX_COUNTED)
        copy = dataclasses.replace(self, cap=cap, _through=through)
        if copy.rate is not None and cap is not None and copy.rate >= cap:
            copy.rate = None  # the configured rate holds it back as much
        return copy

    def _decreased(self) -> float:
        rate = max(MIN_RATE, min(self._limit, DECREASE * self._counted / WINDOW_SECONDS))
        return rate if self.cap is None else min(rate, self.cap)
