"""The OpenTelemetry side of proxy.telemetry.tracing: imported only when spans are exported.

The spans, and what they say (attribute names from OpenTelemetry's HTTP semantic conventions,
plus `nmbrs_proxy.*` for the proxy's own):

- SERVER `GET` (the method): one forwarded request, from its arrival to its last byte.
  `http.request.method`, `url.scheme`, `url.path` (never the query: its values may be personal
  or secret; masked by proxy.core.redact like a log line), `client.address`,
  `http.response.status_code`, `nmbrs_proxy.request_id`, `nmbrs_proxy.connection`,
  `nmbrs_proxy.client` (the `[[clients]]` name); `error.type` and an error status for a 5xx.
- CLIENT `GET`: one attempt upstream, from sending to the answer's headers; a retry or a replay
  after a refused token is another one, with `http.request.resend_count`. `http.request.method`,
  `server.address`, `server.port`, `url.full` (the upstream's origin and path, no query),
  `http.response.status_code`, `nmbrs_proxy.connection`; `error.type` (the status, or why no
  answer came) and an error status for a 4xx, a 5xx or no answer.
- INTERNAL `token refresh`: one renewal at the identity service. `nmbrs_proxy.connection`,
  `nmbrs_proxy.refresh.outcome` (`success`, `error`, `consent_required`, as the metric counts
  them) and `error.type` (the OAuth error code) when it failed.

No header, body, token, key or secret is ever an attribute, and exceptions are not recorded
(their messages may quote what an upstream said).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from proxy.core import traceparent
from proxy.core.redact import redact
from proxy.core.traceparent import TraceParent
from proxy.oauth.protocol import GrantError

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME: Final = "nmbrs-proxy"
INSTRUMENTATION: Final = "proxy"
EXPORTERS: Final = "opentelemetry_traces_exporter"  # the entry-point group of span exporters
# RFC 9110's methods keep their name; anything else is "_OTHER" (semantic conventions).
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def _method(method: str) -> str:
    return method if method in _METHODS else "_OTHER"


def _traceparent(span: Span) -> str:
    context = span.get_span_context()
    return traceparent.header(f"{context.trace_id:032x}", f"{context.span_id:016x}",
                              int(context.trace_flags))


class _Attempt:
    __slots__ = ("_span", "traceparent")

    def __init__(self, span: Span) -> None:
        self._span = span
        self.traceparent = _traceparent(span)

    def end(self, *, status: int | None, error: str | None = None) -> None:
        span = self._span
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                error = error or str(status)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR))
        span.end()


class _Server:
    __slots__ = ("_context", "_span", "_token", "_tracer")

    def __init__(self, tracer: otel_trace.Tracer, span: Span) -> None:
        self._tracer = tracer
        self._span = span
        self._context = otel_trace.set_span_in_context(span)
        # Current for the rest of the request: a token refresh it starts (a task, which copies
        # the context) is its child.
        self._token = otel_context.attach(self._context)

    def attempt(self, *, method: str, scheme: str, host: str, port: int, origin: str,
                path: str, connection: str, resend_count: int) -> _Attempt:
        attributes: dict[str, str | int] = {
            "http.request.method": _method(method),
            "server.address": host,
            "server.port": port,
            "url.full": origin + redact(path),  # the origin is configured: no one's secret
            "url.scheme": scheme,
            "nmbrs_proxy.connection": connection,
        }
        if resend_count:
            attributes["http.request.resend_count"] = resend_count
        span = self._tracer.start_span(
            _method(method), context=self._context, kind=SpanKind.CLIENT, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        )
        return _Attempt(span)

    def end(self, *, status: int, connection: str | None, client: str | None) -> None:
        span = self._span
        span.set_attribute("http.response.status_code", status)
        if connection is not None:
            span.set_attribute("nmbrs_proxy.connection", connection)
        if client is not None:
            span.set_attribute("nmbrs_proxy.client", client)
        if status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        otel_context.detach(self._token)


class OtelBackend:
    """Spans of a TracerProvider (proxy.telemetry.tracing.Backend)."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer(INSTRUMENTATION)

    def server(self, parent: TraceParent | None, *, method: str, path: str, scheme: str,
               client_address: str | None, request_id: str) -> tuple[str, str, _Server]:
        context = None
        if parent is not None:
            remote = SpanContext(int(parent.trace_id, 16), int(parent.parent_id, 16),
                                 is_remote=True, trace_flags=TraceFlags(parent.flags))
            context = otel_trace.set_span_in_context(NonRecordingSpan(remote))
        attributes: dict[str, str] = {
            "http.request.method": _method(method),
            "url.scheme": scheme,
            "url.path": redact(path),
            "nmbrs_proxy.request_id": request_id,
        }
        if method not in _METHODS:
            attributes["http.request.method_original"] = method[:32]
        if client_address:
            attributes["client.address"] = client_address
        span = self._tracer.start_span(
            _method(method), context=context, kind=SpanKind.SERVER, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        )
        trace_id = f"{span.get_span_context().trace_id:032x}"
        return trace_id, _traceparent(span), _Server(self._tracer, span)

    @contextlib.contextmanager
    def refresh(self, connection: str) -> Iterator[None]:
        span = self._tracer.start_span(
            "token refresh", kind=SpanKind.INTERNAL,
            attributes={"nmbrs_proxy.connection": connection},
            record_exception=False, set_status_on_exception=False,
        )
        outcome, error = "success", None
        try:
            yield
        except GrantError as exc:
            outcome, error = ("consent_required" if exc.fatal else "error"), exc.error[:64]
            raise
        except BaseException as exc:
            outcome, error = "error", type(exc).__name__
            raise
        finally:
            span.set_attribute("nmbrs_proxy.refresh.outcome", outcome)
            if error is not None:
                span.set_attribute("error.type", error)
                span.set_status(Status(StatusCode.ERROR))
            span.end()

    def shutdown(self) -> None:
        self._provider.shutdown()


def from_env(names: Sequence[str]) -> OtelBackend | None:
    """A provider configured by the OTEL_* variables (resource, sampler, exporter endpoints,
    batching: the SDK reads them), exporting through the exporters `names` (entry points)."""
    exporters: list[SpanExporter] = []
    for name in names:
        found = entry_points(group=EXPORTERS, name=name)
        if not found:
            log.warning("no span exporter %r is installed; OTEL_TRACES_EXPORTER or the OTLP "
                        "protocol asks for it", name)
            continue
        try:
            exporters.append(next(iter(found)).load()())
        except Exception as exc:
            log.warning("the span exporter %r could not be set up: %s", name, exc)
    if not exporters:
        log.warning("no spans are exported: no usable exporter")
        return None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER(_ARG)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("exporting traces as %s through %s", resource.attributes.get(SERVICE_NAME),
             ", ".join(names))
    return OtelBackend(provider)
