"""Embedded fakes: Nmbrs (identity service and REST API in one aiohttp app), and the
machine-credential upstreams (an RFC 6749 client-credentials server, Nomba, Nitro), each with
an API behind it.

Why it exists: the demo needs something to log in to, and the test suite needs an upstream
that behaves like the real one, strictly (form-urlencoded Basic credentials, single-use codes
and rotating refresh tokens, PKCE, a subscription-key gateway, rate limits, scopes).

It imports nothing from the rest of the `proxy` package, on purpose: it is an independent
implementation of the other side of the protocol, so a bug in the proxy's own OAuth helpers
cannot hide by being shared with the thing that checks them.
"""

from ._client_credentials import ClientCredentialsSandbox
from ._grants import fingerprint
from ._ledger import issued_secrets
from ._machine import DEMO_MACHINE_CLIENT, MachineClient, MachineSandbox, MachineSettings
from ._nitro import NitroSandbox
from ._nomba import NombaSandbox
from ._server import Sandbox, Servable, main_sandbox, start_sandbox
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

# The fakes by the provider whose upstream they play.
MACHINE_SANDBOXES: dict[str, type[MachineSandbox]] = {
    "client_credentials": ClientCredentialsSandbox,
    "nomba": NombaSandbox,
    "nitro": NitroSandbox,
}

__all__ = [
    "DEMO_CLIENT",
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "DEMO_MACHINE_CLIENT",
    "DEMO_REDIRECT_URI",
    "DEMO_SUBSCRIPTION_KEY",
    "MACHINE_SANDBOXES",
    "NMBRS_SCOPES",
    "ClientCredentialsSandbox",
    "MachineClient",
    "MachineSandbox",
    "MachineSettings",
    "NitroSandbox",
    "NombaSandbox",
    "RecordedRequest",
    "Sandbox",
    "SandboxClient",
    "SandboxSettings",
    "SandboxStats",
    "Servable",
    "fingerprint",
    "issued_secrets",
    "main_sandbox",
    "start_sandbox",
]
