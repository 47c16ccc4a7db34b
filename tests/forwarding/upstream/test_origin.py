"""Where requests go (origin.py): an upstream URL as a pool's key and a Host header."""

from __future__ import annotations

import pytest

from proxy.forwarding.upstream import Origin


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://api.test", Origin("http", "api.test", 80, "api.test")),
        ("https://api.test", Origin("https", "api.test", 443, "api.test")),
        ("https://api.test:8443/base", Origin("https", "api.test", 8443, "api.test:8443")),
        ("http://127.0.0.1:8080", Origin("http", "127.0.0.1", 8080, "127.0.0.1:8080")),
        ("http://[::1]:8080", Origin("http", "::1", 8080, "[::1]:8080")),
    ],
)
def test_origin_parse(url: str, expected: Origin) -> None:
    assert Origin.parse(url) == expected
