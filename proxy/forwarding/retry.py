"""Whether to send a request upstream again, and how long to wait first: pure rules, no I/O.

- RFC 9110 §9.2.2: a request with an idempotent method may be repeated automatically; which
  methods the proxy repeats is configured (`RetryPolicy.methods`, idempotent ones by default).
- Only statuses that mean "not now" are worth a retry: 429 (RFC 6585 §4) and 502/503/504.
- A request is only repeated when its body can be sent again (none, or small enough to keep),
  and only while the time spent stays within the deadline.
- RFC 9110 §10.2.3: `Retry-After` is delay-seconds or an HTTP-date; it sets the wait. Without
  it, the wait grows exponentially with jitter, so that clients that failed together do not
  come back together.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass
from datetime import UTC
from typing import Final

from proxy.config import RetrySettings

# After a 429 that does not say how long to wait, the connection pauses this long.
DEFAULT_PAUSE_SECONDS: Final = 1.0
_DELAY_SECONDS: Final = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Decision:
    retry: bool
    reason: str  # for the log: why (not)
    delay: float = 0.0  # seconds to wait before the next attempt


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from `now` (a Unix time), or None when absent or unreadable.

    RFC 9110 §10.2.3: `Retry-After = HTTP-date / delay-seconds`. A date in the past means no
    wait. §5.6.7: recipients accept all three date formats; every HTTP-date is in GMT, so one
    without a zone (asctime format) is read as UTC.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def backoff(attempt: int, base: float, rand: float) -> float:
    """The wait before retry number `attempt` + 1: base·2^attempt, the upper half jittered.

    `rand` is uniform in [0, 1); "equal jitter" keeps the wait growing while spreading clients.
    """
    ceiling = base * 2.0**attempt
    return ceiling / 2 + ceiling / 2 * rand


def pause_after(status: int, retry_after: float | None) -> float | None:
    """How long the whole connection should hold back after this answer, if at all.

    A 429 means the subscription's quota is used up, for every request, not only this one. A
    503 that says when to come back (maintenance) is treated the same way.
    """
    if status == 429:
        return DEFAULT_PAUSE_SECONDS if retry_after is None else retry_after
    if status == 503 and retry_after is not None:
        return retry_after
    return None


def decide(
    policy: RetrySettings,
    *,
    method: str,
    status: int | None,
    attempt: int,
    replayable: bool,
    elapsed: float,
    retry_after: float | None,
    rand: float,
) -> Decision:
    """Try again? `status` None means the connection failed before anything was sent.

    `attempt` counts the retries made so far (0 after the first try); `elapsed` is the time
    since the first try began.
    """
    if status is not None and status not in policy.statuses:
        return Decision(retry=False, reason=f"status {status} is not retried")
    if method not in policy.methods:
        return Decision(retry=False, reason=f"{method} is not retried")
    if not replayable:
        return Decision(retry=False, reason="the request body was streamed and is gone")
    if attempt >= policy.count:
        return Decision(retry=False, reason=f"{policy.count} retries used up")
    delay = backoff(attempt, policy.backoff_seconds, rand)
    if retry_after is not None:
        delay = max(delay, retry_after)
    if elapsed + delay > policy.deadline_seconds:
        return Decision(
            retry=False,
            reason=f"waiting {delay:.1f}s would pass the {policy.deadline_seconds:g}s deadline",
        )
    return Decision(retry=True, reason=f"retry {attempt + 1} of {policy.count}", delay=delay)

