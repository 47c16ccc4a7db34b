"""Every secret any sandbox in this process was configured with or handed out.

A real identity service would never keep these (the grant store keeps only fingerprints). The
sandbox keeps them, apart from its state, for one purpose: so that a test can prove that none
of them ever reached a log line, an error body or a page.
"""

from __future__ import annotations

import threading

_LOCK = threading.Lock()
_SECRETS: set[str] = set()


def remember(*values: str) -> None:
    with _LOCK:
        _SECRETS.update(value for value in values if value)


def issued_secrets() -> frozenset[str]:
    """Client secrets, subscription keys, codes, refresh and access tokens, of every sandbox."""
    with _LOCK:
        return frozenset(_SECRETS)
