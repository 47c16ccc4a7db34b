"""The audit log: its lines from a real proxy, query values hidden, and a writer that never makes
the event loop wait."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import AuditSettings
from proxy.inbound.policy import Client
from proxy.telemetry.audit import Auditing, AuditLog, audit_line, request_id, shown_target
from tests.conftest import ProxyFactory, RecordingUpstream, connection_settings, token_set


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("target", "include", "expected"),
    [
        ("/api/companies", False, "/api/companies"),
        ("/api/x?pageNumber=1&pageSize=20", False, "/api/x?pageNumber=_&pageSize=_"),
        ("/api/x?flag&name=Jan%20Jansen", False, "/api/x?flag&name=_"),
        ("/api/x?", False, "/api/x?"),
        ("/api/x?pageNumber=1&pageSize=20", True, "/api/x?pageNumber=1&pageSize=20"),
        ("/cb?code=abc123&state=s", True, "/cb?code=[redacted]&state=s"),
        ("/api/x?access_token=abc&q=1", True, "/api/x?access_token=[redacted]&q=1"),
    ],
)
def test_shown_target(target: str, include: bool, expected: str) -> None:
    assert shown_target(target, include_query=include) == expected


@pytest.mark.parametrize(
    ("sent", "kept"),
    [("abc-123", True), ("a" * 128, True), ("a" * 129, False), ("bad id", False),
     ("x\u00e9", False), ("", False), (None, False)],
)
def test_request_ids(sent: str | None, kept: bool) -> None:
    found = request_id(sent)
    assert (found == sent) is kept
    assert len(found) <= 128


def test_new_request_ids_are_unique_and_unguessable_across_processes() -> None:
    here = {request_id(None) for _ in range(1000)}
    assert len(here) == 1000
    assert all(len(found) == 32 and int(found, 16) >= 0 for found in here)
    code = "from proxy.telemetry.audit import request_id; print(request_id(None))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=60).stdout.strip()
    assert other[:16] != next(iter(here))[:16]  # another process: another random half


def test_an_audit_line() -> None:
    line = audit_line(at=0.25, request_id="r1", client="app", source="10.0.0.1",
                      connection="nmbrs", method="GET", target="/api/x", status=200,
                      bytes_in=0, bytes_out=123, duration=0.0123456, problem=None)
    assert line.endswith("\n")
    assert json.loads(line) == {
        "time": "1970-01-01T00:00:00.250Z", "request_id": "r1", "client": "app",
        "source": "10.0.0.1", "connection": "nmbrs", "method": "GET", "path": "/api/x",
        "status": 200, "bytes_in": 0, "bytes_out": 123, "duration_ms": 12.346,
    }


async def test_a_proxy_writes_one_line_per_request(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    proxy = await make_proxy(
        connection_settings(upstream=upstream.url),
        tokens={"nmbrs": token_set()},
        clients=(Client(name="app", key_sha256=hashlib.sha256(b"key-app").digest()),
                 Client(name="ro", key_sha256=hashlib.sha256(b"key-ro").digest(),
                        read_only=True)),
        audit=AuditSettings(destination=str(path)),
    )
    key = {"X-Proxy-Key": "key-app"}
    assert (await proxy.post("/api/x?pageNumber=1", data=b"12345", headers={
        **key, "X-Request-Id": "req-1"})).status == 200
    assert (await proxy.get("/download/1000", headers=key)).status == 200
    assert (await proxy.get("/api/x")).status == 401
    assert (await proxy.delete("/api/x", headers={"X-Proxy-Key": "key-ro"})).status == 403
    assert (await proxy.request("TRACE", "/api/x", headers=key)).status == 400
    assert (await proxy.get("/_proxy/healthz")).status == 200  # not audited
    assert (await proxy.get("/_proxy/")).status == 200
    await proxy.close()  # the app's cleanup writes what is queued

    assert path.stat().st_mode & 0o777 == 0o600
    lines = lines_of(path)
    assert [(r["method"], r["path"], r["status"], r["client"], r.get("problem"))
            for r in lines] == [
        ("POST", "/api/x?pageNumber=_", 200, "app", None),
        ("GET", "/download/1000", 200, "app", None),
        ("GET", "/api/x", 401, None, "unauthorized"),
        ("DELETE", "/api/x", 403, "ro", "forbidden"),
        ("TRACE", "/api/x", 400, None, "bad-request"),
        ("GET", "/_proxy/", 200, None, None),
    ]
    first = lines[0]
    assert first["request_id"] == "req-1"
    assert first["source"] == "127.0.0.1"
    assert first["connection"] == "nmbrs"
    assert first["bytes_in"] == 5
    assert first["bytes_out"] > 0
    assert first["duration_ms"] >= 0
    assert lines[1]["bytes_out"] > 1000  # the body, and the headers with it
    assert len({r["request_id"] for r in lines}) == len(lines)
    assert lines[5]["connection"] is None
    text = path.read_text()
    assert "key-app" not in text
    assert "key-ro" not in text


async def test_query_values_when_asked_for(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()},
                             audit=AuditSettings(destination=str(path), include_query=True))
    await proxy.get("/api/x?pageNumber=2&refresh_token=abc")
    await proxy.close()
    (line,) = lines_of(path)
    assert line["path"] == "/api/x?pageNumber=2&refresh_token=[redacted]"


async def test_the_audit_log_to_stdout(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()},
                             audit=AuditSettings(destination="stdout"))
    await proxy.get("/api/x")
    await proxy.close()
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["path"] == "/api/x"


async def test_a_client_that_goes_away_is_audited(
    upstream: RecordingUpstream, make_proxy: ProxyFactory, tmp_path: Path
) -> None:
    path = tmp_path / "audit.jsonl"
    proxy = await make_proxy(connection_settings(upstream=upstream.url),
                             tokens={"nmbrs": token_set()},
                             audit=AuditSettings(destination=str(path)))
    with pytest.raises(TimeoutError):
        await proxy.get("/slow", timeout=aiohttp.ClientTimeout(total=0.3))
    await asyncio.wait_for(upstream.cancelled.wait(), 5)
    await proxy.close()
    (line,) = lines_of(path)
    assert line["status"] == 499


class StuckStream(io.StringIO):
    """A stream whose writes wait until released: a disk that stalls."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return super().write(text)


