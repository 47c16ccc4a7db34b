"""A strict, embedded fake of the proxy's upstreams: the Nmbrs identity service and REST API
in one aiohttp app (`Sandbox`), and the machine-credential ones (an RFC 6749 client-credentials
server, Nomba, Nitro), each with an API behind it. It behaves like the real thing, strictly:
access tokens are signed JWTs (RS256, published in a JWKS); refresh tokens are single-use and
rotate, and reusing one is invalid_grant and revokes its grant; codes are single-use, bound to
their client, redirect URI and PKCE challenge, and expire; HTTP Basic client credentials are
decoded as RFC 6749 §2.3.1 says (base64, then each part form-urldecoded); the API gateway
answers 401 without the subscription key and 429 with Retry-After past the rate limit. It is
what the demo logs in to, and the only upstream fake the test suite allows (no test mocks one).
It imports no proxy code, on purpose (an import-linter contract checks it): it is an
independent implementation of the other side of the protocol, so that a bug in the proxy's own
OAuth helpers cannot pass every test by being shared with the thing that checks them.
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
