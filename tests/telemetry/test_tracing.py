"""Tracing's switch: which OTEL_* settings export spans, the SDK never loaded when they do
not, the service name, the token refresh span, and OTLP over HTTP to a collector."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from opentelemetry.trace import SpanKind, StatusCode

import proxy.telemetry
from proxy.oauth.protocol import GrantError
from proxy.telemetry import tracing
from proxy.telemetry.metrics import Metrics
from tests.spans import recorded_spans

HTTP = tracing.OTLP_HTTP


@pytest.fixture(autouse=True)
def no_otel_variables(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever the machine's environment says, each test starts with none of them, and with
    nothing exported."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    yield
    tracing.shutdown()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, (), id="nothing-set-off"),
        pytest.param({"OTEL_SERVICE_NAME": "x"}, (), id="only-a-name-off"),
        pytest.param({"OTEL_TRACES_EXPORTER": "otlp"}, (HTTP,), id="otlp-http-by-default"),
        pytest.param({"OTEL_TRACES_EXPORTER": " OTLP "}, (HTTP,), id="case-and-spaces"),
        pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, (HTTP,),
                     id="an-endpoint-turns-otlp-on"),
        pytest.param({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, (HTTP,),
                     id="a-traces-endpoint-too"),
        pytest.param({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, (), id="a-blank-endpoint-off"),
        pytest.param({"OTEL_TRACES_EXPORTER": "console"}, ("console",), id="console"),
        pytest.param({"OTEL_TRACES_EXPORTER": "otlp,console,otlp"}, (HTTP, "console"),
                     id="several-once-each"),
        pytest.param({"OTEL_TRACES_EXPORTER": "none",
                      "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, (),
                     id="none-wins-over-an-endpoint"),
        pytest.param({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, (),
                     id="sdk-disabled"),
        pytest.param({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"}, (),
                     id="sdk-disabled-any-case"),
        pytest.param({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, (HTTP,),
                     id="sdk-not-disabled"),
        pytest.param({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
                     (tracing.OTLP_GRPC,), id="grpc-asked-for"),
        pytest.param({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                      "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, (HTTP,),
                     id="the-traces-protocol-wins"),
        pytest.param({"OTEL_TRACES_EXPORTER": "zipkin"}, ("zipkin",), id="any-entry-point"),
    ],
)
def test_which_settings_export_spans(environ: dict[str, str], expected: tuple[str, ...]) -> None:
    assert tracing.exporters_wanted(environ) == expected


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({}, id="nothing-set"),
        pytest.param({"OTEL_SDK_DISABLED": "true",
                      "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, id="disabled"),
    ],
)
def test_off_the_proxy_imports_nothing_of_opentelemetry(environ: dict[str, str]) -> None:
    """Every `import` a proxy module makes is watched (redis-py imports the SDK's metrics by
    itself when it is installed: that one is not the proxy's)."""
    code = (
        "import builtins, sys\n"
        "made = []\n"
        "plain = builtins.__import__\n"
        "def watched(name, globals=None, locals=None, fromlist=(), level=0):\n"
        "    importer = (globals or {}).get('__name__', '')\n"
        "    names = [name] + [f'{name}.{item}' for item in fromlist or ()]\n"
        "    if importer.split('.')[0] == 'proxy' and any(\n"
        "            n.split('.')[0] == 'opentelemetry' or n == 'proxy.telemetry.otel'\n"
        "            for n in names):\n"
        "        made.append((importer, name))\n"
        "    return plain(name, globals, locals, fromlist, level)\n"
        "builtins.__import__ = watched\n"
        "import proxy.app, proxy.cli, proxy.workers, proxy.demo\n"
        "from multidict import CIMultiDict\n"
        "from proxy.telemetry import tracing\n"
        "assert not tracing.setup()\n"
        "trace = tracing.context_of(CIMultiDict())\n"
        "with tracing.refresh_span('nmbrs'):\n"
        "    pass\n"
        "print(made, 'proxy.telemetry.otel' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | environ
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=60, env=env).stdout.strip()
    assert found == "[] False"


def test_the_watch_above_sees_an_import_when_on() -> None:
    """The check above would fail if tracing imported the SDK: it does so when it is on."""
    code = (
        "import builtins, sys\n"
        "made = []\n"
        "plain = builtins.__import__\n"
        "def watched(name, globals=None, locals=None, fromlist=(), level=0):\n"
        "    importer = (globals or {}).get('__name__', '')\n"
        "    if importer == 'proxy.telemetry.tracing' and 'otel' in (fromlist or ()):\n"
        "        made.append(name)\n"
        "    return plain(name, globals, locals, fromlist, level)\n"
        "builtins.__import__ = watched\n"
        "from proxy.telemetry import tracing\n"
        "assert tracing.setup(environ={'OTEL_TRACES_EXPORTER': 'console'})\n"
        "print(made, 'proxy.telemetry.otel' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=60, env=env).stdout.strip()
    assert found == "['proxy.telemetry'] True"


def test_off_a_request_costs_one_check_and_no_span() -> None:
    trace = tracing.context_of(CIMultiDict())
    assert trace.server is None
    assert not tracing.exporting()
    assert tracing.refresh_span("nmbrs") is tracing.refresh_span("other")  # one shared no-op
    tracing.finish(trace, status=200, connection="nmbrs", client=None)  # nothing to end


def test_without_the_sdk_a_warning_and_no_spans(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "proxy.telemetry.otel", None)  # `import` raises then
    monkeypatch.delattr(proxy.telemetry, "otel", raising=False)  # (once imported, it is here)
    caplog.set_level(logging.WARNING, logger="proxy.telemetry.tracing")
    assert not tracing.setup(environ={"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.exporting()
    assert "pip install 'nmbrs-proxy[otel]'" in caplog.text


def test_an_exporter_that_is_not_installed_exports_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="proxy.telemetry.otel")
    assert not tracing.setup(environ={"OTEL_TRACES_EXPORTER": "no-such-exporter"})
    assert not tracing.exporting()
    assert "no span exporter 'no-such-exporter' is installed" in caplog.text


@pytest.mark.parametrize(
    ("variables", "service"),
    [
        pytest.param({}, "nmbrs-proxy", id="default"),
        pytest.param({"OTEL_SERVICE_NAME": "payroll-gateway"}, "payroll-gateway", id="named"),
        pytest.param({"OTEL_RESOURCE_ATTRIBUTES": "service.name=edge,team=hr"}, "edge",
                     id="in-the-resource-attributes"),
    ],
)
def test_the_service_name(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], service: str
) -> None:
    for name, value in {"OTEL_TRACES_EXPORTER": "console", **variables}.items():
        monkeypatch.setenv(name, value)
    assert tracing.setup()
    assert not tracing.setup()  # already on: the first one stays, and its owner stops it
    backend = tracing._backend
    assert backend is not None
    assert backend._provider.resource.attributes["service.name"] == service  # type: ignore[attr-defined]


def test_a_refresh_span_says_how_it_went() -> None:
    with recorded_spans() as exporter:
        with tracing.refresh_span("nmbrs"):
            pass
        with pytest.raises(GrantError), tracing.refresh_span("nmbrs"):
            raise GrantError("invalid_grant", "the refresh token was used before")
        with pytest.raises(GrantError), tracing.refresh_span("nomba"):
            raise GrantError("temporarily_unavailable", "connection refused")
        with pytest.raises(RuntimeError), Metrics(process=False).refreshing("nitro"):
            raise RuntimeError("a bug")
        spans = exporter.get_finished_spans()
    assert [(s.name, s.kind, dict(s.attributes or {}), s.status.status_code) for s in spans] == [
        ("token refresh", SpanKind.INTERNAL,
         {"nmbrs_proxy.connection": "nmbrs", "nmbrs_proxy.refresh.outcome": "success"},
         StatusCode.UNSET),
        ("token refresh", SpanKind.INTERNAL,
         {"nmbrs_proxy.connection": "nmbrs", "nmbrs_proxy.refresh.outcome": "consent_required",
          "error.type": "invalid_grant"}, StatusCode.ERROR),
        ("token refresh", SpanKind.INTERNAL,
         {"nmbrs_proxy.connection": "nomba", "nmbrs_proxy.refresh.outcome": "error",
          "error.type": "temporarily_unavailable"}, StatusCode.ERROR),
        ("token refresh", SpanKind.INTERNAL,
         {"nmbrs_proxy.connection": "nitro", "nmbrs_proxy.refresh.outcome": "error",
          "error.type": "RuntimeError"}, StatusCode.ERROR),
    ]
    assert all(not s.events and s.status.description is None for s in spans)  # no messages
    assert all(s.parent is None for s in spans)  # no request waited for them


async def test_otlp_over_http_reaches_a_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[tuple[str, str, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.path, request.content_type, await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    server = TestServer(collector, host="127.0.0.1")
    await server.start_server()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", str(server.make_url("")).rstrip("/"))
        assert tracing.setup()
        with tracing.refresh_span("nmbrs"):
            pass
        await asyncio.to_thread(tracing.shutdown)  # sends what is queued
    finally:
        await server.close()
    assert len(received) == 1
    path, content_type, body = received[0]
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    assert b"nmbrs-proxy" in body
    assert b"token refresh" in body
