"""Scrape a running proxy's /_proxy/metrics and read it with prometheus_client's own parser."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    types: dict[str, str]

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def get(self, name: str, **labels: str) -> float:
        found = self.value(name, **labels)
        assert found is not None, f"no sample {name}{labels}; have {self.names()}"
        return found

    def names(self) -> list[str]:
        return sorted({name for name, _ in self.samples})

    def labelled(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (n, labels), value in self.samples.items() if n == name}


def parse(text: str) -> Scrape:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(samples, types)


async def scrape(client: TestClient[web.Request, web.Application]) -> Scrape:
    response = await client.get("/_proxy/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await response.text())
