"""What a log line is made of: a record's extras, its time, its JSON; and the access line.

The access line is written once per request, so it has a record of its own (`AccessRecord`,
made without the caller lookups of `logging.LogRecord`) and a line of its own: `access_json()`
writes, from the queued values, the line `JsonFormatter` would write of its record, without
making the record when redaction has nothing to mask. Pure: no handlers, no threads.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import Any, Final, cast

from proxy.core.redact import RedactingFilter

ACCESS_LOGGER: Final = "proxy.access"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "taskName"}
)


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


utc_time = _Clock()


# json.dumps with these options builds a new encoder on every call; this one is made once.
encode_json = json.JSONEncoder(default=str, separators=(",", ":")).encode


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


# "name": of each access field, as JSON, in the order JsonFormatter writes them.
_ACCESS_JSON_KEYS: Final = tuple(encode_json(name) + ":" for name in ACCESS_FIELDS)
_INFINITIES: Final = (float("-inf"), float("inf"))


def _json_value(value: object) -> str:
    """`encode_json(value)` for one value, the common types without the encoder's machinery."""
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)  # type: ignore[arg-type]
    if kind is int:
        return int.__repr__(value)
    if isinstance(value, float) and kind is float and _INFINITIES[0] < value < _INFINITIES[1]:
        return float.__repr__(value)  # finite: NaN and infinities are the encoder's to spell
    if value is None:
        return "null"
    return encode_json(value)


# The access line's values as `log_access` nearly always gives them: its fields then go into
# one template, without a call per value.
_TYPICAL: Final = (str, str, str, str, str, int, float, float, str, int)
_TypicalValues = tuple[str, str, str, str, str, int, float, float, str, int]
_TYPICAL_FIELDS: Final = ",".join(key + "%s" for key in _ACCESS_JSON_KEYS)


def _fields_json(values: tuple[object, ...]) -> str:
    """The `"name":value` pairs of the access fields, as the encoder writes them."""
    if tuple(map(type, values)) == _TYPICAL:
        request_id, trace_id, remote, method, path, status, took, waited, connection, sent = \
            cast("_TypicalValues", values)
        low, high = _INFINITIES
        if low < took < high and low < waited < high:  # else the encoder's spelling
            esc = encode_basestring_ascii
            return _TYPICAL_FIELDS % (
                esc(request_id), esc(trace_id), esc(remote), esc(method), esc(path), status,
                float.__repr__(took), float.__repr__(waited), esc(connection), sent,
            )
    return ",".join([name + _json_value(value)
                     for name, value in zip(_ACCESS_JSON_KEYS, values, strict=True)])


def access_json(level: int, created: float, values: tuple[object, ...],
                redactors: Sequence[RedactingFilter]) -> str | None:
    """The JSON line of `access_record(level, created, values)` after `redactors` (the
    handler's filters), as JsonFormatter writes it; None when a redactor would change it
    (then the record itself must go through them)."""
    message = f"{values[_METHOD]} {values[_PATH]} {values[_STATUS]:d}"
    for redactor in redactors:
        if redactor.redact(message) != message:
            return None
    fields = _fields_json(values)
    return (f'{{"time":"{utc_time(created)}","level":"{logging.getLevelName(level).lower()}",'
            f'"logger":"{ACCESS_LOGGER}","message":{encode_basestring_ascii(message)},{fields}}}')
