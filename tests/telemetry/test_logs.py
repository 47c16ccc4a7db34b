"""Log records as JSON lines and readable lines, written by a thread that never blocks the loop."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.telemetry import logs
from proxy.telemetry.logs import (
    CURRENT_REQUEST_ID,
    JsonFormatter,
    TextFormatter,
    access_line,
    resolve_format,
    setup_logging,
)
from proxy.telemetry.records import ACCESS_FIELDS, AccessRecord, access_record, extras


def record(msg: str = "hello %s", *args: object, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("proxy.test", logging.WARNING, __file__, 1, msg, args or ("x",),
                             None)
    made.created = 1_800_000_000.25
    for key, value in extra.items():
        setattr(made, key, value)
    return made


@pytest.mark.parametrize(
    ("requested", "isatty", "chosen"),
    [
        ("auto", True, "text"),
        ("auto", False, "json"),
        ("json", True, "json"),
        ("text", False, "text"),
    ],
)
def test_resolve_format(requested: str, isatty: bool, chosen: str) -> None:
    assert resolve_format(requested, isatty=isatty) == chosen


def test_resolve_format_refuses_unknown() -> None:
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        resolve_format("xml", isatty=False)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {}),
        ({"request_id": "r1", "status": 200}, {"request_id": "r1", "status": 200}),
        ({"_private": 1, "connection": None}, {"connection": None}),
    ],
)
def test_extras_are_what_was_added(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    assert extras(record(**extra)) == expected


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {}),
        ({"request_id": "r1", "status": 503}, {"request_id": "r1", "status": 503}),
        ({"path": object}, {"path": str(object)}),  # anything JSON cannot hold becomes text
        ({"level": "shadow"}, {}),  # an extra never overwrites one of the fixed keys
    ],
)
def test_json_lines(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    line = JsonFormatter().format(record(**extra))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry == {
        "time": "2027-01-15T08:00:00.250Z",
        "level": "warning",
        "logger": "proxy.test",
        "message": "hello x",
        **expected,
    }


_ACCESS_FIELDS: dict[str, Any] = {
    "request_id": "8f14e45fceea167a", "remote": "127.0.0.1", "method": "GET",
    "path": "/api/companies", "status": 200, "duration_ms": 1.25, "upstream_ms": 0.5,
    "connection": None, "body_bytes": 1024,
}


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()])
@pytest.mark.parametrize("fields", [_ACCESS_FIELDS, {}, {"path": '/a b"\u00e9', "ratio": 0.1}])
def test_an_access_record_is_written_as_the_same_record_made_by_logging(
    formatter: logging.Formatter, fields: dict[str, Any]
) -> None:
    made = logging.getLogger("proxy.access").makeRecord(
        "proxy.access", logging.INFO, "", 0, "%s %s %d", ("GET", "/api", 200), None,
        extra=fields)
    fast = AccessRecord("proxy.access", logging.INFO, "%s %s %d", ("GET", "/api", 200), fields)
    fast.created = made.created
    assert formatter.format(fast) == formatter.format(made)
    assert extras(fast) == extras(made) == fields


@pytest.mark.parametrize("change", [
    {"worker": 4242},  # what a worker's filter adds
    {"path": "/masked"},  # what redaction rewrites
    {"worker": 1, "path": "/x", "_private": "never shown"},
])
def test_an_access_record_shows_what_filters_changed_or_added(change: dict[str, Any]) -> None:
    made = logging.getLogger("proxy.access").makeRecord(
        "proxy.access", logging.INFO, "", 0, "%s %s %d", ("GET", "/api", 200), None,
        extra=_ACCESS_FIELDS)
    fast = AccessRecord("proxy.access", logging.INFO, "%s %s %d", ("GET", "/api", 200),
                        _ACCESS_FIELDS, created=made.created)
    for record in (made, fast):
        for key, value in change.items():
            setattr(record, key, value)
    assert extras(fast) == extras(made)
    assert list(extras(fast)) == list(extras(made))  # the same order, so the same line
    assert JsonFormatter().format(fast) == JsonFormatter().format(made)


def test_an_access_record_serves_any_handler_format() -> None:
    fast = AccessRecord("proxy.access", logging.INFO, "%s", ("x",), {"status": 200})
    every = ("%(asctime)s %(msecs)d %(relativeCreated)d %(levelname)s %(levelno)s %(name)s "
             "%(message)s %(pathname)s %(filename)s %(module)s %(funcName)s %(lineno)d "
             "%(thread)s %(threadName)s %(process)s %(processName)s %(status)s")
    line = logging.Formatter(every).format(fast)
    assert " INFO 20 proxy.access x " in line
    assert line.endswith(" 200")


def _fail() -> None:
    raise RuntimeError("boom")


def test_json_lines_carry_the_traceback() -> None:
    try:
        _fail()
    except RuntimeError:
        failed = record()
        failed.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(failed))
    assert entry["exc"].startswith("Traceback")
    assert "RuntimeError: boom" in entry["exc"]


@pytest.mark.parametrize(
    ("extra", "suffix"),
    [
        ({}, ""),
        ({"status": 200, "request_id": "abc"}, " status=200 request_id=abc"),
        ({"path": "/a b"}, ' path="/a b"'),
        ({"note": ""}, ' note=""'),
    ],
)
def test_readable_lines(extra: dict[str, Any], suffix: str) -> None:
    line = TextFormatter().format(record(**extra))
    assert line == f"2027-01-15T08:00:00.250Z WARNING proxy.test: hello x{suffix}"


def test_records_cross_the_queue_with_their_request_id() -> None:
    stream = io.StringIO()
    setup = setup_logging("info", "json", stream=stream)
    logger = logging.getLogger("proxy.test.queue")
    try:
        token = CURRENT_REQUEST_ID.set("req-42")
        args = ["mutable"]
        logger.info("value %s", args, extra={"connection": "nmbrs"})
        args.append("changed later")  # the message was merged when it was logged
        CURRENT_REQUEST_ID.reset(token)
        logger.debug("below the level")
        logger.warning("outside a request")
    finally:
        setup.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [entry["message"] for entry in lines] == ["value ['mutable']", "outside a request"]
    assert lines[0]["request_id"] == "req-42"
    assert lines[0]["connection"] == "nmbrs"
    assert "request_id" not in lines[1]


class StalledStream(io.StringIO):
    """A stderr nobody reads: every write waits until the test lets it through."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    def write(self, text: str) -> int:
        self.go.wait(timeout=10)
        return super().write(text)


