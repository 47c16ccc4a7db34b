"""The `traceparent` rules of W3C Trace Context: what is continued, what restarts a trace."""

from __future__ import annotations

import random
import re

import pytest

from proxy.core import traceparent
from proxy.core.traceparent import SAMPLED, TraceParent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"
HEADER = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")


@pytest.mark.parametrize(
    ("value", "flags"),
    [
        pytest.param(VALID, 0x01, id="sampled"),
        pytest.param(f"00-{TRACE}-{SPAN}-00", 0x00, id="not-sampled"),
        pytest.param(f"00-{TRACE}-{SPAN}-09", 0x09, id="flags-kept-as-sent-in-00"),
        pytest.param(f" \t{VALID} \t", 0x01, id="surrounding-whitespace"),
        # a higher version: read with version 00's layout, only the flags 00 knows kept
        pytest.param(f"cc-{TRACE}-{SPAN}-01", 0x01, id="future-version"),
        pytest.param(f"cc-{TRACE}-{SPAN}-01-what-the-future-will-be-like", 0x01,
                     id="future-version-with-more-fields"),
        pytest.param(f"01-{TRACE}-{SPAN}-ff-x", 0x01, id="future-version-unknown-flags-dropped"),
        pytest.param(f"fe-{TRACE}-{SPAN}-00", 0x00, id="highest-allowed-version"),
    ],
)
def test_a_valid_traceparent_is_continued(value: str, flags: int) -> None:
    parsed = traceparent.parse(value)
    assert parsed == TraceParent(TRACE, SPAN, flags, value.strip(" \t"))
    assert parsed.sampled is bool(flags & SAMPLED)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("00", id="only-a-version"),
        pytest.param(f"ff-{TRACE}-{SPAN}-01", id="version-ff"),
        pytest.param(f".0-{TRACE}-{SPAN}-01", id="version-not-hex"),
        pytest.param(f"0-{TRACE}-{SPAN}-01", id="version-too-short"),
        pytest.param(f"000-{TRACE}-{SPAN}-01", id="version-too-long"),
        pytest.param(f"0A-{TRACE}-{SPAN}-01", id="version-uppercase"),
        pytest.param(f"00-{TRACE}-{SPAN}-01.", id="00-with-trailing-character"),
        pytest.param(f"00-{TRACE}-{SPAN}-01-what-the-future-will-be-like",
                     id="00-with-more-fields"),
        pytest.param(f"00-{'0' * 32}-{SPAN}-01", id="trace-id-zero"),
        pytest.param(f"00-{TRACE.upper()}-{SPAN}-01", id="trace-id-uppercase"),
        pytest.param(f"00-.{TRACE[1:]}-{SPAN}-01", id="trace-id-not-hex"),
        pytest.param(f"00-{TRACE}0-{SPAN}-01", id="trace-id-too-long"),
        pytest.param(f"00-{TRACE[1:]}-{SPAN}-01", id="trace-id-too-short"),
        pytest.param(f"00-{TRACE}-{'0' * 16}-01", id="parent-id-zero"),
        pytest.param(f"00-{TRACE}-{SPAN.upper()}-01", id="parent-id-uppercase"),
        pytest.param(f"00-{TRACE}-{SPAN[:-1]}.-01", id="parent-id-not-hex"),
        pytest.param(f"00-{TRACE}-{SPAN}0-01", id="parent-id-too-long"),
        pytest.param(f"00-{TRACE}-{SPAN[1:]}-01", id="parent-id-too-short"),
        pytest.param(f"00-{TRACE}-{SPAN}-.0", id="flags-not-hex"),
        pytest.param(f"00-{TRACE}-{SPAN}-001", id="flags-too-long"),
        pytest.param(f"00-{TRACE}-{SPAN}-1", id="flags-too-short"),
        pytest.param(f"00-{TRACE}-{SPAN}-0A", id="flags-uppercase"),
        pytest.param(f"00_{TRACE}_{SPAN}_01", id="other-delimiter"),
        pytest.param(f"cc-{TRACE}-{SPAN}-01.what-the-future-will-be-like",
                     id="future-version-flags-not-ended-by-a-dash"),
        pytest.param(f"cc-{TRACE}-{SPAN}", id="future-version-shorter-than-55"),
        pytest.param(f"cc-{'0' * 32}-{SPAN}-01", id="future-version-trace-id-zero"),
        pytest.param(f"00-{TRACE}-{SPAN}-01\n", id="a-line-break"),
    ],
)
def test_an_invalid_traceparent_restarts_the_trace(value: str) -> None:
    assert traceparent.parse(value) is None


@pytest.mark.parametrize(
    ("values", "continued"),
    [
        pytest.param([], False, id="none"),
        pytest.param([VALID], True, id="one"),
        pytest.param([VALID, VALID], False, id="the-same-twice"),
        pytest.param([VALID, f"00-{'1' * 32}-{SPAN}-01"], False, id="two-parents"),
        pytest.param(["nonsense"], False, id="invalid"),
    ],
)
def test_a_request_continues_only_a_single_valid_traceparent(
    values: list[str], continued: bool
) -> None:
    assert (traceparent.received(values) is not None) is continued


@pytest.mark.parametrize(
    ("trace_id", "parent_id", "flags", "expected"),
    [
        (TRACE, SPAN, 0x01, VALID),
        (TRACE, SPAN, 0x00, f"00-{TRACE}-{SPAN}-00"),
        (TRACE, SPAN, 0x1FF, f"00-{TRACE}-{SPAN}-ff"),  # one byte of flags, never more
    ],
)
def test_header(trace_id: str, parent_id: str, flags: int, expected: str) -> None:
    assert traceparent.header(trace_id, parent_id, flags) == expected
    assert traceparent.parse(expected) is not None


@pytest.mark.parametrize(("sampled", "flags"), [(False, 0x00), (True, 0x01)])
def test_a_started_trace_is_new_valid_and_sampled_only_when_told(
    sampled: bool, flags: int
) -> None:
    started = [traceparent.start(sampled=sampled) for _ in range(200)]
    for one in started:
        assert HEADER.fullmatch(one.value)
        assert traceparent.parse(one.value) == one
        assert one.flags == flags
    assert len({one.trace_id for one in started}) == 200
    assert len({one.parent_id for one in started}) == 200


def test_new_ids_are_never_all_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([0, 0, 7, 0, 5, 1 << 64, 1, (3 << 64) | 2])
    monkeypatch.setattr(random, "getrandbits", lambda _bits: next(draws))
    assert traceparent.new_trace_id() == f"{7:032x}"
    assert traceparent.new_span_id() == f"{5:016x}"
    started = traceparent.start()  # neither id may be zero: drawn again until so
    assert (started.trace_id, started.parent_id) == (f"{3:032x}", f"{2:016x}")
