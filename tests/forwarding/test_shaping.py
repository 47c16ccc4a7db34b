"""Shaping: the GCRA bucket as a table, and the shaper's bounds, pauses and slots."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from proxy.core.errors import TooManyRequests
from proxy.core.rate import TokenBucket
from proxy.forwarding.shaping import Permit, Shaper
from tests.clock import FakeClock


def departures(rate: float, burst: int, arrivals: list[float]) -> list[float]:
    bucket = TokenBucket(rate, burst)
    out = []
    for now in arrivals:
        at = now + bucket.delay(now)
        bucket.take(at)
        out.append(round(at, 9))
    return out


@pytest.mark.parametrize(
    ("rate", "burst", "arrivals", "expected"),
    [
        pytest.param(10, 1, [0, 0, 0, 0], [0, 0.1, 0.2, 0.3], id="burst-1-spaces-evenly"),
        pytest.param(10, 3, [0, 0, 0, 0, 0], [0, 0, 0, 0.1, 0.2], id="burst-3-then-spaced"),
        pytest.param(2, 1, [0, 1, 2], [0, 1, 2], id="slower-than-rate-never-waits"),
        pytest.param(2, 1, [0, 0.1, 5], [0, 0.5, 5], id="idle-time-refills"),
        pytest.param(10, 2, [0, 0, 0, 1, 1, 1], [0, 0, 0.1, 1, 1, 1.1], id="refills-to-burst"),
        pytest.param(4, 2, [0, 0.1, 0.2, 0.3], [0, 0.1, 0.25, 0.5], id="steady-overload"),
    ],
)
def test_token_bucket(rate: float, burst: int, arrivals: list[float], expected: list[float]
                      ) -> None:
    assert departures(rate, burst, arrivals) == expected


@pytest.mark.parametrize(
    ("late", "expected"),
    [
        (0.0, [0.1, 0.2, 0.3]),
        (0.005, [0.105, 0.205, 0.305]),  # a timer a little late: counted from when it was due
        (0.009, [0.109, 0.209, 0.309]),
        (0.05, [0.15, 0.3, 0.45]),  # later than a tenth of the interval: from when it went
    ],
)
def test_a_slightly_late_wake_up_does_not_slow_the_rate(late: float, expected: list[float]
                                                        ) -> None:
    bucket = TokenBucket(10, 1)
    bucket.take(0.0)
    now, went = 0.0, []
    for _ in range(3):
        due = now + bucket.delay(now)
        now = due + late  # the head of the line wakes up
        bucket.take(now, due)
        went.append(round(now, 9))
    assert went == expected


@pytest.mark.parametrize(("rate", "burst"), [(10, 1), (10, 4), (3, 2), (100, 10)])
def test_the_bucket_never_lets_more_than_burst_plus_rate_times_window_through(
    rate: float, burst: int
) -> None:
    times = departures(rate, burst, [i * 0.001 for i in range(500)])  # 5x-50x overload
    window = 1.0
    for start in times:
        inside = [t for t in times if start <= t < start + window]
        assert len(inside) <= burst + rate * window


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(10):
        await asyncio.sleep(0)


class SleepingClock(FakeClock):
    """A fake clock whose sleep moves time on: for a shaper used by one task at a time."""

    def __init__(self) -> None:
        super().__init__(start=1000.0)
        self.sleeps: list[float] = []
        self.during_sleep: Callable[[], None] | None = None

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 9))
        if self.during_sleep is not None:
            action, self.during_sleep = self.during_sleep, None
            action()
        self.advance(seconds)
        await asyncio.sleep(0)


def shaper(clock: SleepingClock, **options: float | None) -> Shaper:
    return Shaper("nmbrs", clock=clock, sleep=clock.sleep, **options)  # type: ignore[arg-type]


async def test_rate_spaces_requests_and_counts_the_delayed() -> None:
    clock = SleepingClock()
    gate = shaper(clock, rate_per_second=10, burst=2)
    admitted = []
    for _ in range(5):
        (await gate.admit()).release()
        admitted.append(round(clock.now - 1000.0, 9))
    assert admitted == [0, 0, 0.1, 0.2, 0.3]
    assert gate.counters.delayed == 3
    assert gate.counters.throttled == 0


async def test_a_stalled_loop_does_not_let_the_late_requests_go_together() -> None:
    clock = SleepingClock()
    gate = shaper(clock, rate_per_second=10, burst=1)
    admitted: list[float] = []

    async def one() -> None:
        (await gate.admit()).release()
        admitted.append(round(clock.now - 1000.0, 9))

    await one()
    clock.during_sleep = lambda: clock.advance(1.0)  # the loop stalls for a second
    await asyncio.gather(one(), one(), one())
    # the three waited in line; the head woke a second late, the others still one tick apart
    assert admitted == [0, 1.1, 1.2, 1.3]


async def test_the_expected_wait_counts_the_requests_in_line() -> None:
    gate = Shaper("nmbrs", rate_per_second=10, burst=1, max_wait_seconds=0.25)
    first = asyncio.gather(*(gate.admit() for _ in range(3)))  # go at 0, 0.1 and 0.2
    await settle()
    with pytest.raises(TooManyRequests) as refused:
        await gate.admit()  # fourth in line: 0.3 s
    assert "it would wait 0.3s" in refused.value.detail
    for permit in await first:
        permit.release()


async def test_a_request_that_would_wait_too_long_is_refused_at_once() -> None:
    clock = SleepingClock()
    gate = shaper(clock, rate_per_second=1, burst=1, max_wait_seconds=2.5)
    for _ in range(3):  # at 0, 1 and 2 seconds: the last waited 2s, within the bound
        (await gate.admit()).release()
    clock.now -= 2.0  # three requests reserved the next 3 seconds; now a fourth arrives at once
    with pytest.raises(TooManyRequests) as refused:
        await gate.admit()
    assert refused.value.retry_after == 3
    assert refused.value.headers == {"Retry-After": "3"}
    assert refused.value.status == 429
    assert gate.counters.throttled == 1
    assert clock.sleeps == [1.0, 1.0]  # the refused request never slept


async def test_a_pause_holds_every_request_until_it_ends() -> None:
    clock = SleepingClock()
    gate = shaper(clock, max_wait_seconds=10)
    gate.pause(4.0)
    assert gate.paused_for() == 4.0
    (await gate.admit()).release()
    assert clock.now == 1004.0
    assert gate.counters.pauses == 1
    (await gate.admit()).release()  # over: no more waiting
    assert clock.sleeps == [4.0]


async def test_a_pause_longer_than_the_wait_bound_is_refused_with_its_remaining_time() -> None:
    clock = SleepingClock()
    gate = shaper(clock, max_wait_seconds=5)
    gate.pause(30.0)
    clock.advance(10.0)
    with pytest.raises(TooManyRequests) as refused:
        await gate.admit()
    assert refused.value.retry_after == 20
    assert clock.sleeps == []


async def test_a_pause_only_extends() -> None:
    clock = SleepingClock()
    gate = shaper(clock)
    gate.pause(5.0)
    gate.pause(2.0)
    assert gate.paused_for() == 5.0
    assert gate.counters.pauses == 1


async def test_a_pause_that_begins_during_the_wait_queues_the_request_again() -> None:
    clock = SleepingClock()
    gate = shaper(clock, rate_per_second=2, burst=1, max_wait_seconds=10)
    (await gate.admit()).release()  # at 0
    clock.during_sleep = lambda: gate.pause(3.0)  # the upstream answers 429 meanwhile
    (await gate.admit()).release()
    # slept 0.5 for its slot; the pause (set at 0) ends at 3, then a new slot
    assert clock.sleeps == [0.5, 2.5]
    assert clock.now == 1003.0


async def test_the_queue_is_bounded() -> None:
    gate = Shaper("nmbrs", max_concurrent=1, max_queue=1, max_wait_seconds=5)
    held = await gate.admit()
    waiter = asyncio.create_task(gate.admit())
    await settle()
    assert gate.waiting == 1
    with pytest.raises(TooManyRequests) as refused:
        await gate.admit()  # refused at once: one is queued already
    assert refused.value.retry_after == 1
    held.release()
    (await waiter).release()
    assert gate.waiting == 0


async def test_slots_are_handed_out_in_arrival_order() -> None:
    gate = Shaper("nmbrs", max_concurrent=2)
    first, second = await gate.admit(), await gate.admit()
    order: list[str] = []

    async def wait(name: str) -> Permit:
        permit = await gate.admit()
        order.append(name)
        return permit

    later = [asyncio.create_task(wait(name)) for name in ("a", "b", "c")]
    await settle()
    assert order == []
    first.release()
    first.release()  # releasing twice frees one slot, not two
    await settle()
    assert order == ["a"]
    second.release()
    (await later[0]).release()
    (await later[1]).release()
    (await later[2]).release()
    assert order == ["a", "b", "c"]


async def test_a_slot_that_stays_busy_past_the_wait_bound_is_a_429() -> None:
    gate = Shaper("nmbrs", max_concurrent=1, max_wait_seconds=0.05)
    held = await gate.admit()
    with pytest.raises(TooManyRequests) as refused:
        await gate.admit()
    assert "every upstream slot stayed busy" in refused.value.detail
    assert gate.waiting == 0
    held.release()
    (await gate.admit()).release()


async def test_a_cancelled_waiter_leaves_the_queue_and_no_slot_behind() -> None:
    clock = SleepingClock()
    gate = Shaper("nmbrs", max_concurrent=1, max_wait_seconds=10, clock=clock)
    held = await gate.admit()
    waiter = asyncio.create_task(gate.admit())
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0
    held.release()
    (await gate.admit()).release()


async def test_no_limits_admit_at_once() -> None:
    clock = SleepingClock()
    gate = shaper(clock)
    permits = [await gate.admit() for _ in range(50)]
    for permit in permits:
        permit.release()
    assert clock.sleeps == []
    assert gate.counters.delayed == 0


# --- the rate learned from the upstream's 429s ------------------------------------------------


def taught(gate: Shaper, through: int) -> None:
    """`through` answers got through, then a 429: the shaper learns 0.7 times through per second."""
    for _ in range(through):
        gate.answered(200)
    gate.answered(429)


async def admitted_at(gate: Shaper, clock: SleepingClock, count: int) -> list[float]:
    out = []
    for _ in range(count):
        (await gate.admit()).release()
        out.append(round(clock.now - 1000.0, 9))
    return out


async def test_after_a_pause_requests_leave_at_the_learned_rate() -> None:
    clock = SleepingClock()
    gate = shaper(clock)
    assert gate.learned_rate() is None
    taught(gate, 10)  # the exchange tells every status
    gate.pause(1.0)  # and pauses the connection for the 429's Retry-After
    assert gate.learned_rate() == 7.0
    went = await admitted_at(gate, clock, 4)
    # not all at once when the pause ends: one every 1/7 s
    assert went == pytest.approx([1.0, 1 + 1 / 7, 1 + 2 / 7, 1 + 3 / 7])
    assert gate.counters.delayed == 4


async def test_a_connection_that_never_saw_a_429_keeps_its_fast_path() -> None:
    clock = SleepingClock()
    gate = shaper(clock)
    for status in (200, 204, 304, 401, 404, 500, 502, 503, 504):
        gate.answered(status)
    assert gate.learned_rate() is None
    assert await gate.admit() is await gate.admit()  # the one shared permit: nothing held
    assert clock.sleeps == []


async def test_5xx_answers_say_nothing_about_the_quota() -> None:
    gate = shaper(SleepingClock())
    for _ in range(10):
        gate.answered(200)
        gate.answered(503)  # not counted as having got through
    gate.answered(429)
    assert gate.learned_rate() == 7.0


async def test_the_lesson_is_forgotten_after_a_clean_stretch_and_the_fast_path_is_back() -> None:
    clock = SleepingClock()
    gate = shaper(clock)
    taught(gate, 10)
    clock.advance(301.0)
    assert gate.learned_rate() is None
    assert await gate.admit() is await gate.admit()
    assert clock.sleeps == []


async def test_the_configured_rate_caps_the_learned_one_and_comes_back_with_its_burst() -> None:
    clock = SleepingClock()
    gate = shaper(clock, rate_per_second=5, burst=3)
    taught(gate, 10)  # 10 got through in the last second: 7 learned, but never above 0.7 times 5
    assert gate.learned_rate() == 3.5
    went = await admitted_at(gate, clock, 3)
    assert went == pytest.approx([0, 1 / 3.5, 2 / 3.5])  # burst 1 while learned
    for _ in range(10):  # clean answers: +1/rate each, until it reaches the configured 5
        clock.advance(1.0)
        gate.answered(200)
    assert gate.learned_rate() is None
    clock.advance(10.0)
    now = clock.now - 1000.0
    assert await admitted_at(gate, clock, 4) == pytest.approx([now] * 3 + [now + 0.2])  # burst 3


async def test_a_429_while_waiting_slows_the_head_of_the_line() -> None:
    clock = SleepingClock()
    gate = shaper(clock, max_wait_seconds=10)
    (await gate.admit()).release()

    def refused() -> None:  # meanwhile an answer comes back 429, after 10 that got through
        taught(gate, 10)
        gate.pause(1.0)

    clock.during_sleep = refused
    gate.pause(0.5)
    went = await admitted_at(gate, clock, 2)
    assert went == pytest.approx([1.0, 1 + 1 / 7])


async def test_a_rebuilt_shaper_goes_on_from_what_the_old_one_learned() -> None:
    clock = SleepingClock()
    old = shaper(clock)
    taught(old, 10)
    old.pause(2.0)
    new = shaper(clock, max_concurrent=4)  # a reload changed the connection's shaping
    new.take_over(old)
    assert new.learned_rate() == 7.0
    assert new.paused_for() == 2.0
    higher = shaper(clock, rate_per_second=10)
    higher.take_over(old)
    assert higher.learned_rate() == 7.0
    lower = shaper(clock, rate_per_second=6)
    lower.take_over(old)
    assert lower.learned_rate() is None  # the configured rate alone holds it back more
    new.answered(200)
    assert old.learned_rate() == 7.0  # each goes on by itself
