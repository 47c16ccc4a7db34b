"""Retry rules: Retry-After in both forms, backoff with jitter, pauses, and every decision."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from proxy.config import RetrySettings
from proxy.forwarding.retry import (
    DEFAULT_PAUSE_SECONDS,
    backoff,
    decide,
    parse_retry_after,
    pause_after,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("007", 7.0),
        # RFC 9110 §5.6.7: IMF-fixdate, and the two obsolete forms a recipient must accept
        ("Wed, 01 May 2024 12:00:30 GMT", 30.0),
        ("Wednesday, 01-May-24 12:01:00 GMT", 60.0),
        ("Wed May  1 12:00:05 2024", 5.0),  # asctime: no zone, read as GMT
        ("Wed, 01 May 2024 11:59:00 GMT", 0.0),  # in the past: go now
        ("", None),
        ("-5", None),
        ("1.5", None),  # delay-seconds is a whole number
        ("soon", None),
        ("Wed, 99 May 2024 12:00:30 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (0, 0.0, 0.25),  # base 0.5: half of it, plus jitter on the other half
        (0, 0.999, 0.49975),
        (1, 0.0, 0.5),
        (1, 0.5, 0.75),
        (3, 0.0, 2.0),
        (3, 1.0, 4.0),
    ],
)
def test_backoff_doubles_with_the_upper_half_jittered(
    attempt: int, rand: float, expected: float
) -> None:
    assert backoff(attempt, 0.5, rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, 3.0, 3.0),
        (429, None, DEFAULT_PAUSE_SECONDS),
        (429, 0.0, 0.0),
        (503, 30.0, 30.0),  # maintenance with a date to come back
        (503, None, None),
        (502, 5.0, None),
        (200, 5.0, None),
    ],
)
def test_pause_after(status: int, retry_after: float | None, expected: float | None) -> None:
    assert pause_after(status, retry_after) == expected


POLICY = RetrySettings(count=2, deadline_seconds=10.0, backoff_seconds=0.5)
POST_TOO = replace(POLICY, methods=(*POLICY.methods, "POST"))


@pytest.mark.parametrize(
    ("policy", "call", "retry", "delay", "reason"),
    [
        pytest.param(POLICY, {}, True, 0.25, "retry 1 of 2", id="get-503"),
        pytest.param(POLICY, {"status": None}, True, 0.25, "retry 1 of 2", id="connect-failed"),
        pytest.param(POLICY, {"status": 429, "retry_after": 3.0}, True, 3.0, "retry 1 of 2",
                     id="429-waits-retry-after"),
        pytest.param(POLICY, {"status": 429, "retry_after": 0.0}, True, 0.25, "retry 1 of 2",
                     id="429-retry-after-0-still-backs-off"),
        pytest.param(POLICY, {"attempt": 1}, True, 0.5, "retry 2 of 2", id="second-retry"),
        pytest.param(POLICY, {"attempt": 2}, False, 0.0, "2 retries used up", id="used-up"),
        pytest.param(POLICY, {"method": "PUT"}, True, 0.25, "retry 1 of 2", id="put"),
        pytest.param(POLICY, {"method": "DELETE"}, True, 0.25, "retry 1 of 2", id="delete"),
        pytest.param(POLICY, {"method": "HEAD"}, True, 0.25, "retry 1 of 2", id="head"),
        pytest.param(POLICY, {"method": "OPTIONS"}, True, 0.25, "retry 1 of 2", id="options"),
        pytest.param(POLICY, {"method": "POST"}, False, 0.0, "POST is not retried", id="post"),
        pytest.param(POLICY, {"method": "PATCH"}, False, 0.0, "PATCH is not retried", id="patch"),
        pytest.param(POLICY, {"method": "POST", "status": None}, False, 0.0,
                     "POST is not retried", id="post-connect-failed"),
        pytest.param(POST_TOO, {"method": "POST"}, True, 0.25, "retry 1 of 2", id="post-opted-in"),
        pytest.param(POLICY, {"status": 500}, False, 0.0, "status 500 is not retried", id="500"),
        pytest.param(POLICY, {"status": 404}, False, 0.0, "status 404 is not retried", id="404"),
        pytest.param(POLICY, {"replayable": False}, False, 0.0,
                     "the request body was streamed and is gone", id="streamed-body"),
        pytest.param(POLICY, {"elapsed": 9.8}, False, 0.0,
                     "waiting 0.2s would pass the 10s deadline", id="deadline"),
        pytest.param(POLICY, {"status": 429, "retry_after": 60.0}, False, 0.0,
                     "waiting 60.0s would pass the 10s deadline", id="retry-after-past-deadline"),
        pytest.param(replace(POLICY, count=0), {}, False, 0.0, "0 retries used up", id="off"),
        pytest.param(replace(POLICY, statuses=(500,)), {"status": 500}, True, 0.25,
                     "retry 1 of 2", id="500-opted-in"),
    ],
)
def test_decide(
    policy: RetrySettings, call: dict[str, object], retry: bool, delay: float, reason: str
) -> None:
    arguments: dict[str, object] = {
        "method": "GET", "status": 503, "attempt": 0, "replayable": True, "elapsed": 0.0,
        "retry_after": None, "rand": 0.0, **call,
    }  # fmt: skip
    decision = decide(policy, **arguments)  # type: ignore[arg-type]
    assert (decision.retry, decision.reason) == (retry, reason)
    assert decision.delay == pytest.approx(delay)
