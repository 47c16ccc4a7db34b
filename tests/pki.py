"""A private CA for the TLS tests (trustme): the proxy's certificate and key as files, client
certificates, and the client-side contexts that trust the CA or present a certificate."""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import trustme
from cryptography import x509

from proxy.core.tls import OutboundTls


def der(leaf: trustme.LeafCert) -> bytes:
    """The leaf certificate, DER-encoded (what a peer presents)."""
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode("ascii"))


def sha256(leaf: trustme.LeafCert) -> str:
    return hashlib.sha256(der(leaf)).hexdigest()


def subject(leaf: trustme.LeafCert) -> str:
    return x509.load_der_x509_certificate(der(leaf)).subject.rfc4514_string()


def served_on(session: aiohttp.ClientSession) -> bytes:
    """The certificate on the only keep-alive connection of `session`'s pool."""
    connector = session.connector
    assert connector is not None
    (pooled,) = [protocol for idle in connector._conns.values() for protocol, _ in idle]
    assert pooled.transport is not None
    peer = pooled.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert isinstance(peer, bytes)
    return peer


def loopback_server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a certificate of `ca` for 127.0.0.1 and localhost."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def trusting(ca: trustme.CA, folder: Path) -> OutboundTls:
    """Outbound TLS settings that trust `ca` (its certificate written to folder/ca.pem)."""
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return OutboundTls(ca_mode="file", ca_file=folder / "ca.pem")


def _replace(path: Path, data: bytes) -> None:
    """Write `data` at `path` in one step, as a secret mount or cert-manager renews a file."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(data)
    fresh.replace(path)


@dataclass
class Pki:
    """A CA and the files of `folder`: proxy.pem and proxy.key (the listener's), ca.pem."""

    folder: Path
    ca: trustme.CA = field(default_factory=trustme.CA)

    @property
    def cert(self) -> Path:
        return self.folder / "proxy.pem"

    @property
    def key(self) -> Path:
        return self.folder / "proxy.key"

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.pem"

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        _replace(self.ca_file, self.ca.cert_pem.bytes())

    def serve(self, common_name: str = "proxy") -> trustme.LeafCert:
        """A new certificate for 127.0.0.1 and localhost, written over proxy.pem/.key."""
        leaf = self.ca.issue_cert("127.0.0.1", "localhost", common_name=common_name)
        _replace(self.cert, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        _replace(self.key, leaf.private_key_pem.bytes())
        return leaf

    def client(self, common_name: str, organization: str = "Acme") -> trustme.LeafCert:
        return self.ca.issue_cert(f"{common_name}@clients.example", common_name=common_name,
                                  organization_name=organization,
                                  organization_unit_name="Payroll")

    def context(self, leaf: trustme.LeafCert | None = None) -> ssl.SSLContext:
        """A client context that trusts this CA and presents `leaf` (None: no certificate)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if leaf is not None:
            leaf.configure_cert(context)
        return context
