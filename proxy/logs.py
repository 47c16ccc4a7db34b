"""Logging: JSON lines for machines, readable lines for people, written off the event loop.

`setup_logging()` puts one `QueueHandler` on the root logger. On the caller's thread (the event
loop) a record only has its message merged and is queued; a `QueueListener` thread applies the
filters, formats and writes. So a slow stderr (a full pipe, a stalled log shipper) never
stalls request handling.

Filters that must see every record before it is written (redaction of secrets) are installed in
one place: the `filters` argument, which ends up on the output handler, in the listener thread.

Fields given with `extra=` (request_id, connection, status, ...) become JSON keys, or
`key=value` pairs in the readable form.
"""

from __future__ import annotations

import copy
import json
import logging
import queue
import sys
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
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


def extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _utc(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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
        return json.dumps(entry, default=str, separators=(",", ":"))


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
    """Queues a copy of the record that is safe to hand to another thread.

    The message is merged with its arguments here (they may be mutable objects that change
    later), a traceback is rendered to text, and the id of the request being handled (a
    context variable, visible only on this thread) is added; the extras stay as they are.
    """

    _traceback = logging.Formatter()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        prepared = copy.copy(record)
        prepared.msg = record.getMessage()
        prepared.args = None
        request_id = CURRENT_REQUEST_ID.get()
        if request_id is not None and not hasattr(prepared, "request_id"):
            prepared.request_id = request_id
        if record.exc_info:
            prepared.exc_text = record.exc_text or self._traceback.formatException(
                record.exc_info
            )
            prepared.exc_info = None
        return prepared


@dataclass
class LoggingSetup:
    """What `setup_logging` installed; `close()` flushes the queue and removes it again."""

    handler: QueueHandler
    listener: QueueListener
    output: logging.Handler
    format: str
    previous_level: int = logging.WARNING

    def close(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self.previous_level)
        self.listener.stop()


def setup_logging(
    level: str = "info",
    log_format: str = "auto",
    *,
    stream: TextIO | None = None,
    filters: Sequence[logging.Filter] = (),
) -> LoggingSetup:
    """Route every log record through a queue to `stream` (stderr) in the chosen format.

    `filters` are applied to every record before it is written: the place for redaction.
    """
    out = sys.stderr if stream is None else stream
    chosen = resolve_format(log_format, isatty=_isatty(out))
    output = logging.StreamHandler(out)
    output.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    for log_filter in filters:
        output.addFilter(log_filter)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = _Enqueue(records)
    listener = QueueListener(records, output, respect_handler_level=True)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    listener.start()
    return LoggingSetup(handler=handler, listener=listener, output=output, format=chosen,
                        previous_level=previous)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
