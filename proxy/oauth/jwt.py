"""Read the lifetime of a JWT access token without trusting or verifying it.

The proxy is not the token's audience; it only needs to know when to renew. The lifetime is
`exp - iat` (RFC 7519 §4.1.4, §4.1.6) and is counted from the local moment the token was
requested, so a skewed local clock does not shift the refresh.
"""

from __future__ import annotations

import jwt


def jwt_lifetime(token: str) -> float | None:
    """Seconds between `iat` (or `nbf`) and `exp`, or None when the token is no usable JWT."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    start = claims.get("iat", claims.get("nbf"))
    if not isinstance(exp, int | float) or not isinstance(start, int | float):
        return None
    if isinstance(exp, bool) or isinstance(start, bool):
        return None
    lifetime = float(exp) - float(start)
    return lifetime if lifetime > 0 else None

