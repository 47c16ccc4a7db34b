"""W3C Trace Context, Level 1 (https://www.w3.org/TR/trace-context-1/): the `traceparent` header
read and written, and new ids. Pure: no I/O.

§3.2: `traceparent = version "-" trace-id "-" parent-id "-" trace-flags`, all lowercase hex:
a 2-digit version (`ff` is invalid), a 32-digit trace id and a 16-digit parent id (neither all
zeros) and 2 digits of flags, of which bit 0 is `sampled`. Version `00` is exactly those 55
characters. A higher version (§3.2.4, "Versioning of traceparent") is read with version 00's
layout: its first four fields must be there and valid, and be followed by the end of the value
or a dash; nothing after that is looked at, and only the flags version 00 knows are kept. Any
other value is invalid, as is a request that sends the field twice (a list, not one parent):
the receiver then starts a new trace (§4, "restarting"), and forgets the `tracestate` with it
(§3.3: it is not even parsed when `traceparent` could not be).

Ids are made with `random.getrandbits`, as the OpenTelemetry SDK makes them: they must be
unique, not unguessable, and this costs a fraction of a microsecond. (The interpreter reseeds
that generator in a forked child, so workers do not repeat each other.)
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Final, NamedTuple

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
SAMPLED: Final = 0x01
VERSION: Final = "00"  # the version this module writes (the highest one it knows)

_FIELDS: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?",
                            re.DOTALL)
_ZERO_TRACE_ID: Final = "0" * 32
_ZERO_SPAN_ID: Final = "0" * 16
_OWS: Final = " \t"  # RFC 9110 §5.6.3: optional whitespace around a field value


class TraceParent(NamedTuple):
    """A valid `traceparent`: its ids, its flags, and the value to pass on unchanged."""

    trace_id: str  # 32 lowercase hex digits
    parent_id: str  # 16 lowercase hex digits: the caller's span
    flags: int
    value: str  # as received (without surrounding whitespace), or as made here

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)


def parse(value: str) -> TraceParent | None:
    """The trace context `value` carries; None when it is invalid (start a new trace then)."""
    text = value.strip(_OWS)
    found = _FIELDS.fullmatch(text)
    if found is None:
        return None
    version, trace_id, parent_id, flags, rest = found.groups()
    if version == "ff" or (version == VERSION and rest is not None):
        return None
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_SPAN_ID:
        return None
    bits = int(flags, 16)
    if version != VERSION:
        bits &= SAMPLED  # the other bits mean something only in a version not known here
    return TraceParent(trace_id, parent_id, bits, text)


def received(values: Sequence[str]) -> TraceParent | None:
    """The trace context of a request whose `traceparent` fields are `values` (usually one)."""
    if len(values) != 1:
        return None  # none, or several: no single parent to continue
    return parse(values[0])


def header(trace_id: str, parent_id: str, flags: int) -> str:
    """A version 00 `traceparent` value."""
    return f"{VERSION}-{trace_id}-{parent_id}-{flags & 0xFF:02x}"


def _random_hex(size: int) -> str:
    """`size` random bytes as hex (a third of the cost of formatting the number itself)."""
    return random.getrandbits(size * 8).to_bytes(size, "big").hex()  # unique, not secret


def new_trace_id() -> str:
    """32 hex digits, random, never all zeros."""
    while True:
        digits = _random_hex(16)
        if digits != _ZERO_TRACE_ID:
            return digits


def new_span_id() -> str:
    """16 hex digits, random, never all zeros."""
    while True:
        digits = _random_hex(8)
        if digits != _ZERO_SPAN_ID:
            return digits


def start(*, sampled: bool = False) -> TraceParent:
    """A new trace, with the proxy's own span as the parent of what it sends on.

    Not sampled unless told: a proxy that records nothing says so (§3.2, "Sampled flag": it
    "should be set to 0 as the default option when the trace is initiated by this component").
    """
    while True:  # both ids from one draw: this runs for every request that brings no trace
        digits = _random_hex(24)
        trace_id, span_id = digits[:32], digits[32:]
        if trace_id != _ZERO_TRACE_ID and span_id != _ZERO_SPAN_ID:
            break
    flags = SAMPLED if sampled else 0
    return TraceParent(trace_id, span_id, flags, f"{VERSION}-{trace_id}-{span_id}-{flags:02x}")
