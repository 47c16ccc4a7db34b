"""Clients known by their TLS client certificate: the certificate of a connection as the
[[clients]] name it (`PeerCertificate`), and the one form a configured subject is compared in
(`canonical_subject`). Pure: DER bytes and strings in, values out; no I/O.

The listener verified the certificate against `server.tls_client_ca` before any request
(proxy.core.listener_tls); these only say which client it is (proxy.inbound.policy).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography import x509


@dataclass(frozen=True)
class PeerCertificate:
    """The client certificate of a TLS connection, as the [[clients]] name it."""

    sha256: bytes  # of the DER certificate
    subject: str  # RFC 4514, as `canonical_subject` writes it

    @classmethod
    def from_der(cls, der: bytes) -> PeerCertificate:
        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        return cls(hashlib.sha256(der).digest(), subject)

    def is_named(self, sha256: bytes | None, subject: str | None) -> bool:
        """Whether this is the certificate with these parts (each one given must match; with
        none given, it is not)."""
        if sha256 is None and subject is None:
            return False
        if sha256 is not None and not hmac.compare_digest(sha256, self.sha256):
            return False
        return subject is None or subject == self.subject


def canonical_subject(text: str) -> str:
    """A distinguished name (RFC 4514, most specific first: `CN=reporting,O=Acme`) in the
    form a peer certificate's subject is compared in: attribute names in capitals (`cn` and
    `2.5.4.3` become `CN`), escapes as RFC 4514 writes them. ValueError if it is not one."""
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError:
        name = None
    if name is None or not name.rdns:
        raise ValueError(
            "must be a distinguished name as RFC 4514 writes it, most specific first and "
            "without spaces after the commas, e.g. 'CN=reporting,O=Acme' (`openssl x509 "
            "-noout -subject -nameopt RFC2253` prints it)")
    return name.rfc4514_string()
