"""Logging: JSON lines for machines, readable lines for people, written off the event loop.

`setup_logging()` puts one `QueueHandler` on the root logger. On the caller's thread (the event
loop) a record only has its message merged and is queued; a writer thread applies the
filters, formats and writes, in batches. So a slow stderr (a full pipe, a stalled log shipper)
never stalls request handling, and a busy proxy does not wake a thread for every line. An
access line is queued as its values, and written without a record when redaction leaves it
as it is (proxy.telemetry.records).

Filters that must see every record before it is written (redaction of secrets) are installed in
one place: the `filters` argument, which ends up on the output handler, in the writer thread.

Fields given with `extra=` (request_id, connection, status, ...) become JSON keys, or
`key=value` pairs in the readable form.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from logging.handlers import QueueHandler
from typing import Any, Final, TextIO

from proxy.core.redact import RedactingFilter
from proxy.telemetry.records import (
    ACCESS_LOGGER,
    access_json,
    access_record,
    encode_json,
    extras,
    utc_time,
)

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("auto", "json", "text")
# The id of the request being handled; every record logged while handling it carries it.
CURRENT_REQUEST_ID: Final[ContextVar[str | None]] = ContextVar("request_id", default=None)

def resolve_format(requested: str, *, isatty: bool) -> str:
    """"auto" means readable lines on a terminal and JSON lines anywhere else."""
    if requested == "auto":
        return "text" if isatty else "json"
    if requested not in FORMATS:
        raise ValueError(f"unknown log format {requested!r}; choose one of {', '.join(FORMATS)}")
    return requested


_access_logger = logging.getLogger(ACCESS_LOGGER)


def access_line(level: int, values: tuple[object, ...]) -> None:
    """Log one request's access line (the caller checked the level), on the event loop's thread.

    With the queue of `setup_logging` the only way out, the values themselves are queued, in
    one batch per turn of the event loop: the record is made, filtered and formatted in the
    writer thread, so the loop spends a tuple and an append on the line. Anything else
    listening (a handler of the caller's own, pytest's caplog) gets an ordinary record,
    handled here.
    """
    direct = _DIRECT[0]
    if direct is not None and direct.alone():
        direct.add((level, time.time(), values))
    else:
        _access_logger.handle(access_record(level, time.time(), values))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the extras, then `exc`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return encode_json(entry)


class TextFormatter(logging.Formatter):
    """`2026-11-23T09:38:02.123Z INFO    proxy.access: GET /api/x 200 key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        line = (f"{utc_time(record.created)} {record.levelname:<7} {record.name}: "
                f"{record.getMessage()}")
        fields = extras(record)
        if fields:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


def _text_value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c == '"' for c in text) else text


class _Enqueue(QueueHandler):
    """Queues the record, made safe to hand to another thread.

    The message is merged with its arguments here (they may be mutable objects that change
    later), a traceback is rendered to text, and the id of the request being handled (a
    context variable, visible only on this thread) is added; the extras stay as they are.

    Its filters are the output handler's (one shared list): a filter added to it (as
    `proxy.core.redact.install` does to every root handler) runs in the writer thread, on the
    way out, not here on the event loop.
    """

    _traceback = logging.Formatter()

    def __init__(self, records: queue.SimpleQueue[_Queued], output: logging.Handler) -> None:
        super().__init__(records)
        self.filters = output.filters  # the same list: see the class docstring

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: ARG002 - logging's signature
        return True  # the writer applies the filters

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The record itself is changed, not a copy (cheaper on the request path): handlers
        # after this one still get the same message from getMessage().
        record.msg = record.getMessage()
        record.args = None
        request_id = CURRENT_REQUEST_ID.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        if record.exc_info:
            prepared = copy.copy(record)  # the traceback stays with the caller's record
            prepared.exc_text = record.exc_text or self._traceback.formatException(
                record.exc_info
            )
            prepared.exc_info = None
            return prepared
        return record


# What the writer reads: records, and batches of access lines, each (level, created, values).
_Access = tuple[int, float, tuple[object, ...]]
_Queued = logging.LogRecord | list[_Access]
# Access lines handed to the writer at once, at the latest (see `_Direct.add`).
_BATCH_LIMIT: Final = 1024


class _Direct:
    """The queue of `setup_logging`, and whether an access line may go onto it as it is.

    Access lines cross to the writer in batches: a `put` per line, with the writer taking
    them off, cost the event loop's thread more than the rest of the line (about 15 us per
    request at c=64, BENCHMARKS.md); a list per turn of the loop costs a fraction of that.
    """

    __slots__ = ("_handing_on", "batch", "handler", "queue")

    def __init__(self, handler: logging.Handler, records: queue.SimpleQueue[_Queued]) -> None:
        self.handler = handler
        self.queue = records
        self.batch: list[_Access] = []
        self._handing_on: asyncio.AbstractEventLoop | None = None  # the loop that hands it

    def add(self, line: _Access) -> None:
        """Batch the line; the batch goes to the writer once the loop's turn is over (or at
        once with no loop running, or when it is full, or when the loop that was to hand it
        over has closed first)."""
        batch = self.batch
        batch.append(line)
        if len(batch) == 1:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no event loop on this thread
                self.hand_over()
                return
            self._handing_on = loop
            loop.call_soon(self.hand_over)
        elif len(batch) >= _BATCH_LIMIT or (
                self._handing_on is not None and self._handing_on.is_closed()):
            self.hand_over()

    def hand_over(self) -> None:
        batch, self.batch = self.batch, []
        self._handing_on = None
        if batch:
            self.queue.put(batch)

    def alone(self) -> bool:
        """Whether logging would hand an access record to this handler and no other: no
        handler on the way up to the root (whichever loggers exist between), and this one the
        root's only handler."""
        logger = _access_logger
        if logger.filters or logger.disabled:
            return False
        while logger.parent is not None:
            if logger.handlers or not logger.propagate:
                return False
            logger = logger.parent
        return len(logger.handlers) == 1 and logger.handlers[0] is self.handler


_DIRECT: list[_Direct | None] = [None]


class _Writer(threading.Thread):
    """Writes the queued records in batches, a few times a second.

    Waking a thread for every record (as `QueueListener` does) costs a context switch and a
    hand-over of the GIL per request under load; draining the queue every `interval` seconds
    and writing the batch with one call costs a fraction of that. A record waits at most
    `interval` before it is written.
    """

    def __init__(
        self,
        records: queue.SimpleQueue[_Queued],
        output: logging.Handler,
        stream: TextIO,
        interval: float,
    ) -> None:
        super().__init__(name="log-writer", daemon=True)
        self._records = records
        self._output = output  # its filters, level and formatter; never its emit()
        self._stream = stream
        self._interval = interval
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self._interval):
            self.write_pending()
        self.write_pending()

    def stop(self) -> None:
        self._done.set()
        self.join()

    def _redactors(self) -> list[RedactingFilter] | None:
        """The output's filters when an access line may skip its record (`access_json`):
        JSON lines, and nothing but redaction to pass."""
        if type(self._output.formatter) is not JsonFormatter:
            return None
        redactors = [f for f in self._output.filters if type(f) is RedactingFilter]
        return redactors if len(redactors) == len(self._output.filters) else None

    def write_pending(self) -> None:
        lines: list[str] = []
        redactors = self._redactors()
        while True:
            try:
                item = self._records.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, logging.LogRecord):
                self._write(item, lines)
                continue
            for level, created, values in item:
                line = None
                if redactors is not None and level >= self._output.level:
                    line = access_json(level, created, values, redactors)
                if line is None:
                    self._write(access_record(level, created, values), lines)
                else:
                    lines.append(line + "\n")
        if lines:
            try:
                self._stream.write("".join(lines))
                self._stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nowhere left to tell
                pass

    def _write(self, record: logging.LogRecord, lines: list[str]) -> None:
        output = self._output
        if record.levelno >= output.level and output.filter(record):
            lines.append(output.format(record) + "\n")


@dataclass
class LoggingSetup:
    """What `setup_logging` installed; `close()` writes what is queued and removes it again."""

    handler: QueueHandler
    writer: _Writer
    output: logging.Handler
    format: str
    previous_level: int = logging.WARNING

    def close(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self.previous_level)
        direct = _DIRECT[0]
        if direct is not None and direct.handler is self.handler:
            _DIRECT[0] = None
            direct.hand_over()  # the lines of the loop's last turn, if it ended before that
        self.writer.stop()


def setup_logging(
    level: str = "info",
    log_format: str = "auto",
    *,
    stream: TextIO | None = None,
    filters: Sequence[logging.Filter] = (),
    interval: float = 0.05,
) -> LoggingSetup:
    """Route every log record through a queue to `stream` (stderr) in the chosen format.

    `filters` are applied to every record before it is written: the place for redaction.
    """
    out = sys.stderr if stream is None else stream
    chosen = resolve_format(log_format, isatty=_isatty(out))
    output = logging.Handler()
    output.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    for log_filter in filters:
        output.addFilter(log_filter)
    # Neither format shows thread or process names: not collecting them makes every record
    # cheaper to create (process-wide switches of the logging module).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    records: queue.SimpleQueue[_Queued] = queue.SimpleQueue()
    handler = _Enqueue(records, output)
    _DIRECT[0] = _Direct(handler, records)
    writer = _Writer(records, output, out, interval)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    _STARTED_LEVEL[0] = level
    writer.start()
    return LoggingSetup(handler=handler, writer=writer, output=output, format=chosen,
                        previous_level=previous)


# The level the process was started with (--log-level), which `[logs] level` overrides.
_STARTED_LEVEL: list[str] = ["info"]


def set_level(level: str | None) -> None:
    """The root level: `[logs] level` when the file sets it, else the one started with."""
    logging.getLogger().setLevel(getattr(logging, (level or _STARTED_LEVEL[0]).upper()))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
