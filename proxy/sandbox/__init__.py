"""An embedded fake of Nmbrs: its identity service and its REST API, in one aiohttp app.

Why it exists: the demo needs something to log in to, and the test suite needs an upstream
that behaves like the real one, strictly (form-urlencoded Basic credentials, single-use codes
and rotating refresh tokens, PKCE, a subscription-key gateway, rate limits, scopes).

It imports nothing from the rest of the `proxy` package, on purpose: it is an independent
implementation of the other side of the protocol, so a bug in the proxy's own OAuth helpers
cannot hide by being shared with the thing that checks them.
"""

from ._grants import fingerprint
from ._ledger import issued_secrets
from ._server import Sandbox, main_sandbox, start_sandbox
from ._settings import (
    DEMO_CLIENT,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_REDIRECT_URI,
    DEMO_SUBSCRIPTION_KEY,
    NMBRS_SCOPES,
    SandboxClient,
    SandboxSettings,
)
from ._stats import RecordedRequest, SandboxStats

__all__ = [
    "DEMO_CLIENT",
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "DEMO_REDIRECT_URI",
    "DEMO_SUBSCRIPTION_KEY",
    "NMBRS_SCOPES",
    "RecordedRequest",
    "Sandbox",
    "SandboxClient",
    "SandboxSettings",
    "SandboxStats",
    "fingerprint",
    "issued_secrets",
    "main_sandbox",
    "start_sandbox",
]
