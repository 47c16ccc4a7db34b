"""The audit log: one JSON line per request, written by a thread so the event loop never waits.

A line holds: time (UTC, RFC 3339), request_id, trace_id (W3C Trace Context: the caller's, or
the one the proxy started; proxy.telemetry.tracing), client (its name; null when anonymous or not
identified), source (the peer address), connection, method, path, status, bytes_in (request
body bytes read), bytes_out (bytes written to the client, headers included), duration_ms, and,
for a refusal, `problem` (the problem type's last part, e.g. "forbidden"). No bodies, no
headers. The query string keeps its parameter names; each value is replaced by "_" unless
`[audit] include_query` is set, and even then the values of secret-looking parameters
(code, tokens, keys) are masked.

Health and readiness probes are not audited. Requests that aiohttp's own parser refuses never
reach the application, so they are not audited either (aiohttp logs them).

Writing: `AuditLog.write()` serialises the line and puts it on a bounded queue; a daemon
thread gathers lines for BATCH_SECONDS, then writes and flushes them at once. When the queue is
full (the disk stalls) lines are dropped and counted, rather than the proxy stalling with it;
the count is logged when the writer catches up.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import queue
import re
import secrets
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.config import AUDIT_OFF, AuditSettings
from proxy.core.http import split_target
from proxy.core.redact import redact
from proxy.inbound.access import ACCESS_NOTE, AccessNote

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_QUEUED: Final = 10_000
BATCH_SECONDS: Final = 0.05  # how long the writer gathers lines before writing them
HIDDEN_VALUE: Final = "_"
NOT_AUDITED: Final = frozenset({"/_proxy/healthz", "/_proxy/readyz"})
# A status for a request whose client went away before an answer (nginx's convention).
CLIENT_CLOSED: Final = 499
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# A new request id is this process's random half and a count: unique across processes and
# replicas, and cheaper on every request than a random UUID.
_ID_PREFIX: Final = secrets.token_hex(8)
_ID_COUNT: Final = itertools.count(1)


REQUEST_ID = web.RequestKey("request_id", str)
# The request's trace id (proxy.telemetry.tracing), picked with the request id.
TRACE_ID = web.RequestKey("trace_id", str)
# Set on a problem+json response: the last part of its type ("forbidden", "bad-request", ...).
PROBLEM = web.ResponseKey("problem", str)


def request_id(sent: str | None) -> str:
    """The client's X-Request-Id when it is a sane token, else a new random one."""
    if sent is not None and _REQUEST_ID.fullmatch(sent):
        return sent
    return f"{_ID_PREFIX}{next(_ID_COUNT):016x}"


def shown_target(raw_target: str, *, include_query: bool) -> str:
    """The path as sent; query values hidden unless included, secrets masked either way."""
    path, query = split_target(raw_target)
    if not query:
        return path
    if include_query:
        return redact(path + query)
    pairs = (part.partition("=") for part in query[1:].split("&"))
    shown = "&".join(name + (f"={HIDDEN_VALUE}" if mark else "") for name, mark, _ in pairs)
    return f"{path}?{shown}"


