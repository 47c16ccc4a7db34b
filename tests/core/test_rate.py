"""The rate learned from an upstream's 429s (AIMD), as tables of answers and clock readings."""

from __future__ import annotations

import pytest

from proxy.core.rate import (
    DECREASE,
    FORGET_AFTER_SECONDS,
    MIN_RATE,
    WINDOW_SECONDS,
    LearnedRate,
)

OK, NO = "ok", "429"


def oks(count: int, start: float, step: float = 0.01) -> list[tuple[float, str]]:
    """`count` answers that got through, `step` seconds apart from `start`."""
    return [(start + i * step, OK) for i in range(count)]


def learn(events: list[tuple[float, str]], cap: float | None = None) -> LearnedRate:
    learned = LearnedRate(cap=cap)
    for at, what in events:
        if what == OK:
            learned.passed(at)
        else:
            learned.throttled(at)
    return learned


def grown(rate: float, answers: int) -> float:
    """`rate` after `answers` clean answers: each adds 1/rate."""
    for _ in range(answers):
        rate += 1 / rate
    return rate


@pytest.mark.parametrize(
    ("events", "cap", "expected"),
    [
        pytest.param(oks(500, 0.0), None, None, id="no-429-nothing-learned"),
        pytest.param([*oks(10, 0.0), (0.1, NO)], None, 7.0, id="429-0.7x-what-got-through"),
        pytest.param([(0.0, NO)], None, MIN_RATE, id="nothing-got-through-floor"),
        pytest.param([*oks(10, 0.0), (5.0, NO)], None, MIN_RATE,
                     id="only-the-last-second-counts"),
        pytest.param([*oks(10, 0.0, 0.2), (1.95, NO)], None, 0.7 * 5,
                     id="a-rolling-second-not-since-the-start"),
        pytest.param([(0.0, NO), *oks(10, 0.01)], None, 7.0,
                     id="late-answers-of-the-burst-still-count"),
        pytest.param([*oks(4, 0.0), (0.05, NO), *oks(6, 0.06)], None, 7.0,
                     id="before-and-after-the-429-together"),
        pytest.param([*oks(10, 0.0), (0.1, NO), (0.2, NO), (0.9, NO)], None, 7.0,
                     id="429s-of-the-same-burst-decrease-once"),
        pytest.param([*oks(10, 0.0), (0.1, NO), *oks(5, 1.2, 0.2), (2.1, NO)], None,
                     DECREASE * 5, id="a-later-429-decreases-from-what-got-through"),
        pytest.param([*oks(20, 0.0), (0.2, NO), *oks(3, 1.2, 0.3), (2.1, NO)], None,
                     DECREASE * 3, id="demand-below-the-rate-decreases-below-it"),
        pytest.param([*oks(10, 0.0), (0.1, NO), *oks(1, 1.2)], None, 7.0 + 1 / 7.0,
                     id="a-clean-answer-adds-1-over-rate"),
        pytest.param([*oks(10, 0.0), (0.1, NO), *oks(7, 1.2, 1 / 7)], None, grown(7.0, 7),
                     id="about-one-per-second-at-the-learned-rate"),
        pytest.param([(0.0, NO), (1.1, NO), (2.2, NO), (3.3, NO)], None, MIN_RATE,
                     id="never-below-the-floor"),
        pytest.param([*oks(10, 0.0), (0.1, NO)], 5.0, DECREASE * 5.0,
                     id="decreases-from-the-configured-rate"),
        pytest.param([*oks(4, 0.0), (0.1, NO)], 5.0, DECREASE * 4,
                     id="or-from-what-got-through-when-lower"),
        pytest.param([(0.0, NO)], 0.2, 0.2, id="never-above-the-configured-rate"),
        pytest.param([*oks(4, 0.0), (0.1, NO), *oks(3, 1.2)], 3.3, None,
                     id="forgotten-once-it-reaches-the-configured-rate"),
        pytest.param([*oks(10, 0.0), (0.5, NO), *oks(1, 0.5 + FORGET_AFTER_SECONDS)], None, None,
                     id="forgotten-after-a-long-clean-stretch"),
        pytest.param([*oks(10, 0.0), (0.5, NO), *oks(3, 249.5), (250.0, NO),
                      *oks(1, 0.5 + FORGET_AFTER_SECONDS)], None, DECREASE * 3 + 1 / 2.1,
                     id="a-429-restarts-the-clean-stretch"),
        pytest.param([*oks(10, 0.0), (0.5, NO), *oks(1, 20.0), (30.0, NO), *oks(1, 40.0)],
                     None, MIN_RATE + 1 / MIN_RATE, id="a-429-when-nothing-got-through"),
    ],
)
def test_learned_rate(events: list[tuple[float, str]], cap: float | None,
                      expected: float | None) -> None:
    rate = learn(events, cap).rate
    if expected is None:
        assert rate is None
    else:
        assert rate == pytest.approx(expected)


def test_throttled_says_whether_it_decreased() -> None:
    learned = learn(oks(10, 0.0))
    assert learned.throttled(0.1) is True
    assert learned.throttled(0.1 + WINDOW_SECONDS / 2) is False  # the same burst
    assert learned.throttled(0.1 + WINDOW_SECONDS) is True


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (1.0, 7.0),
        (0.5 + FORGET_AFTER_SECONDS - 0.001, 7.0),
        (0.5 + FORGET_AFTER_SECONDS, None),
    ],
)
def test_at_forgets_after_the_clean_stretch_without_an_answer(now: float,
                                                              expected: float | None) -> None:
    learned = learn([*oks(10, 0.0), (0.5, NO)])
    assert learned.at(now) == expected


@pytest.mark.parametrize(
    ("cap", "expected"),
    [
        (None, 7.0),
        (10.0, 7.0),
        (7.0, None),  # the configured rate alone holds it back as much
        (3.0, None),
    ],
)
def test_under_another_cap_keeps_what_was_learned(cap: float | None,
                                                  expected: float | None) -> None:
    before = learn([*oks(10, 0.0), (0.1, NO)])
    after = before.under(cap)
    assert (after.cap, after.rate) == (cap, expected)
    after.passed(5.0)
    assert before.rate == 7.0  # a copy: the one it was made from goes on by itself
    assert before.through(5.0) == 0


def test_through_counts_a_rolling_window() -> None:
    learned = learn(oks(10, 0.0, 0.1))  # at 0.0 .. 0.9
    assert learned.through(0.95) == 10
    assert learned.through(1.05) == 9  # the one at 0.0 left the window
    assert learned.through(2.0) == 0
