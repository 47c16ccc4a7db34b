"""Header rules, table by table (pure; no server)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.forwarding.headers import (
    client_response_headers,
    connection_tokens,
    dropped_with_connection,
    rewrite_location,
    upstream_request_fields,
    upstream_request_lines,
)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], frozenset()),
        (["close"], {"close"}),
        (["keep-alive, X-Foo"], {"keep-alive", "x-foo"}),
        (["a,,b ,", "C"], {"a", "b", "c"}),
    ],
)
def test_connection_tokens(values: list[str], expected: set[str]) -> None:
    headers: CIMultiDict[str] = CIMultiDict([("Connection", v) for v in values])
    assert connection_tokens(headers) == expected


@pytest.mark.parametrize(
    "values", [[], ["close"], ["keep-alive, X-Foo"], ["a,,b ,", "C"], ["a", "b"], ["a, b"]],
)
def test_the_drop_set_of_a_connection_value_is_the_same_when_remembered(
    values: list[str],
) -> None:
    headers: CIMultiDict[str] = CIMultiDict([("Connection", v) for v in values])
    for base in (frozenset({"te"}), frozenset({"upgrade", "te"})):
        expected = base | connection_tokens(headers)
        assert dropped_with_connection(base, headers) == expected  # worked out
        assert dropped_with_connection(base, headers) == expected  # remembered


def test_many_connection_values_are_each_worked_out_right() -> None:
    """Past the ones remembered, every value is still worked out (the cache is bounded)."""
    base = frozenset({"te"})
    for number in range(200):
        headers: CIMultiDict[str] = CIMultiDict([("Connection", f"x-{number}")])
        assert dropped_with_connection(base, headers) == {"te", f"x-{number}"}


def _upstream(inbound: list[tuple[str, str]], **kwargs: object) -> CIMultiDict[str]:
    options: dict[str, object] = {"client_address": "10.0.0.7", "scheme": "http",
                                  "host": "proxy:8080", "credentials": {
                                      "Authorization": "Bearer T", "X-Subscription-Key": "K"}}
    options.update(kwargs)
    lines, length = upstream_request_fields(CIMultiDict(inbound), **options)  # type: ignore[arg-type]
    out: CIMultiDict[str] = CIMultiDict(line.partition(": ")[::2] for line in lines)
    if length is not None:  # the client's, which the upstream client frames a streamed body by
        out.add("Content-Length", length)
    return out


@pytest.mark.parametrize(
    ("inbound", "name", "expected"),
    [
        ([("Authorization", "Bearer client")], "Authorization", ["Bearer T"]),
        ([("authorization", "Basic x"), ("Authorization", "y")], "Authorization", ["Bearer T"]),
        ([("X-Subscription-Key", "theirs")], "X-Subscription-Key", ["K"]),
        ([("Host", "evil")], "Host", []),
        ([("Expect", "100-continue")], "Expect", []),
        ([("Proxy-Authorization", "Basic x")], "Proxy-Authorization", []),
        ([("Transfer-Encoding", "chunked")], "Transfer-Encoding", []),
        ([("Connection", "X-A"), ("X-A", "1"), ("X-B", "2")], "X-A", []),
        ([("Connection", "X-A"), ("X-A", "1"), ("X-B", "2")], "X-B", ["2"]),
        ([], "X-Forwarded-For", ["10.0.0.7"]),
        ([("X-Forwarded-For", "1.2.3.4")], "X-Forwarded-For", ["1.2.3.4, 10.0.0.7"]),
        ([("X-Forwarded-Proto", "https")], "X-Forwarded-Proto", ["http"]),
        ([("X-Forwarded-Host", "spoofed")], "X-Forwarded-Host", ["proxy:8080"]),
        ([("Via", "1.0 corp")], "Via", ["1.0 corp, 1.1 nmbrs-proxy"]),
        ([("Content-Length", "5")], "Content-Length", ["5"]),
        ([("Accept-Encoding", "gzip")], "Accept-Encoding", ["gzip"]),
        ([("Cookie", "a=1"), ("Cookie", "b=2")], "Cookie", ["a=1", "b=2"]),
    ],
)
def test_upstream_request_headers(inbound: list[tuple[str, str]], name: str,
                                  expected: list[str]) -> None:
    assert _upstream(inbound).getall(name, []) == expected


OURS = "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"
THEIRS = [("TraceParent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
          ("tracestate", "rojo=1"), ("TRACESTATE", "congo=2")]


@pytest.mark.parametrize(
    ("inbound", "options", "traceparent", "tracestate"),
    [
        pytest.param(THEIRS, {}, [THEIRS[0][1]], ["rojo=1", "congo=2"], id="not-told"),
        pytest.param(THEIRS, {"traceparent": OURS}, [OURS], ["rojo=1", "congo=2"],
                     id="replaced-state-kept"),
        pytest.param(THEIRS, {"traceparent": OURS, "keep_tracestate": False}, [OURS], [],
                     id="restarted-state-dropped"),
        pytest.param([], {"traceparent": OURS}, [OURS], [], id="added"),
        pytest.param([("Connection", "traceparent"), *THEIRS], {"traceparent": OURS}, [OURS],
                     ["rojo=1", "congo=2"], id="named-in-connection-still-ours"),
    ],
)
def test_the_trace_context_sent_upstream(
    inbound: list[tuple[str, str]], options: dict[str, object], traceparent: list[str],
    tracestate: list[str],
) -> None:
    out = _upstream(inbound, **options)
    assert out.getall("traceparent", []) == traceparent
    assert out.getall("tracestate", []) == tracestate


def test_defaults_fill_gaps_only() -> None:
    assert _upstream([], defaults={"Accept": "application/json"})["Accept"] == "application/json"
    assert _upstream([("Accept", "text/csv")], defaults={"Accept": "application/json"}
                     )["Accept"] == "text/csv"


@pytest.mark.parametrize(
    ("inbound", "options", "expected"),
    [
        pytest.param([("Accept", "a/b"), ("Content-Length", "5")], {},
                     ["Accept: a/b", "X-Forwarded-For: 10.0.0.7", "X-Forwarded-Proto: http",
                      "X-Forwarded-Host: proxy:8080", "Via: 1.1 nmbrs-proxy"],
                     id="content-length-is-framing"),
        pytest.param([("X-Tenant", "theirs"), ("x-other", "1")],
                     {"replaced": frozenset({"x-tenant"})},
                     ["x-other: 1"], id="replaced-names-are-the-callers"),
        pytest.param([], {"defaults": {"Accept": "j", "X-Tenant": "d"},
                          "replaced": frozenset({"x-tenant"})},
                     ["Accept: j"], id="a-replaced-name-has-no-default"),
        pytest.param([("Connection", "accept"), ("Accept", "a/b")], {"defaults": {"Accept": "j"}},
                     ["Accept: j"], id="a-dropped-field-gets-the-default"),
        pytest.param([("X-Request-Id", "theirs")], {"request_id": "ours"},
                     ["X-Request-Id: ours"], id="the-request-id-is-ours"),
        pytest.param([("Cookie", "nmbrs_proxy_session=s"), ("Cookie", "a=1")], {},
                     ["Cookie: a=1"], id="our-cookie-stays"),
    ],
)
def test_upstream_request_lines(inbound: list[tuple[str, str]], options: dict[str, object],
                                expected: list[str]) -> None:
    """The lines of the client's part, without the forwarding info every request gets."""
    arguments: dict[str, object] = {"client_address": "10.0.0.7", "scheme": "http",
                                    "host": "proxy:8080", **options}
    lines = upstream_request_lines(CIMultiDict(inbound), **arguments)  # type: ignore[arg-type]
    forwarding = ("X-Forwarded-", "Via: ")
    if expected and not expected[-1].startswith("Via: "):
        lines = [line for line in lines if not line.startswith(forwarding)]
    assert lines == expected


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        ([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], [("Set-Cookie", "a=1"),
                                                           ("Set-Cookie", "b=2")]),
        ([("Connection", "close"), ("Keep-Alive", "5")], []),
        ([("Connection", "X-Secret"), ("X-Secret", "1")], []),
        ([("Transfer-Encoding", "chunked"), ("Content-Encoding", "gzip")],
         [("Content-Encoding", "gzip")]),
        ([("Content-Length", "10")], [("Content-Length", "10")]),
    ],
)
def test_client_response_headers(upstream: list[tuple[str, str]],
                                 expected: list[tuple[str, str]]) -> None:
    out = client_response_headers(CIMultiDict(upstream))
    assert out.popall("Via") == ["1.1 nmbrs-proxy"]
    assert list(out.items()) == expected


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("https://api.test/api/x?y=1", "http://proxy:8080/acme/api/x?y=1"),
        ("https://api.test", "http://proxy:8080/acme/"),
        ("https://api.test?a=1", "http://proxy:8080/acme/?a=1"),
        ("https://api.test.evil/api", "https://api.test.evil/api"),  # another host
        ("/api/relative", "/api/relative"),
        ("https://other.test/api", "https://other.test/api"),
    ],
)
def test_rewrite_location(location: str, expected: str) -> None:
    assert rewrite_location(location, "https://api.test", "http://proxy:8080/acme") == expected