def audit_line(
    *,
    at: float,
    request_id: str,
    client: str | None,
    source: str | None,
    connection: str | None,
    method: str,
    target: str,
    status: int,
    bytes_in: int,
    bytes_out: int,
    duration: float,
    problem: str | None,
    trace_id: str | None = None,
) -> str:
    """One audit record as a JSON line (pure: everything comes in as an argument)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"
    record: dict[str, Any] = {"time": stamp, "request_id": request_id}
    if trace_id is not None:
        record["trace_id"] = trace_id
    record.update({
        "client": client,
        "source": source,
        "connection": connection,
        "method": method,
        "path": target,
        "status": status,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "duration_ms": round(duration * 1000, 3),
    })
    if problem is not None:
        record["problem"] = problem
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def audited(
    request: web.BaseRequest,
    *,
    at: float,
    request_id: str,
    trace_id: str | None,
    note: AccessNote,
    status: int,
    include_query: bool,
    duration: float,
    bytes_out: int,
    problem: str | None,
) -> str:
    """The audit line of a finished request (the middleware's and the data plane's)."""
    return audit_line(
        at=at,
        request_id=request_id,
        trace_id=trace_id,
        client=note.client,
        source=request.remote,
        connection=note.connection,
        method=request.method,
        target=shown_target(request.raw_path, include_query=include_query),
        status=status,
        bytes_in=request.content.total_bytes,
        bytes_out=bytes_out,
        duration=duration,
        problem=problem,
    )


class AuditLog:
    """JSON lines to a stream or file, written by one daemon thread."""

    def __init__(self, open_stream: Callable[[], IO[str]], *, close_stream: bool,
                 max_queued: int = MAX_QUEUED) -> None:
        self._open_stream = open_stream  # called for each batch: a swapped sys.stdout is seen
        self._close_stream = close_stream
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=max_queued)
        self._dropped = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, settings: AuditSettings) -> AuditLog | None:
        """The audit log `settings` ask for; None when it is off. OSError if the file cannot be
        opened (it is created 0600, with its folder)."""
        destination = settings.destination
        if destination == AUDIT_OFF:
            return None
        if destination in ("stdout", "stderr"):
            return cls(lambda: getattr(sys, destination), close_stream=False)
        path = Path(destination)
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        stream = open(os.open(path, flags, 0o600), "a", encoding="utf-8")  # noqa: PTH123, SIM115
        return cls(lambda: stream, close_stream=True)

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped

    def write(self, line: str) -> None:
        """Queue one line; never blocks (a full queue drops the line and counts it)."""
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            with self._lock:
                self._dropped += 1

    def close(self) -> None:
        """Write what is queued, then stop the thread (blocking: run it in a worker thread)."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        reported = 0
        while True:
            batch = [self._queue.get()]
            if batch[0] is not None:
                # Let more lines come: one wake-up, one write and one flush per batch, so that
                # the writer rarely takes the interpreter away from the event loop.
                time.sleep(BATCH_SECONDS)
            batch += self._drain()
            lines = [line for line in batch if line is not None]
            if lines:
                stream = self._open_stream()
                try:
                    stream.write("".join(lines))
                    stream.flush()
                except (OSError, ValueError) as exc:  # ValueError: the stream was closed
                    log.error("cannot write the audit log: %s", exc)  # noqa: TRY400
            dropped = self.dropped
            if dropped > reported:
                log.warning("the audit log fell behind: %d line(s) dropped so far", dropped)
                reported = dropped
            if None in batch:
                break
        if self._close_stream:  # opened at start, written to or not
            self._open_stream().close()

    def _drain(self) -> list[str | None]:
        found: list[str | None] = []
        while True:
            try:
                found.append(self._queue.get_nowait())
            except queue.Empty:
                return found


@dataclass
class Auditing:
    """The audit settings in force and their log; a reload switches both in one step."""

    settings: AuditSettings
    log: AuditLog | None = None

    async def switch(self, settings: AuditSettings) -> None:
        """Take on `settings`; a new destination is opened (OSError: nothing changes) before
        the old one is closed, after writing what it has queued."""
        old = self.log
        if settings.destination != self.settings.destination:
            self.log = await asyncio.to_thread(AuditLog.open, settings)
            if old is not None:
                await asyncio.to_thread(old.close)
        self.settings = settings

    def write(self, line: str) -> None:
        """To the log in force now: a request that began before a switch is not lost."""
        if self.log is not None:
            self.log.write(line)


AUDITING = web.AppKey("auditing", Auditing)


def setup_audit(app: web.Application, settings: AuditSettings) -> None:
    """Open the audit log with the app and close it (after writing what is queued) at cleanup."""
    auditing = app[AUDITING] = Auditing(settings)

    async def audit_ctx(_app: web.Application) -> AsyncIterator[None]:
        auditing.log = await asyncio.to_thread(AuditLog.open, auditing.settings)
        yield
        if auditing.log is not None:
            await asyncio.to_thread(auditing.log.close)

    app.cleanup_ctx.append(audit_ctx)


def audit_middleware() -> Middleware:
    @web.middleware
    async def audit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if REQUEST_ID not in request:  # picked already by the outer observe middleware
            request[REQUEST_ID] = request_id(request.headers.get("X-Request-Id"))
        request[ACCESS_NOTE] = AccessNote()
        auditing = request.app[AUDITING]
        log_to, include_query = auditing.log, auditing.settings.include_query
        if log_to is None or request.rel_url.path_safe in NOT_AUDITED:
            return await handler(request)
        loop = asyncio.get_running_loop()
        started, at = loop.time(), time.time()
        status, problem, bytes_out = 500, None, 0
        try:
            response = await handler(request)
            status, problem = response.status, response.get(PROBLEM)
            if not response.prepared:  # send it now, so that its size is known
                await response.prepare(request)
                await response.write_eof()
            bytes_out = response.body_length
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            auditing.write(audited(
                request, at=at, request_id=request[REQUEST_ID], trace_id=request.get(TRACE_ID),
                note=request[ACCESS_NOTE],
                status=status, include_query=include_query, duration=loop.time() - started,
                bytes_out=bytes_out, problem=problem,
            ))
        return response

    return audit

