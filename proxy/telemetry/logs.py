"""Logging: JSON lines for machines, readable lines for people, written off the event loop.

`setup_logging()` puts one `QueueHandler` on the root logger. On the caller's thread (the event
loop) a record only has its message merged and is queued; a writer thread applies the
filters, formats and writes, in batches. So a slow stderr (a full pipe, a stalled log shipper)
never stalls request handling, and a busy proxy does not wake a thread for every line.

Filters that must see every record before it is written (redaction of secrets) are installed in
one place: the `filters` argument, which ends up on the output handler, in the writer thread.

Fields given with `extra=` (request_id, connection, status, ...) become JSON keys, or
`key=value` pairs in the readable form.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from logging.handlers import QueueHandler
from typing import Any, Final, TextIO

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("auto", "json", "text")
ACCESS_LOGGER: Final = "proxy.access"
# The id of the request being handled; every record logged while handling it carries it.
CURRENT_REQUEST_ID: Final[ContextVar[str | None]] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName"}
)


def resolve_format(requested: str, *, isatty: bool) -> str:
    """"auto" means readable lines on a terminal and JSON lines anywhere else."""
    if requested == "auto":
        return "text" if isatty else "json"
    if requested not in FORMATS:
        raise ValueError(f"unknown log format {requested!r}; choose one of {', '.join(FORMATS)}")
    return requested


def _is_extra(name: str) -> bool:
    """Whether a record's attribute came from `extra=` (or a filter), not from logging."""
    return name not in _STANDARD and not name.startswith("_")


def extras(record: logging.LogRecord) -> dict[str, Any]:
    if isinstance(record, AccessRecord):  # its fields are known: no walk over the others
        return record.fields()
    return {k: v for k, v in vars(record).items() if _is_extra(k)}


class _Clock:
    """Record times as ISO 8601 UTC with milliseconds; the seconds part is made once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # one thread (the listener) formats: no lock needed
            moment = datetime.fromtimestamp(second, UTC)
            self._prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.")
            self._second = second
        return f"{self._prefix}{int((created - second) * 1000):03d}Z"


_utc = _Clock()


# json.dumps with these options builds a new encoder on every call; this one is made once.
_encode_json = json.JSONEncoder(default=str, separators=(",", ":")).encode


_probe = logging.LogRecord("", 0, "", 0, "", (), None)
# When the logging module was loaded: what relativeCreated counts from.
_LOGGING_STARTED: Final = _probe.created - _probe.relativeCreated / 1000


class AccessRecord(logging.LogRecord):
    """A log record made for the access line, which is written once per request.

    `logging.LogRecord()` works out the caller's file, module, thread and process, which
    nobody reads on this line; here they are fixed values and only what varies is worked
    out, for a third of the cost. Handlers see an ordinary LogRecord.
    """

    _FIXED: Final[dict[str, Any]] = {
        "pathname": "", "filename": "", "module": "", "lineno": 0, "funcName": None,
        "exc_info": None, "exc_text": None, "stack_info": None, "thread": None,
        "threadName": None, "process": None, "processName": None, "taskName": None,
    }

    def __init__(
        self, name: str, level: int, msg: str, args: tuple[object, ...],
        fields: dict[str, Any], *, created: float | None = None,
    ) -> None:
        # No super().__init__(): skipping its work is the point (see the docstring).
        attributes = self.__dict__
        attributes.update(self._FIXED)
        attributes.update(fields)
        if created is None:
            created = time.time()
        attributes.update(
            name=name, msg=msg, args=args, levelno=level,
            levelname=logging.getLevelName(level), created=created,
            msecs=(created - int(created)) * 1000,
            relativeCreated=(created - _LOGGING_STARTED) * 1000,
            _names=tuple(fields),
        )
        attributes["_made"] = len(attributes) + 1  # what it holds before a filter adds to it

    def fields(self) -> dict[str, Any]:
        """`extras()` of this record: its fields as they are now, then what filters added."""
        attributes = self.__dict__
        out = {name: attributes[name] for name in attributes["_names"] if name in attributes}
        made = attributes["_made"]
        if len(attributes) > made:
            added = itertools.islice(attributes.items(), made, None)
            out.update((k, v) for k, v in added if _is_extra(k))
        return out


# The access line's fields, in the order they are written (`access_line` gets their values).
ACCESS_FIELDS: Final = ("request_id", "trace_id", "remote", "method", "path", "status",
                        "duration_ms", "upstream_ms", "connection", "body_bytes")
_METHOD, _PATH, _STATUS = 3, 4, 5  # where the message's parts are in them


def access_record(level: int, created: float, values: tuple[object, ...]) -> AccessRecord:
    """The record of an access line: "GET /path 200", with ACCESS_FIELDS as extras."""
    return AccessRecord(ACCESS_LOGGER, level, "%s %s %d",
                        (values[_METHOD], values[_PATH], values[_STATUS]),
                        dict(zip(ACCESS_FIELDS, values, strict=True)), created=created)


_access_logger = logging.getLogger(ACCESS_LOGGER)


def access_line(level: int, values: tuple[object, ...]) -> None:
    """Log one request's access line (the caller checked the level).

    With the queue of `setup_logging` the only way out, the values themselves are queued:
    the record is made, filtered and formatted in the writer thread, so the event loop spends
    a tuple and a `put` on the line. Anything else listening (a handler of the caller's own,
    pytest's caplog) gets an ordinary record, handled here.
    """
    direct = _DIRECT[0]
    if direct is not None and direct.alone():
        direct.queue.put((level, time.time(), values))
    else:
        _access_logger.handle(access_record(level, time.time(), values))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the extras, then `exc`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
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
        return _encode_json(entry)


class TextFormatter(logging.Formatter):
    """`2026-11-23T09:38:02.123Z INFO    proxy.access: GET /api/x 200 key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
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


# What the writer reads: records, and access lines as (level, created, values).
_Queued = logging.LogRecord | tuple[int, float, tuple[object, ...]]


class _Direct:
    """The queue of `setup_logging`, and whether an access line may go onto it as it is."""

    __slots__ = ("handler", "queue")

    def __init__(self, handler: logging.Handler, records: queue.SimpleQueue[_Queued]) -> None:
        self.handler = handler
        self.queue = records

    def alone(self) -> bool:
        """Whether logging would hand an access record to this handler and no other."""
        access, proxy, root = _access_logger, _access_logger.parent, logging.getLogger()
        return (not access.handlers and not access.filters and access.propagate
                and proxy is not None and not proxy.handlers and proxy.propagate
                and len(root.handlers) == 1 and root.handlers[0] is self.handler)


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

    def write_pending(self) -> None:
        lines = []
        while True:
            try:
                item = self._records.get_nowait()
            except queue.Empty:
                break
            record = item if isinstance(item, logging.LogRecord) else access_record(*item)
            if record.levelno >= self._output.level and self._output.filter(record):
                lines.append(self._output.format(record) + "\n")
        if lines:
            try:
                self._stream.write("".join(lines))
                self._stream.flush()
            except (OSError, ValueError):  # stderr closed or gone: nowhere left to tell
                pass


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
