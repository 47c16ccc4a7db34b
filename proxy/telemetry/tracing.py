"""Traces: each request's place in a W3C trace, and, when asked for, OpenTelemetry spans.

Always on, and cheap: every request gets a `Trace` (`context_of`, or `begin` for a forwarded
one). A caller's valid `traceparent` is continued: its trace id goes on the access and audit
lines, and the header goes upstream as received, with the caller's `tracestate`. Without one
(or with an invalid one) the proxy starts a trace of its own: a new trace id and span id, not
sampled, and no `tracestate`. The header rules are proxy.core.traceparent's.

Exported spans are off by default, and then cost nothing but the one check of `_backend` per
request: this module imports nothing of OpenTelemetry, and `setup()` imports the SDK glue
(proxy.telemetry.otel) only when the environment asks for traces and the SDK is installed
(`pip install nmbrs-proxy[otel]`). The rule (`exporters_wanted`), read from the standard
variables:

- `OTEL_SDK_DISABLED=true` turns it off, whatever else is set;
- `OTEL_TRACES_EXPORTER` names the exporters (`otlp`, `console`, or any installed exporter's
  entry point); `none` turns it off;
- otherwise an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns on the `otlp` exporter;
- `otlp` speaks `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`,
  `http/protobuf` by default (the one the `otel` extra installs).

When on, a forwarded request is a SERVER span (its parent the caller's span), each attempt
upstream a CLIENT span below it whose id goes upstream as the parent id, and each token refresh
an INTERNAL span (a child of the request that waited for it, else a root). The spans and their
attributes are made in proxy.telemetry.otel. Which tracer is in force is process-wide (like the
log pipeline): `setup()` at the app's start, `shutdown()` at its end, and tests install their
own provider with `setup(provider)`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Final, Protocol

from multidict import MultiMapping

from proxy.core import traceparent
from proxy.core.traceparent import TRACEPARENT, TraceParent

if TYPE_CHECKING:  # never imported at run time unless traces are exported
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

OTLP_HTTP: Final = "otlp_proto_http"
OTLP_GRPC: Final = "otlp_proto_grpc"
_OTLP_BY_PROTOCOL: Final = {"http/protobuf": OTLP_HTTP, "grpc": OTLP_GRPC}
_NO_SPAN: Final[AbstractContextManager[None]] = contextlib.nullcontext()


class AttemptSpan(Protocol):
    """One request sent upstream (a CLIENT span)."""

    @property
    def traceparent(self) -> str: ...  # what goes upstream: this span is the parent

    def end(self, *, status: int | None, error: str | None = None) -> None: ...


class ServerSpan(Protocol):
    """One forwarded request (a SERVER span)."""

    def attempt(self, *, method: str, scheme: str, host: str, port: int, origin: str,
                path: str, connection: str, resend_count: int) -> AttemptSpan:
        """`origin` is the upstream's `scheme://host[:port]`, `path` what follows (no query)."""
        ...

    def end(self, *, status: int, connection: str | None, client: str | None) -> None: ...


class Backend(Protocol):
    """Where spans go (proxy.telemetry.otel's, when traces are exported)."""

    def server(self, parent: TraceParent | None, *, method: str, path: str, scheme: str,
               client_address: str | None, request_id: str) -> tuple[str, str, ServerSpan]:
        """The trace id, the `traceparent` naming the new span, and the span."""
        ...

    def refresh(self, connection: str) -> AbstractContextManager[None]: ...

    def shutdown(self) -> None: ...


# The one check on the hot path: None while traces are not exported.
_backend: Backend | None = None


