"""Prometheus metrics of one application, in a registry of its own.

Two kinds of series:
- events, counted as they happen: requests, upstream and proxy-added latency, 429s, token
  refreshes, store errors. On the request path every instrument is bound to its label values
  once (`ConnectionMetrics`), so a request costs a dict lookup and a few increments; the
  request path's own series are lock-free (proxy.telemetry.instruments), the rest are
  prometheus_client's.
- state, read when Prometheus scrapes: token expiry, refresh-token age, warnings, readiness,
  the rate learned from the upstream's 429s (`_StateCollector`), computed from each
  connection's report at that moment.

A registry per app (never the process-global one) keeps several apps in one process, as in the
tests, from sharing or colliding over series. Names follow the Prometheus conventions: a
`nmbrs_proxy_` prefix, base units (seconds), `_total` on counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from proxy.telemetry.instruments import Count, CounterFamily, HistogramFamily
from proxy.telemetry.tracing import refresh_span
from proxy.tokens.health import Assessment, Concern, LinkState
from proxy.tokens.status import TokenStatus

PREFIX: Final = "nmbrs_proxy"
# Methods with a label of their own; anything else is counted as "other" (bounded cardinality).
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REFRESH_OUTCOMES: Final = ("success", "error", "consent_required")
# "refresh": taking the lease or reloading the set during a refresh.
STORE_OPERATIONS: Final = ("load", "save", "delete", "refresh")
# The upstream answers in milliseconds to a minute; the proxy should add well under one.
UPSTREAM_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ADDED_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5,
)


# No `*_created` series beside every counter and histogram: they double the exposition and
# nothing here reads them. (A process-wide switch of prometheus_client.)
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream


def status_class(status: int) -> str:
    """200 -> "2xx"; the label value of a status code."""
    return f"{status // 100}xx"


@dataclass(frozen=True)
class ConnectionReport:
    """One connection as the status page, readiness and the metrics see it; no secrets."""

    name: str
    status: TokenStatus
    assessment: Assessment
    now: float  # the clock reading the report was made at
    # Requests/s the connection learned from the upstream's 429s; None: nothing learned.
    learned_rate: float | None = None

    @property
    def ready(self) -> bool:
        """A request would be served now: a usable token and a subscription key."""
        return self.status.ready and not self.assessment.has(Concern.NO_SUBSCRIPTION_KEY)


class RequestCounter:
    """Counts answered requests under one connection label, children bound on first use."""

    __slots__ = ("_by_key", "_name", "_requests")

    def __init__(self, metrics: Metrics, name: str) -> None:
        self._name = name
        self._requests = metrics.requests
        self._by_key: dict[tuple[str, int], Count] = {}

    def request_done(self, method: str, status: int) -> None:
        if method not in METHODS:
            method = "other"
        key = (method, status // 100)
        child = self._by_key.get(key)
        if child is None:
            child = self._requests.labels(self._name, method, status_class(status))
            self._by_key[key] = child
        child.inc()


class ConnectionMetrics(RequestCounter):
    """The event instruments of one connection, with its label value bound once."""

    __slots__ = ("added_latency", "rate_limited", "upstream_latency")

    def __init__(self, metrics: Metrics, name: str) -> None:
        super().__init__(metrics, name)
        self.upstream_latency = metrics.upstream_latency.labels(name)
        self.added_latency = metrics.added_latency.labels(name)
        self.rate_limited = metrics.rate_limited.labels(name)


class Metrics:
    """Every series of one app. It is also the token managers' `TokenEvents` listener (and
    hands their refreshes to tracing)."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = CounterFamily(
            f"{PREFIX}_requests",
            "Requests answered, by connection (empty: the proxy's own pages and unrouted "
            "paths), method and status class.",
            ["connection", "method", "status_class"],
            registry=registry,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_requests_in_flight", "Requests being handled now.", registry=registry
        )
        self.upstream_latency = HistogramFamily(
            f"{PREFIX}_upstream_duration_seconds",
            "Time from sending a request upstream to its response headers.",
            ["connection"],
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        self.added_latency = HistogramFamily(
            f"{PREFIX}_added_latency_seconds",
            "Time the proxy adds: from a request's arrival to its response headers going out, "
            "minus the time spent waiting for the upstream.",
            ["connection"],
            buckets=ADDED_BUCKETS,
            registry=registry,
        )
        self.rate_limited = CounterFamily(
            f"{PREFIX}_upstream_rate_limited",
            "429 Too Many Requests answers seen from the upstream.",
            ["connection"],
            registry=registry,
        )
        self.refreshes = Counter(
            f"{PREFIX}_token_refreshes",
            "Token refreshes by outcome: success, error (retried) or consent_required.",
            ["connection", "outcome"],
            registry=registry,
        )
        self.store_errors = Counter(
            f"{PREFIX}_store_errors",
            "Token store operations that failed, by operation.",
            ["connection", "operation"],
            registry=registry,
        )
        self.client_quota_refused = Counter(
            f"{PREFIX}_client_quota_refused",
            "Requests refused with 429 because their client was over its quota, by limit: "
            "rate (max_requests_per_second) or concurrency (max_concurrent).",
            ["client", "limit"],
            registry=registry,
        )
        self.config_reloads = Counter(
            f"{PREFIX}_config_reloads",
            "Reloads of the configuration file: applied, unchanged, invalid (nothing applied) "
            "or failed.",
            ["result"],
            registry=registry,
        )
        if process:
            ProcessCollector(registry=registry)
        self._connections: dict[str, ConnectionMetrics] = {}
        self.unrouted = RequestCounter(self, "")

    def connection(self, name: str) -> ConnectionMetrics:
        """The bound instruments of `name`; its series exist (at zero) from now on."""
        found = self._connections.get(name)
        if found is None:
            found = self._connections[name] = ConnectionMetrics(self, name)
            for outcome in REFRESH_OUTCOMES:
                self.refreshes.labels(name, outcome)
            for operation in STORE_OPERATIONS:
                self.store_errors.labels(name, operation)
        return found

    def count_in_flight(self, read: Callable[[], float]) -> None:
        """The in-flight gauge reads `read()` at scrape time: no work per request."""
        self.in_flight.set_function(read)

    def watch(self, reports: Callable[[], Iterable[ConnectionReport]]) -> None:
        """Expose each connection's state, as `reports()` gives it at scrape time."""
        self.registry.register(_StateCollector(reports))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (Prometheus text, or OpenMetrics when asked for) and its type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    # -- TokenEvents ---------------------------------------------------------------------

    def refreshing(self, connection: str) -> AbstractContextManager[None]:
        """A renewal is a span when traces are exported (proxy.telemetry.tracing), else nothing."""
        return refresh_span(connection)

    def refreshed(self, connection: str) -> None:
        self.refreshes.labels(connection, "success").inc()

    def refresh_failed(self, connection: str, *, error: str, fatal: bool) -> None:  # noqa: ARG002 - the label is the outcome; the error code is in the log
        self.refreshes.labels(connection, "consent_required" if fatal else "error").inc()

    def store_failed(self, connection: str, *, operation: str) -> None:
        self.store_errors.labels(connection, operation).inc()


class _StateCollector:
    """Gauges computed from the connections' reports whenever Prometheus scrapes."""

    def __init__(self, reports: Callable[[], Iterable[ConnectionReport]]) -> None:
        self._reports = reports

    def describe(self) -> Sequence[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        ready, state, expiry, age, failures, warning, learned = families
        for report in self._reports():
            name, status, assessment = report.name, report.status, report.assessment
            ready.add_metric([name], 1.0 if report.ready else 0.0)
            for link_state in LinkState:
                state.add_metric(
                    [name, link_state.value], 1.0 if assessment.state is link_state else 0.0
                )
            if status.expires_at is not None:
                expiry.add_metric([name], status.expires_at - report.now)
            if status.refresh_issued_at is not None:
                age.add_metric([name], report.now - status.refresh_issued_at)
            failures.add_metric([name], float(status.failures))
            for concern in Concern:
                warning.add_metric(
                    [name, concern.value], 1.0 if assessment.has(concern) else 0.0
                )
            learned.add_metric([name], report.learned_rate or 0.0)
        yield from families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                f"{PREFIX}_connection_ready",
                "1 when the connection can serve a request now.",
                labels=["connection"],
            ),
            GaugeMetricFamily(
                f"{PREFIX}_connection_state",
                "1 for the connection's current state: linked, failing, needs_consent, "
                "not_linked or credentials_refused (machine credentials).",
                labels=["connection", "state"],
            ),
            GaugeMetricFamily(
                f"{PREFIX}_access_token_expiry_seconds",
                "Seconds until the access token expires (negative: expired).",
                labels=["connection"],
            ),
            GaugeMetricFamily(
                f"{PREFIX}_refresh_token_age_seconds",
                "Seconds since the current refresh token was issued.",
                labels=["connection"],
            ),
            GaugeMetricFamily(
                f"{PREFIX}_token_refresh_failures",
                "Refresh attempts that failed in a row since the last success.",
                labels=["connection"],
            ),
            GaugeMetricFamily(
                f"{PREFIX}_connection_warning",
                "1 while a warning holds: refresh_token_expiring (within 7 days of its "
                "lifetime), refresh_failing, consent_required, credentials_refused, "
                "no_refresh_token, no_subscription_key.",
                labels=["connection", "warning"],
            ),
            GaugeMetricFamily(
                f"{PREFIX}_upstream_learned_rate",
                "Requests per second the connection learned from the upstream's 429s and sends "
                "at most (0: nothing learned, not held back beyond its configured shaping).",
                labels=["connection"],
            ),
        ]

