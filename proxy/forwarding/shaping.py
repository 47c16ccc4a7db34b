"""Outbound shaping for one connection: how fast, how many at once, and when to hold back.

Every request to the upstream passes `Shaper.admit()`, which hands out a `Permit` once

1. a slot among `max_concurrent` upstream requests is free (FIFO), then
2. it is at the head of the line, the connection is not paused (an upstream 429 paused it: see
   `pause`), and the token bucket (`rate_per_second`, `burst`) lets it go.

Waiting is bounded twice: at most `max_queue` requests wait at once, and none waits longer
than `max_wait_seconds`. A request that would break either bound is refused with
`TooManyRequests` (the proxy's own 429, with `Retry-After`), so queues never grow without end.

The bucket is GCRA, the "virtual scheduling" form of a token bucket (ITU-T I.371): a theoretical
arrival time moves one interval on per request, so the wait of the n-th request in line is
known when it arrives, and one that would wait too long is refused before it waits at all. The
token itself is taken by the head of the line at the moment it goes, never reserved ahead: when
the event loop stalls, late requests still leave one interval apart instead of all at once.

A connection also learns a rate from the upstream's 429s (`LearnedRate`, proxy.core.rate): the
exchange tells `answered()` every upstream status, and after a 429 the bucket paces at the
learned rate (burst 1, never above `rate_per_second`), so the requests a pause held back leave
one by one when it ends instead of all at once. Once the lesson is forgotten, the configured
bucket (or none) applies again. A connection that never saw a 429 keeps its fast path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from proxy.core.errors import TooManyRequests
from proxy.core.rate import LearnedRate, TokenBucket

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class ShaperCounters:
    throttled: int = 0  # requests the proxy answered 429 itself
    delayed: int = 0  # requests that waited before going upstream
    pauses: int = 0  # connection-wide pauses begun after an upstream 429


class Permit:
    """One admitted request: holds a concurrency slot until released (idempotent)."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None] | None = None) -> None:
        self._release = release

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


# The permit of a connection without a concurrency limit: it holds nothing, so one serves all.
_FREE: Final = Permit()


