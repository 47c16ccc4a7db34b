"""Spans recorded in memory (the SDK's InMemorySpanExporter), and the check that none of them
holds a secret anywhere: name, attributes, events, links, status, resource."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.telemetry import tracing


@contextmanager
def recorded_spans() -> Iterator[InMemorySpanExporter]:
    """Spans are exported (to memory) inside the block, as `setup()` would export them."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert tracing.setup(provider)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def texts_of(span: ReadableSpan) -> Iterator[str]:
    """Every piece of text a span carries to the tracing system."""
    yield span.name
    for attributes in (span.attributes, span.resource.attributes,
                       *(event.attributes for event in span.events),
                       *(link.attributes for link in span.links)):
        for key, value in (attributes or {}).items():
            yield key
            yield from (str(item) for item in value) if isinstance(value, tuple) else (
                str(value),)
    for event in span.events:
        yield event.name
    if span.status.description:
        yield span.status.description


def leaks(spans: Iterable[ReadableSpan], secrets: Iterable[str]) -> list[tuple[str, str]]:
    """(span name, text) for each text of a span that holds one of `secrets`."""
    wanted = [secret for secret in secrets if secret]
    return [(span.name, text) for span in spans for text in texts_of(span)
            if any(secret in text for secret in wanted)]
