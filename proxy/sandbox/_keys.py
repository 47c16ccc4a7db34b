"""The sandbox's RSA signing key (memory only) and its JWT access tokens."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ACCESS_TOKEN_AUDIENCE = "nmbrs.api"  # noqa: S105 - an audience, not a secret


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


class SigningKey:
    """RS256 key: generated at start-up unless one is handed in; never written anywhere."""

    def __init__(self, private_key: rsa.RSAPrivateKey | None = None) -> None:
        if private_key is None:
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._private = private_key
        self.public_key = private_key.public_key()
        numbers = self.public_key.public_numbers()
        self._n = b64url(_uint_bytes(numbers.n))
        self._e = b64url(_uint_bytes(numbers.e))
        # RFC 7638 thumbprint: members in lexicographic order, no whitespace.
        canonical = json.dumps({"e": self._e, "kty": "RSA", "n": self._n}, separators=(",", ":"))
        self.kid = b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": self._n,
            "e": self._e,
        }

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            claims, self._private, algorithm="RS256", headers={"kid": self.kid, "typ": "at+jwt"}
        )

    def verify_signature(self, token: str) -> dict[str, Any]:
        """Check signature, algorithm, kid and audience. Times and issuer are the caller's job,
        because they depend on the sandbox clock and on the request's host.

        Raises jwt.InvalidTokenError.
        """
        header = jwt.get_unverified_header(token)
        if header.get("kid") != self.kid:
            raise jwt.InvalidTokenError("unknown signing key")
        return jwt.decode(
            token,
            self.public_key,
            algorithms=["RS256"],
            audience=ACCESS_TOKEN_AUDIENCE,
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "require": ["iss", "aud", "exp", "nbf", "iat", "jti", "client_id", "sub", "scope"],
            },
        )