class Shaper:
    def __init__(
        self,
        connection: str,
        *,
        rate_per_second: float | None = None,
        burst: int = 1,
        max_concurrent: int | None = None,
        max_queue: int = 100,
        max_wait_seconds: float = 10.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.connection = connection
        self._rate = rate_per_second
        self._burst = burst
        # The bucket in force: the configured one, or one at the learned rate (`_follow`).
        self._bucket = None if rate_per_second is None else TokenBucket(rate_per_second, burst)
        self._learning = LearnedRate(cap=rate_per_second)
        self._pacing = False  # the bucket follows a learned rate
        self._slots = None if max_concurrent is None else asyncio.Semaphore(max_concurrent)
        self._max_queue = max_queue
        self._max_wait = max_wait_seconds
        self._clock = clock
        self._sleep = sleep
        self._paused_until = -math.inf
        self._line = asyncio.Lock()  # FIFO; its holder waits for the pause and the bucket
        self._in_line = 0
        self.waiting = 0
        self.counters = ShaperCounters()

    def __repr__(self) -> str:
        return f"Shaper({self.connection!r}, waiting={self.waiting})"

    def learned_rate(self) -> float | None:
        """Requests per second learned from the upstream's 429s; None when nothing is learned."""
        self._follow(self._clock())
        return self._learning.rate

    def answered(self, status: int) -> None:
        """The upstream answered a request with `status`: what the learned rate learns from.

        A 429 lowers it (or teaches a first one); any other answer under 500 got through and
        counts (5xx say nothing about the quota).
        """
        if status == 429:
            now = self._clock()
            if self._learning.throttled(now):
                log.info("connection %s: learned to send at most %.1f requests/s",
                         self.connection, self._learning.rate)
            self._follow(now)
        elif status < 500:
            now = self._clock()
            self._learning.passed(now)
            if self._pacing:
                self._follow(now)

    def take_over(self, before: Shaper) -> None:
        """Go on from what `before` (the shaper this one replaces on reload) learned and paused.

        The quota is the upstream's, whatever the shaping settings say; a changed
        `rate_per_second` caps what was learned from now on.
        """
        self._learning = before._learning.under(self._rate)
        self._paused_until = max(self._paused_until, before._paused_until)
        self._follow(self._clock())

    def _follow(self, now: float) -> None:
        """Make the bucket in force follow the learned rate, or go back to the configured one."""
        rate = self._learning.at(now)
        if rate is not None:
            if self._bucket is None:
                self._bucket = TokenBucket(rate, 1)
            else:
                self._bucket.rate, self._bucket.burst = rate, 1
            self._pacing = True
        elif self._pacing:
            self._pacing = False
            if self._rate is None:
                self._bucket = None
            elif self._bucket is not None:
                self._bucket.rate, self._bucket.burst = self._rate, self._burst
            log.info("connection %s: forgot its learned rate", self.connection)

    def paused_for(self) -> float:
        """Seconds left in the current pause (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def pause(self, seconds: float) -> None:
        """Hold back every request of the connection for `seconds` (extends, never shortens)."""
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self.counters.pauses += 1
            log.warning(
                "connection %s: the upstream asked to slow down; pausing for %.1fs",
                self.connection,
                seconds,
            )

    def free_permit(self) -> Permit | None:
        """The permit of a connection with nothing to wait for and nothing to hold (most),
        without a coroutine; None: `admit()` decides."""
        if (self._slots is None and self._bucket is None and not self._in_line
                and self.waiting < self._max_queue and self._clock() >= self._paused_until):
            return _FREE
        return None

    async def admit(self) -> Permit:
        free = self.free_permit()
        if free is not None:
            return free
        now = self._clock()
        if self._pacing:
            self._follow(now)
        deadline = now + self._max_wait
        if self.waiting >= self._max_queue:
            raise self._refuse(f"{self.waiting} requests are waiting already",
                               self._expected_wait(self._clock()))
        self.waiting += 1
        try:
            permit, queued = await self._slot(deadline)
            try:
                lined_up = await self._wait_in_line(deadline)
            except BaseException:
                permit.release()
                raise
        finally:
            self.waiting -= 1
        if queued or lined_up:
            self.counters.delayed += 1
        return permit

    def _expected_wait(self, now: float) -> float:
        """How long a request arriving now would wait for the pause and the bucket."""
        start = max(now, self._paused_until)
        bucket = 0.0 if self._bucket is None else self._bucket.delay(start, self._in_line)
        return start - now + bucket

    async def _slot(self, deadline: float) -> tuple[Permit, bool]:
        """A concurrency slot, and whether this request had to wait for it."""
        slots = self._slots
        if slots is None:
            return Permit(), False
        queued = slots.locked()
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock())):
                await slots.acquire()
        except TimeoutError:
            raise self._refuse("every upstream slot stayed busy", 1.0) from None
        return Permit(slots.release), queued

    async def _wait_in_line(self, deadline: float) -> bool:
        """Go when the pause is over and the bucket has a token; True if this request waited."""
        now = self._clock()
        if self._in_line == 0 and not self._line.locked() and self._expected_wait(now) == 0:
            if self._bucket is not None:
                self._bucket.take(now)
            return False
        wait = self._expected_wait(now)
        if now + wait > deadline:
            raise self._refuse(f"it would wait {wait:.1f}s", wait)
        self._in_line += 1
        try:
            try:
                async with asyncio.timeout(max(0.0, deadline - now)):
                    await self._line.acquire()
            except TimeoutError:
                raise self._refuse("the line did not move in time", 1.0) from None
            try:
                await self._at_the_head(deadline)
            finally:
                self._line.release()
        finally:
            self._in_line -= 1
        return True

    async def _at_the_head(self, deadline: float) -> None:
        due = None
        while True:
            now = self._clock()
            at = max(now, self._paused_until)
            if self._bucket is not None:
                at += self._bucket.delay(at)
            if at <= now:
                break
            if at > deadline:  # a pause began, or the loop stalled, after this one lined up
                raise self._refuse(f"it would wait {at - now:.1f}s more", at - now)
            due = at
            await self._sleep(at - now)
        if self._bucket is not None:
            self._bucket.take(now, due)

    def _refuse(self, why: str, wait: float) -> TooManyRequests:
        self.counters.throttled += 1
        log.info("connection %s: refused a request with 429 (%s)", self.connection, why)
        return TooManyRequests(
            f"connection {self.connection!r} is at its request limit ({why})",
            connection=self.connection,
            retry_after=wait,
        )
