from __future__ import annotations

from typing import Any

import jwt
import pytest

from proxy.oauth.jwt import jwt_lifetime


def _jwt(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, "k" * 32, algorithm="HS256")


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (_jwt({"iat": 1000, "exp": 4600}), 3600.0),
        (_jwt({"nbf": 1000, "exp": 1300}), 300.0),  # nbf when iat is missing
        (_jwt({"iat": 1000.5, "exp": 1010.75}), 10.25),  # NumericDate may be fractional
        (_jwt({"iat": 1, "exp": 2000000000}), 1999999999.0),  # far-off clock: only the span counts
        (_jwt({"exp": 4600}), None),  # no start
        (_jwt({"iat": 1000}), None),  # no end
        (_jwt({"iat": 1000, "exp": 900}), None),  # negative
        (_jwt({"iat": True, "exp": 4600}), None),  # a bool is no number
        (_jwt({"iat": "1000", "exp": "4600"}), None),
        ("not-a-jwt", None),
        ("aGVsbG8.d29ybGQ.eA", None),
        ("", None),
    ],
)
def test_jwt_lifetime(token: str, expected: float | None) -> None:
    assert jwt_lifetime(token) == expected