async def test_writing_never_blocks_and_a_full_queue_drops_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = StuckStream()
    audit = AuditLog(lambda: stream, close_stream=False, max_queued=5)
    started = time.perf_counter()
    for index in range(100):
        audit.write(f"line {index}\n")
    assert time.perf_counter() - started < 1.0  # generous: 100 puts take microseconds
    assert 94 <= audit.dropped <= 95  # five queued, maybe one taken by the stuck writer
    caplog.set_level(logging.WARNING, logger="proxy.telemetry.audit")
    stream.release.set()
    await asyncio.to_thread(audit.close)
    written = stream.getvalue().splitlines()
    assert written[0] == "line 0"
    assert len(written) == 100 - audit.dropped
    assert any("dropped" in r.message for r in caplog.records)


async def test_a_write_error_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    stream.close()
    audit = AuditLog(lambda: stream, close_stream=False)
    caplog.set_level(logging.ERROR, logger="proxy.telemetry.audit")
    audit.write("x\n")
    await asyncio.to_thread(audit.close)
    assert any("cannot write the audit log" in r.message for r in caplog.records)


def test_a_file_is_closed_even_when_no_line_was_written(tmp_path: Path) -> None:
    audit = AuditLog.open(AuditSettings(destination=str(tmp_path / "audit.jsonl")))
    assert audit is not None
    stream = audit._open_stream()
    audit.close()
    assert stream.closed


async def test_a_line_written_after_a_switch_goes_to_the_log_in_force(tmp_path: Path) -> None:
    """A request that began before a reload switched the destination ends after it: its
    line goes to the new log, not into the closed one."""
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    auditing = Auditing(AuditSettings(destination=str(first)))
    auditing.log = AuditLog.open(auditing.settings)
    auditing.write("before\n")
    await auditing.switch(AuditSettings(destination=str(second)))
    auditing.write("after\n")
    await auditing.switch(AuditSettings())  # off: closes the second, writes go nowhere
    auditing.write("dropped\n")
    assert auditing.log is None
    assert first.read_text() == "before\n"
    assert second.read_text() == "after\n"


def test_off_means_no_audit_log() -> None:
    assert AuditLog.open(AuditSettings()) is None
