"""The access line written from its values is the line its record gives, byte for byte."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from proxy.core.redact import RedactingFilter
from proxy.telemetry.logs import JsonFormatter
from proxy.telemetry.records import access_json, access_record

_VALUES = ("req-7", "0af7651916cd43dd8448eb211c80319c", "127.0.0.1", "GET", "/api/companies",
           200, 1.25, 0.5, "nmbrs", 1024)


def _with(**changes: Any) -> tuple[object, ...]:
    names = ("request_id", "trace_id", "remote", "method", "path", "status", "duration_ms",
             "upstream_ms", "connection", "body_bytes")
    return tuple(changes.get(name, value) for name, value in zip(names, _VALUES, strict=True))


def _line_of_record(level: int, created: float, values: tuple[object, ...],
                    redactors: list[RedactingFilter]) -> str:
    record = access_record(level, created, values)
    for redactor in redactors:
        redactor.filter(record)
    return JsonFormatter().format(record)


@pytest.mark.parametrize("values", [
    _VALUES,
    _with(remote=None, connection=None, body_bytes=None),  # unrouted, nothing sent
    _with(path='/a b"\\\u00e9\u2603\x01', method="PROPFIND"),  # escapes, non-ASCII
    _with(duration_ms=0.0, upstream_ms=1e-07, body_bytes=0),
    _with(duration_ms=float("nan"), upstream_ms=float("inf")),  # the encoder's spelling
    _with(duration_ms=123456789.123, body_bytes=10**20),
    _with(status=499, body_bytes=True),
    _with(connection=("not", "a", "string")),  # anything else: as the encoder writes it
])
@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
@pytest.mark.parametrize("created", [0.0, 1_800_000_000.999, 1_800_000_000.0005])
def test_an_access_line_is_the_json_line_of_its_record(
    values: tuple[object, ...], level: int, created: float
) -> None:
    redactors = [RedactingFilter(["s3cr:et%+demo"])]
    line = access_json(level, created, values, redactors)
    assert line == _line_of_record(level, created, values, redactors)


@pytest.mark.parametrize("path", [
    "/api/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",  # a JWT in the path
    "/api/s3cr:et%+demo/x",  # a configured secret
    "/api/x;access_token=abc",
])
def test_an_access_line_that_redaction_changes_is_left_to_its_record(path: str) -> None:
    redactors = [RedactingFilter(["s3cr:et%+demo"])]
    values = _with(path=path)
    assert access_json(logging.INFO, 1.0, values, redactors) is None
    assert "[redacted]" in _line_of_record(logging.INFO, 1.0, values, redactors)


def test_without_redactors_every_line_is_written_directly() -> None:
    values = _with(path="/api/x;access_token=abc")
    assert access_json(logging.INFO, 1.0, values, []) == _line_of_record(
        logging.INFO, 1.0, values, [])
