"""The guard's rules as tables: what is refused, with which status, and what passes untouched."""

from __future__ import annotations

import pytest

from proxy.core.errors import BadRequest, HeadersTooLarge
from proxy.inbound.guard import MAX_HEADER_BYTES, MAX_HEADER_FIELDS, check_request

OK_HEADERS = [("Host", "proxy"), ("Accept", "application/json")]


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/api/companies",
        "/api/companies/",
        "/acme",
        "/api/companies?pageNumber=1&pageSize=20",
        "/api/a%2Cb/c%20d?q=%2F%2B%26x&redirect=http%3A%2F%2Fx%2F..%2F",  # query is data
        "/api/%7Euser/%e2%82%ac",
        "/api/a.b/.well-known/x..y/...",  # dots inside names are fine
        "/api/x;y=1",
        "/api/x?a=../../b",
        "/api/x?",
    ],
)
def test_ordinary_targets_pass(target: str) -> None:
    check_request("GET", target, (1, 1), OK_HEADERS)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://evil.example/x", "absolute-form"),
        ("https://api.nmbrsapp.com/api/companies", "absolute-form"),
        ("evil.example:443", "must be a path"),
        ("*", "asterisk-form"),
        ("//evil.example/x", "empty segment"),
        ("/api//companies", "empty segment"),
        ("/../etc/passwd", "'..' segments"),
        ("/api/../admin", "'..' segments"),
        ("/api/./companies", "'..' segments"),
        ("/api/..", "'..' segments"),
        ("/api/%2e%2e/admin", "'..' segments"),
        ("/api/%2E%2E/admin", "'..' segments"),
        ("/api/.%2e/admin", "'..' segments"),
        ("/api/%2e./admin", "'..' segments"),
        ("/api/%2e/admin", "'..' segments"),
        ("/api/%252e%252e/admin", "'..' segments"),  # encoded twice
        ("/api/..;/admin", "'..' segments"),
        ("/api/%EF%BC%8E%EF%BC%8E/admin", "'..' segments"),  # full-width dots
        ("/api/a%2Fb", "encoded '/'"),
        ("/api/a%2fb", "encoded '/'"),
        ("/api/a%5Cb", "encoded '/'"),
        ("/api/a%252Fb", "encoded '/'"),
        ("/api/..%2F..%2Fadmin", "encoded '/'"),
        ("/api\\..\\admin", "backslash"),
        ("/api/%00", "control character"),
        ("/api/%0d%0aX-Injected:%201", "control character"),
        ("/api/%7f", "control character"),
        ("/api/%zz", "percent-escape"),
        ("/api/100%", "percent-escape"),
        ("/api/x#frag", "fragment"),
        ("/api/x?\x01", "control character"),
    ],
)
def test_targets_that_could_leave_the_upstream_are_refused(target: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=None) as caught:
        check_request("GET", target, (1, 1), OK_HEADERS)
    assert caught.value.status == 400
    assert reason in caught.value.detail


@pytest.mark.parametrize(
    ("method", "reason"),
    [
        ("CONNECT", "CONNECT"),
        ("connect", "CONNECT"),
        ("TRACE", "echo"),
        ("TRACK", "echo"),
        ("GE T", "not a valid token"),
        ("", "not a valid token"),
    ],
)
def test_refused_methods(method: str, reason: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_request(method, "/x", (1, 1), OK_HEADERS)
    assert reason in caught.value.detail


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
                                    "PROPFIND"])
def test_other_methods_pass(method: str) -> None:
    check_request(method, "/x", (1, 1), OK_HEADERS)


@pytest.mark.parametrize(("version", "ok"), [((1, 1), True), ((1, 0), True), ((2, 0), False),
                                             ((0, 9), False), ((1, 2), False)])
def test_http_versions(version: tuple[int, int], ok: bool) -> None:
    if ok:
        check_request("GET", "/x", version, OK_HEADERS)
    else:
        with pytest.raises(BadRequest, match="not supported"):
            check_request("GET", "/x", version, OK_HEADERS)


@pytest.mark.parametrize(
    ("headers", "error", "reason"),
    [
        ([("X-A", "a\r\nX-Injected: 1")], BadRequest, "control character"),
        ([("X-A", "a\nb")], BadRequest, "control character"),
        ([("X-A", "a\x00b")], BadRequest, "control character"),
        ([("X-A", "a\x1bb")], BadRequest, "control character"),
        ([("X-A", "a\x7fb")], BadRequest, "control character"),
        ([("X-A", "b\udcffc")], BadRequest, "not valid UTF-8"),
        ([("Bad Name", "v")], BadRequest, "not a valid token"),
        ([("X:A", "v")], BadRequest, "not a valid token"),
        ([("", "v")], BadRequest, "not a valid token"),
        ([("Content-Length", "3"), ("Transfer-Encoding", "chunked")], BadRequest,
         "must not both be sent"),
        ([("Content-Length", "3"), ("Content-Length", "3")], BadRequest, "at most once"),
        ([(f"X-{i}", "v") for i in range(MAX_HEADER_FIELDS + 1)], HeadersTooLarge,
         "header fields"),
        ([(f"X-{i}", "v" * 4000) for i in range(MAX_HEADER_BYTES // 4000 + 1)],
         HeadersTooLarge, "bytes of header fields"),
    ],
)
def test_headers_that_are_refused(
    headers: list[tuple[str, str]], error: type[BadRequest | HeadersTooLarge], reason: str
) -> None:
    with pytest.raises(error) as caught:
        check_request("POST", "/x", (1, 1), headers)
    assert reason in caught.value.detail
    assert caught.value.status == (431 if error is HeadersTooLarge else 400)


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Tab", "a\tb")],  # HTAB is allowed in a field value
        [("X-Utf8", "café")],
        [("Content-Length", "3")],
        [("Transfer-Encoding", "chunked")],
        [(f"X-{i}", "v") for i in range(MAX_HEADER_FIELDS)],
        [("Cookie", "a=1; b=2"), ("Accept", "*/*")],
    ],
)
def test_headers_that_pass(headers: list[tuple[str, str]]) -> None:
    check_request("POST", "/x", (1, 1), headers)