class Trace:
    """One request's trace: its id (for the logs) and what goes upstream with it."""

    __slots__ = ("attempts", "keep_tracestate", "server", "trace_id", "traceparent")

    def __init__(self, trace_id: str, traceparent: str, *, keep_tracestate: bool,
                 server: ServerSpan | None = None) -> None:
        self.trace_id = trace_id
        self.traceparent = traceparent  # sent upstream when no attempt span names itself
        self.keep_tracestate = keep_tracestate  # the caller's trace goes on: so does its state
        self.server = server
        self.attempts = 0

    def __repr__(self) -> str:
        return f"Trace({self.trace_id!r}, exported={self.server is not None})"


def context_of(headers: MultiMapping[str]) -> Trace:
    """The trace of a request with `headers`, without a span: the caller's, or a new one."""
    parent = traceparent.received(headers.getall(TRACEPARENT, ()))
    if parent is None:
        parent = traceparent.start()
        return Trace(parent.trace_id, parent.value, keep_tracestate=False)
    return Trace(parent.trace_id, parent.value, keep_tracestate=True)


def begin(
    headers: MultiMapping[str],
    *,
    method: str,
    path: str,
    scheme: str,
    client_address: str | None,
    request_id: str,
) -> Trace:
    """The trace of a forwarded request, a SERVER span too when exporting; `path` without
    its query (the span shows it)."""
    backend = _backend
    if backend is None:
        return context_of(headers)
    parent = traceparent.received(headers.getall(TRACEPARENT, ()))
    trace_id, sent, span = backend.server(
        parent, method=method, path=path, scheme=scheme, client_address=client_address,
        request_id=request_id,
    )
    return Trace(trace_id, sent, keep_tracestate=parent is not None, server=span)


def finish(trace: Trace, *, status: int, connection: str | None, client: str | None) -> None:
    """The request was answered with `status` (499: the client went away first)."""
    server = trace.server
    if server is not None:
        server.end(status=status, connection=connection, client=client)


def exporting() -> bool:
    return _backend is not None


def refresh_span(connection: str) -> AbstractContextManager[None]:
    """Around one renewal at the identity service: a span when exporting, else nothing."""
    backend = _backend
    return _NO_SPAN if backend is None else backend.refresh(connection)


def exporters_wanted(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The span exporters the OTEL_* variables ask for, as entry-point names; () means off.

    See the module docstring for the rule; it is stricter than the SDK's own default (which
    exports to localhost:4317 when nothing is set), so that nothing is sent unless asked.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not names:
        endpoint = (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
                    or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())
        names = "otlp" if endpoint else ""
    wanted = [name.strip().lower() for name in names.split(",") if name.strip()]
    if "none" in wanted:
        return ()
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip() or "http/protobuf")
    otlp = _OTLP_BY_PROTOCOL.get(protocol, f"otlp with protocol {protocol!r}")
    return tuple(dict.fromkeys(otlp if name == "otlp" else name for name in wanted))


def setup(provider: TracerProvider | None = None,
          environ: Mapping[str, str] = os.environ) -> bool:
    """Start exporting spans: to `provider` (tests), else as the OTEL_* variables ask.

    False, and nothing changes, when they ask for nothing, when the SDK is not installed (said
    in a warning), or when spans are exported already (whoever started them stops them).
    """
    global _backend  # noqa: PLW0603 - the one switch the hot path reads
    if _backend is not None:
        return False
    names = () if provider is not None else exporters_wanted(environ)
    if provider is None and not names:
        return False
    try:
        from proxy.telemetry import otel  # noqa: PLC0415 - only when traces are exported
    except ImportError as exc:
        log.warning("OTEL_* variables ask for traces, but the OpenTelemetry SDK is not "
                    "installed (%s): pip install 'nmbrs-proxy[otel]'; no spans are exported",
                    exc.name)
        return False
    backend = otel.OtelBackend(provider) if provider is not None else otel.from_env(names)
    if backend is None:
        return False
    _backend = backend
    return True


def shutdown() -> None:
    """Stop exporting: the spans still queued are sent first (this blocks: use a thread)."""
    global _backend
    backend, _backend = _backend, None
    if backend is not None:
        backend.shutdown()
