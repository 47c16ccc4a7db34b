"""Counters and histograms for the request path: plain numbers, read when Prometheus scrapes.

prometheus_client's instruments take a lock for every increment and walk a histogram's bounds
in Python, which cost about 12 µs of a forwarded request (BENCHMARKS.md). These are updated
and read on the event loop's thread only (requests, and the metrics endpoint that renders
them), so they need no lock: an increment is an attribute add, an observation one bisect. What
a scrape shows is the same series, spelled as prometheus_client spells them.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

_Series = TypeVar("_Series")


class Count:
    """One counter series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Tally:
    """One histogram series: how many observations fell at or under each bound, and their sum."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # bounds are inclusive (`le`)
        self.total += value


class _Family(Generic[_Series]):
    """A labelled family of series; `labels()` gives one to bind once, at zero from then on."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self._name, self._documentation = name, documentation
        self._labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], _Series] = {}

    def labels(self, *values: str) -> _Series:
        found = self._series.get(values)
        if found is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name}: {len(self._labelnames)} label values expected")
            found = self._series[values] = self._new_series()
        return found

    def _new_series(self) -> _Series:
        raise NotImplementedError


class CounterFamily(_Family[Count]):
    """A labelled counter."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], *,
                 registry: CollectorRegistry) -> None:
        super().__init__(name, documentation, labelnames)
        registry.register(self)

    def _new_series(self) -> Count:
        return Count()

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, count in self._series.items():
            family.add_metric(values, count.value)
        yield family


class HistogramFamily(_Family[Tally]):
    """A labelled histogram with fixed bounds."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], *,
                 buckets: Sequence[float], registry: CollectorRegistry) -> None:
        super().__init__(name, documentation, labelnames)
        bounds = tuple(float(bound) for bound in buckets if bound != math.inf)
        if list(bounds) != sorted(bounds):  # as prometheus_client: a mistake, not to be guessed
            raise ValueError(f"{name}: buckets not in sorted order")
        self._bounds = bounds
        self._le = [*map(floatToGoString, bounds), "+Inf"]
        registry.register(self)

    def _new_series(self) -> Tally:
        return Tally(self._bounds)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, tally in self._series.items():
            cumulative, buckets = 0, []
            for le, count in zip(self._le, tally.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(values, buckets, tally.total)
        yield family