def test_a_stalled_stream_does_not_stall_the_caller() -> None:
    stream = StalledStream()
    setup = setup_logging("info", "json", stream=stream)
    logger = logging.getLogger("proxy.test.stalled")
    try:
        for number in range(2000):
            logger.info("line %d", number)
        # Logging returned although no write could finish: had it written on this thread,
        # the first call would have waited for the stream (and then written something).
        assert stream.getvalue() == ""
    finally:
        stream.go.set()
        setup.close()
    assert len(stream.getvalue().splitlines()) == 2000


def test_filters_see_every_record_before_it_is_written() -> None:
    class Mask(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg = str(record.msg).replace("s3cret", "[redacted]")
            return "drop me" not in record.msg

    stream = io.StringIO()
    setup = setup_logging("info", "text", stream=stream, filters=[Mask()])
    logger = logging.getLogger("proxy.test.filters")
    try:
        logger.info("token %s", "s3cret")
        logger.info("drop me")
    finally:
        setup.close()
    assert "s3cret" not in stream.getvalue()
    assert "token [redacted]" in stream.getvalue()
    assert "drop me" not in stream.getvalue()


def test_a_filter_put_on_the_root_handler_runs_in_the_writer_thread() -> None:
    """As `proxy.core.redact.install` does: the filter lands on the output, off the event loop."""
    threads: list[str] = []

    class Where(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:  # noqa: ARG002 - logging.Filter
            threads.append(threading.current_thread().name)
            return True

    stream = io.StringIO()
    setup = setup_logging("info", "json", stream=stream)
    try:
        setup.handler.addFilter(Where())
        logging.getLogger("proxy.test.where").info("where am I")
    finally:
        setup.close()
    assert threads == ["log-writer"]
    assert "where am I" in stream.getvalue()


_ACCESS_VALUES = ("req-7", "0af7651916cd43dd8448eb211c80319c", "127.0.0.1", "GET",
                  "/api/companies", 200, 1.25, 0.5, "nmbrs", 1024)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_an_access_line_written_from_the_queue_is_the_line_of_its_record(
    log_format: str,
) -> None:
    """The loop queues the values only; the writer makes the same line a record would give."""
    stream = io.StringIO()
    setup = setup_logging("info", log_format, stream=stream)
    try:
        access_line(logging.INFO, _ACCESS_VALUES)
    finally:
        setup.close()
    written = stream.getvalue().splitlines()
    assert len(written) == 1
    expected = setup.output.format(access_record(logging.INFO, 0.0, _ACCESS_VALUES))
    if log_format == "text":  # the same line but for its time, which comes first
        assert written[0].split(" ", 1)[1] == expected.split(" ", 1)[1]
    else:
        assert json.loads(written[0]) | {"time": ""} == json.loads(expected) | {"time": ""}
        entry = json.loads(written[0])
        assert entry["message"] == "GET /api/companies 200"
        assert [key for key in entry if key in ACCESS_FIELDS] == list(ACCESS_FIELDS)


def test_an_access_line_passes_the_filters_in_the_writer_thread() -> None:
    threads: list[str] = []

    class Mask(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            threads.append(threading.current_thread().name)
            record.path = "/masked"
            return True

    stream = io.StringIO()
    setup = setup_logging("info", "json", stream=stream, filters=[Mask()])
    try:
        access_line(logging.INFO, _ACCESS_VALUES)
    finally:
        setup.close()
    assert threads == ["log-writer"]
    assert json.loads(stream.getvalue())["path"] == "/masked"


def test_an_access_line_reaches_every_other_handler_as_a_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A second listener (here pytest's) sees the line as an ordinary record, and so does ours."""
    stream = io.StringIO()
    setup = setup_logging("info", "json", stream=stream)
    try:
        with caplog.at_level(logging.INFO, logger="proxy.access"):
            access_line(logging.INFO, _ACCESS_VALUES)
    finally:
        setup.close()
    [captured] = [r for r in caplog.records if r.name == "proxy.access"]
    assert captured.getMessage() == "GET /api/companies 200"
    assert captured.status == 200  # type: ignore[attr-defined]
    assert json.loads(stream.getvalue())["request_id"] == "req-7"


@contextlib.contextmanager
def only_ours() -> Iterator[None]:
    """The root logger without pytest's capturing handlers, so that access lines take the
    way they take in `serve`: straight to the writer (see `_Direct.alone`)."""
    root = logging.getLogger()
    others = root.handlers[:]
    for handler in others:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in others:
            root.addHandler(handler)


@only_ours()
def test_access_lines_of_one_turn_of_the_loop_reach_the_writer_together_in_order() -> None:
    stream = io.StringIO()
    setup = setup_logging("info", "json", stream=stream, interval=3600)  # written on demand

    async def turn() -> tuple[str, str]:
        for index in range(5):
            access_line(logging.INFO, (f"req-{index}", *_ACCESS_VALUES[1:]))
        setup.writer.write_pending()
        during = stream.getvalue()  # nothing yet: the batch goes when the turn is over
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        setup.writer.write_pending()
        return during, stream.getvalue()

    try:
        during, after = asyncio.run(turn())
    finally:
        setup.close()
    assert during == ""
    assert [json.loads(line)["request_id"] for line in after.splitlines()] == [
        f"req-{index}" for index in range(5)]


@only_ours()
def test_a_full_batch_goes_to_the_writer_before_the_turn_is_over() -> None:
    stream = io.StringIO()
    setup = setup_logging("info", "json", stream=stream, interval=3600)

    async def busy_turn() -> int:
        for _ in range(1500):
            access_line(logging.INFO, _ACCESS_VALUES)
        setup.writer.write_pending()
        return len(stream.getvalue().splitlines())

    try:
        written_during_the_turn = asyncio.run(busy_turn())
    finally:
        setup.close()
    assert written_during_the_turn == 1024
    assert len(stream.getvalue().splitlines()) == 1500


@only_ours()
def test_the_lines_of_a_last_turn_are_written_when_logging_closes() -> None:
    stream = io.StringIO()
    setup = setup_logging("info", "json", stream=stream, interval=3600)
    loop = asyncio.new_event_loop()

    def last_turn() -> None:
        access_line(logging.INFO, _ACCESS_VALUES)
        loop.stop()  # the loop stops at the end of this turn, before the hand-over

    try:
        loop.call_soon(last_turn)
        loop.run_forever()
    finally:
        loop.close()  # whatever the loop still had to run is dropped
        setup.close()
    assert json.loads(stream.getvalue())["request_id"] == "req-7"


@only_ours()
def test_an_access_line_without_an_event_loop_goes_to_the_writer_at_once() -> None:
    stream = io.StringIO()
    setup = setup_logging("info", "json", stream=stream, interval=3600)
    try:
        access_line(logging.INFO, _ACCESS_VALUES)
        setup.writer.write_pending()
        assert json.loads(stream.getvalue())["request_id"] == "req-7"
    finally:
        setup.close()


@pytest.mark.parametrize(("change", "direct"), [
    ("nothing", True),
    ("a proxy logger", True),  # `logging.getLogger("proxy")` made: the access logger's parent
    ("a handler on the proxy logger", False),
    ("a handler on the access logger", False),
    ("a filter on the access logger", False),
    ("the access logger not propagating", False),
])
@only_ours()
def test_access_lines_go_straight_to_the_writer_only_when_nothing_else_would_see_them(
    change: str, direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    access, proxy_logger = logging.getLogger("proxy.access"), logging.getLogger("proxy")
    if change == "a handler on the proxy logger":
        monkeypatch.setattr(proxy_logger, "handlers", [logging.NullHandler()])
    elif change == "a handler on the access logger":
        monkeypatch.setattr(access, "handlers", [logging.NullHandler()])
    elif change == "a filter on the access logger":
        monkeypatch.setattr(access, "filters", [logging.Filter("nobody")])
    elif change == "the access logger not propagating":
        monkeypatch.setattr(access, "propagate", False)
    elif change == "nothing":
        monkeypatch.setattr(access, "parent", logging.getLogger())  # no proxy logger between
    setup = setup_logging("info", "json", stream=io.StringIO(), interval=3600)
    try:
        assert logs._DIRECT[0] is not None
        assert logs._DIRECT[0].alone() is direct
    finally:
        setup.close()


@only_ours()
def test_lines_after_a_loop_that_closed_before_its_last_turn_are_not_held_back() -> None:
    stream = io.StringIO()
    setup = setup_logging("info", "json", stream=stream, interval=3600)

    async def log_and_turn(request_id: str) -> None:
        access_line(logging.INFO, (request_id, *_ACCESS_VALUES[1:]))
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    try:
        first = asyncio.new_event_loop()

        def last_turn() -> None:
            access_line(logging.INFO, ("req-1", *_ACCESS_VALUES[1:]))
            first.stop()  # the loop stops at the end of this turn, before the hand-over

        try:
            first.call_soon(last_turn)
            first.run_forever()
        finally:
            first.close()
        asyncio.run(log_and_turn("req-2"))
        setup.writer.write_pending()
        written = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
    finally:
        setup.close()
    assert written == ["req-1", "req-2"]
