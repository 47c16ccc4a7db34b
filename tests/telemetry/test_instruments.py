"""The lock-free instruments expose what prometheus_client's would, byte for byte."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from proxy.telemetry.instruments import CounterFamily, HistogramFamily, Tally

BOUNDS = (0.001, 0.01, 0.1, 1.0)


@pytest.mark.parametrize(
    ("value", "bucket"),
    [
        (0.0, 0),
        (0.001, 0),  # a bound is inclusive: `le`
        (0.0010001, 1),
        (0.05, 2),
        (1.0, 3),
        (1.5, 4),  # above every bound: +Inf
        (math.inf, 4),
        (-1.0, 0),
    ],
)
def test_an_observation_falls_in_the_first_bucket_at_or_above_it(value: float, bucket: int
                                                                  ) -> None:
    tally = Tally(BOUNDS)
    tally.observe(value)
    assert tally.counts == [1 if index == bucket else 0 for index in range(len(BOUNDS) + 1)]
    assert tally.total == value


OBSERVATIONS = (0.0, 0.0005, 0.001, 0.003, 0.01, 0.2, 1.0, 4.0, 250.0)


@pytest.mark.parametrize("render", [generate_latest, generate_openmetrics],
                         ids=["prometheus", "openmetrics"])
@pytest.mark.parametrize("buckets", [BOUNDS, (*BOUNDS, math.inf)], ids=["bounds", "with +Inf"])
def test_the_exposition_is_prometheus_clients(render: object, buckets: tuple[float, ...]
                                              ) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    requests = CounterFamily("app_requests", "Requests.", ["connection", "method"],
                             registry=ours)
    latency = HistogramFamily("app_seconds", "Latency.", ["connection"], buckets=buckets,
                              registry=ours)
    their_requests = Counter("app_requests", "Requests.", ["connection", "method"],
                             registry=theirs)
    their_latency = Histogram("app_seconds", "Latency.", ["connection"], buckets=buckets,
                              registry=theirs)
    for connection in ("a", "b", "unused"):  # a bound series shows at zero
        requests.labels(connection, "GET")
        their_requests.labels(connection, "GET")
        latency.labels(connection)
        their_latency.labels(connection)
    for index, value in enumerate(OBSERVATIONS):
        connection = "ab"[index % 2]
        requests.labels(connection, "GET").inc()
        their_requests.labels(connection, "GET").inc()
        requests.labels(connection, "POST").inc(2.5)
        their_requests.labels(connection, "POST").inc(2.5)
        latency.labels(connection).observe(value)
        their_latency.labels(connection).observe(value)
    assert callable(render)
    assert render(ours) == render(theirs)


def test_a_family_is_registered_once_and_named_like_prometheus_clients() -> None:
    registry = CollectorRegistry()
    CounterFamily("app_requests", "Requests.", [], registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("app_requests", "Requests again.", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        HistogramFamily("app_requests_total", "A clash.", [], buckets=BOUNDS, registry=registry)


def test_the_label_values_must_match_the_label_names() -> None:
    registry = CollectorRegistry()
    requests = CounterFamily("app_requests", "Requests.", ["connection"], registry=registry)
    latency = HistogramFamily("app_seconds", "Latency.", ["connection"], buckets=BOUNDS,
                              registry=registry)
    with pytest.raises(ValueError, match="1 label values expected"):
        requests.labels("a", "GET")
    with pytest.raises(ValueError, match="1 label values expected"):
        latency.labels()


def test_buckets_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError, match="app_seconds: buckets not in sorted order"):
        HistogramFamily("app_seconds", "Latency.", [], buckets=(1.0, 0.1),
                        registry=CollectorRegistry())
