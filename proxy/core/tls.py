"""The TLS context an outbound connection verifies its peer with: the system's CAs, a private
bundle, or both; and a client certificate for upstreams that demand mTLS.

Reading the files is the only I/O here; the configuration calls it to check the files when it
is read (so `check-config` names a bad bundle by its key), and the connection calls it again to
build the context it uses.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CA_MODES: Final = ("system", "file", "both")


@dataclass(frozen=True)
class OutboundTls:
    """What the configuration says; `context()` turns it into an SSLContext."""

    ca_mode: str = "system"  # "system": the default store; "file": ca_file only; "both"
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @property
    def is_default(self) -> bool:
        return self.ca_mode == "system" and self.client_cert is None

    def context(self) -> ssl.SSLContext:
        """A verifying context (hostname checked, TLS 1.2 at least); raises ValueError with
        the key of the file that cannot be used."""
        if self.ca_mode == "file":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, no CA loaded yet
        else:
            context = ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_file is not None and self.ca_mode != "system":
            try:
                context.load_verify_locations(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"ca_file: cannot use {self.ca_file} ({_why(exc)})") from None
        if self.client_cert is not None:
            try:
                context.load_cert_chain(self.client_cert, self.client_key)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"client_cert: cannot use {self.client_cert} with its key ({_why(exc)})"
                ) from None
        return context


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or "not valid PEM"
    return exc.strerror or type(exc).__name__
