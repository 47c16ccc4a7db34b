"""TLS to the upstream (pool.py): verified against the context's CAs, with SNI, kept alive."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.forwarding.upstream import (
    ConnectError,
    Origin,
    Pool,
)
from tests.forwarding.upstream.servers import (
    NO_HEADERS,
    TIMEOUTS,
    Upstream,
)


def _certificate_authority(
    directory: Path, names: tuple[x509.GeneralName, ...] = (
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
) -> tuple[Path, ssl.SSLContext]:
    """A CA made for the test, and a server context with a certificate it signed for `names`
    (127.0.0.1 and localhost unless told otherwise)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=1))
          .not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file = directory / "ca.pem", directory / "cert.pem"
    key_file = directory / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    return ca_file, server_context


@pytest.fixture
async def tls_upstream(tmp_path: Path) -> AsyncIterator[tuple[Upstream, Path]]:
    ca_file, server_context = _certificate_authority(tmp_path)
    recorder = Upstream()
    server = TestServer(recorder.app(), host="127.0.0.1")
    await server.start_server(ssl=server_context)
    recorder.server = server
    yield recorder, ca_file
    await server.close()


async def test_tls_with_a_trusted_certificate(tls_upstream: tuple[Upstream, Path]) -> None:
    upstream, ca_file = tls_upstream
    pool = Pool(ssl_context=ssl.create_default_context(cafile=str(ca_file)))
    try:
        origin = Origin.parse(f"https://127.0.0.1:{upstream.origin.port}")
        for _ in range(2):
            response = await pool.request(origin, "GET", "/echo", NO_HEADERS, **TIMEOUTS)
            assert response.status == 200
            await response.read()
            response.release()
        assert len(set(upstream.peers)) == 1  # kept alive over TLS too
    finally:
        await pool.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_tls_refuses_a_certificate_it_cannot_verify(
    tls_upstream: tuple[Upstream, Path], host: str
) -> None:
    upstream, _ = tls_upstream
    pool = Pool()  # the system's CAs: the test CA is not among them
    try:
        with pytest.raises(ConnectError, match="SSLCertVerificationError"):
            await pool.request(Origin.parse(f"https://{host}:{upstream.origin.port}"), "GET",
                               "/echo", NO_HEADERS, **TIMEOUTS)
        assert upstream.peers == []
    finally:
        await pool.close()


async def test_tls_refuses_a_trusted_certificate_for_another_name(tmp_path: Path) -> None:
    ca_file, server_context = _certificate_authority(tmp_path, (x509.DNSName("other.test"),))
    upstream = Upstream()
    server = TestServer(upstream.app(), host="127.0.0.1")
    await server.start_server(ssl=server_context)
    pool = Pool(ssl_context=ssl.create_default_context(cafile=str(ca_file)))
    try:
        with pytest.raises(ConnectError, match="SSLCertVerificationError"):
            await pool.request(Origin.parse(f"https://127.0.0.1:{server.port}"), "GET",
                               "/echo", NO_HEADERS, **TIMEOUTS)
        assert upstream.peers == []
    finally:
        await pool.close()
        await server.close()
