"""[server] tls_cert, tls_key, tls_client_ca, tls_client_auth and ops_tls, and the clients
known by their certificate (cert_subject, cert_sha256): what they read into, and every
unusable value named by its key."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from proxy.config import parse
from proxy.core.listener_tls import ListenerTls
from tests.config.helpers import config, problems
from tests.pki import sha256, subject

KEY_A = hashlib.sha256(b"key-a").hexdigest()


@pytest.fixture(scope="module")
def leaves(ca: trustme.CA) -> dict[str, trustme.LeafCert]:
    return {"server": ca.issue_cert("127.0.0.1"), "other": ca.issue_cert("127.0.0.2"),
            "reporting": ca.issue_cert("r@x", common_name="reporting",
                                       organization_name="Acme",
                                       organization_unit_name="Payroll")}


@pytest.fixture
def files(tmp_path: Path, ca: trustme.CA, leaves: dict[str, trustme.LeafCert]) -> Path:
    """Beside the config: the server's certificate and key, both in one file, another key,
    the CA, an encrypted key, and junk."""
    server = leaves["server"]
    cert, key = server.cert_chain_pems[0].bytes(), server.private_key_pem.bytes()
    (tmp_path / "proxy.pem").write_bytes(cert)
    (tmp_path / "proxy.key").write_bytes(key)
    (tmp_path / "both.pem").write_bytes(cert + key)
    (tmp_path / "other.key").write_bytes(leaves["other"].private_key_pem.bytes())
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    private = serialization.load_pem_private_key(key, password=None)
    (tmp_path / "locked.key").write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    (tmp_path / "junk.pem").write_text("not a certificate\n", encoding="utf-8")
    return tmp_path


PAIR = {"server.tls_cert": "proxy.pem", "server.tls_key": "proxy.key"}


@pytest.mark.parametrize(("edits", "environ", "expected"), [
    pytest.param({}, {}, None, id="off-by-default"),
    pytest.param(PAIR, {}, ListenerTls(Path("proxy.pem"), Path("proxy.key")), id="pair"),
    pytest.param({"server.tls_cert": "both.pem"}, {}, ListenerTls(Path("both.pem")),
                 id="key-in-the-certificate-file"),
    pytest.param({"server.tls_cert": "file:proxy.pem", "server.tls_key": "file:proxy.key"}, {},
                 ListenerTls(Path("proxy.pem"), Path("proxy.key")), id="file-references"),
    pytest.param({"server.tls_cert": "env:CERT", "server.tls_key": "env:KEY"},
                 {"CERT": "proxy.pem", "KEY": "proxy.key"},
                 ListenerTls(Path("proxy.pem"), Path("proxy.key")), id="env-references"),
    pytest.param({**PAIR, "server.tls_client_ca": "ca.pem"}, {},
                 ListenerTls(Path("proxy.pem"), Path("proxy.key"), Path("ca.pem"), "required"),
                 id="client-certificates-required-by-default"),
    pytest.param({**PAIR, "server.tls_client_ca": "ca.pem", "server.tls_client_auth": "optional"},
                 {}, ListenerTls(Path("proxy.pem"), Path("proxy.key"), Path("ca.pem"),
                                 "optional"), id="client-certificates-optional"),
])
def test_what_the_keys_read_into(edits: dict[str, object], environ: dict[str, str],
                                 expected: ListenerTls | None, files: Path) -> None:
    tls = parse(config(edits), base_dir=files, environ=environ).server.tls
    if expected is None:
        assert tls is None
        return
    assert tls is not None
    assert (tls.cert, tls.key, tls.client_ca, tls.client_auth) == (
        files / expected.cert, None if expected.key is None else files / expected.key,
        None if expected.client_ca is None else files / expected.client_ca,
        expected.client_auth)
    assert [name for name, _ in tls.contents] == [name for name, _ in tls.files()]
    assert tls.contents[0][1] == hashlib.sha256(tls.cert.read_bytes()).hexdigest()


def test_ops_tls(files: Path) -> None:
    server = parse(config({**PAIR, "server.ops_port": 9090, "server.ops_tls": True}),
                   base_dir=files, environ={}).server
    assert (server.ops_tls, server.tls is not None) == (True, True)
    assert parse(config(PAIR), base_dir=files, environ={}).server.ops_tls is False


S = "server"


@pytest.mark.parametrize(("edits", "environ", "expected"), [
    pytest.param({"server.tls_cert": "missing.pem"}, {},
                 [f"{S}.tls_cert: cannot read {{dir}}/missing.pem (No such file or directory)"],
                 id="missing-certificate"),
    pytest.param({"server.tls_cert": "junk.pem", "server.tls_key": "proxy.key"}, {},
                 [f"{S}.tls_cert: {{dir}}/junk.pem holds no PEM certificate"], id="junk-cert"),
    pytest.param({"server.tls_cert": "proxy.pem", "server.tls_key": "junk.pem"}, {},
                 [f"{S}.tls_key: {{dir}}/junk.pem holds no PEM private key"], id="junk-key"),
    pytest.param({"server.tls_cert": "proxy.pem"}, {},
                 [f"{S}.tls_cert: {{dir}}/proxy.pem holds no PEM private key"],
                 id="no-key-anywhere"),
    pytest.param({"server.tls_cert": "proxy.pem", "server.tls_key": "other.key"}, {},
                 [(f"{S}.tls_key: {{dir}}/other.key is not the key of the certificate in "
                  f"{{dir}}/proxy.pem")], id="mismatched-pair"),
    pytest.param({"server.tls_cert": "proxy.pem", "server.tls_key": "locked.key"}, {},
                 [(f"{S}.tls_key: the key in {{dir}}/locked.key is encrypted; the proxy needs "
                  "it unencrypted (protect the file instead)")], id="encrypted-key"),
    pytest.param({**PAIR, "server.tls_client_ca": "junk.pem"}, {},
                 [f"{S}.tls_client_ca: {{dir}}/junk.pem holds no PEM certificate"],
                 id="junk-client-ca"),
    pytest.param({"server.tls_key": "proxy.key"}, {}, [f"{S}.tls_key: needs server.tls_cert"],
                 id="key-without-certificate"),
    pytest.param({"server.tls_client_ca": "ca.pem"}, {},
                 [f"{S}.tls_client_ca: needs server.tls_cert"], id="ca-without-certificate"),
    pytest.param({**PAIR, "server.tls_client_auth": "optional"}, {},
                 [f"{S}.tls_client_auth: needs server.tls_client_ca"], id="auth-without-ca"),
    pytest.param({**PAIR, "server.tls_client_ca": "ca.pem", "server.tls_client_auth": "maybe"},
                 {}, [f"{S}.tls_client_auth: must be one of: 'required', 'optional'"],
                 id="auth-mode"),
    pytest.param({"server.ops_tls": True, "server.ops_port": 9090}, {},
                 [f"{S}.ops_tls: needs server.tls_cert"], id="ops-tls-without-certificate"),
    pytest.param({**PAIR, "server.ops_tls": True}, {},
                 [f"{S}.ops_tls: has no effect without server.ops_port"],
                 id="ops-tls-without-ops-listener"),
    pytest.param({**PAIR, "server.ops_tls": "yes"}, {},
                 [f"{S}.ops_tls: expected a boolean, got a string"], id="ops-tls-type"),
    pytest.param({"server.tls_cert": "env:CERT"}, {"CERT": "-----BEGIN CERTIFICATE-----\nx"},
                 [(f"{S}.tls_cert: must be the path of a PEM file (or file:PATH), not the PEM "
                  "text itself")], id="pem-text"),
    pytest.param({"server.tls_cert": "file:"}, {},
                 [f"{S}.tls_cert: a file: reference needs a path"], id="empty-file-reference"),
    pytest.param({"server.tls_cert": "env:NOPE"}, {},
                 [f"{S}.tls_cert: environment variable NOPE is not set"], id="missing-env"),
    pytest.param({"server.tls_cert": 5}, {}, [f"{S}.tls_cert: expected a string, got an integer"],
                 id="type"),
    pytest.param({"server.tls_certificate": "proxy.pem"}, {},
                 [f"{S}.tls_certificate: unknown key (did you mean 'tls_cert'?)"], id="typo"),
])
def test_every_unusable_value_is_named_by_its_key(
    edits: dict[str, object], environ: dict[str, str], expected: list[str], files: Path,
) -> None:
    found = problems(config(edits), files, environ)
    assert list(found) == [line.format(dir=files) for line in expected]


# --- clients known by their certificate ------------------------------------------------------

MTLS = {**PAIR, "server.tls_client_ca": "ca.pem"}


def _with_clients(*clients: dict[str, Any], **edits: object) -> dict[str, Any]:
    data = config({**MTLS, **edits})
    data["clients"] = list(clients)
    return data


def test_clients_by_subject_by_digest_and_by_both(
    files: Path, leaves: dict[str, trustme.LeafCert],
) -> None:
    reporting = leaves["reporting"]
    fingerprint = ":".join(f"{byte:02X}" for byte in bytes.fromhex(sha256(reporting)))
    data = _with_clients(
        {"name": "by-subject", "cert_subject": "cn=reporting,ou=Payroll,o=Acme"},
        {"name": "by-digest", "cert_sha256": fingerprint, "read_only": True},
        {"name": "both", "cert_sha256": sha256(reporting), "key_sha256": KEY_A},
        {"name": "keyed", "key_sha256": hashlib.sha256(b"key-b").hexdigest()},
    )
    by_subject, by_digest, both, keyed = parse(data, base_dir=files, environ={}).clients
    assert subject(reporting) == "CN=reporting,OU=Payroll,O=Acme"
    assert (by_subject.cert_subject, by_subject.cert_sha256, by_subject.key_sha256) == (
        "CN=reporting,OU=Payroll,O=Acme", None, None)
    assert by_digest.cert_sha256 == bytes.fromhex(sha256(reporting))
    assert by_digest.read_only is True
    assert (both.cert_sha256, both.key_sha256) == (bytes.fromhex(sha256(reporting)),
                                                   bytes.fromhex(KEY_A))
    assert (keyed.by_certificate, by_subject.by_certificate) == (False, True)


C0 = "clients[0]"


@pytest.mark.parametrize(("clients", "edits", "expected"), [
    pytest.param([{"name": "a", "cert_subject": "CN=a"}], {"server.tls_client_ca": None},
                 [(f"{C0}.cert_subject: needs server.tls_client_ca: without it the proxy asks "
                  "for no client certificate")], id="subject-without-client-ca"),
    pytest.param([{"name": "a", "cert_sha256": "ab" * 32, "key_sha256": KEY_A}],
                 {"server.tls_client_ca": None, "server.tls_cert": None, "server.tls_key": None},
                 [(f"{C0}.cert_sha256: needs server.tls_client_ca: without it the proxy asks "
                  "for no client certificate")], id="digest-without-tls"),
    pytest.param([{"name": "a", "cert_subject": "CN=a, O=b"}], {},
                 [(f"{C0}.cert_subject: must be a distinguished name as RFC 4514 writes it, "
                  "most specific first and without spaces after the commas, e.g. "
                  "'CN=reporting,O=Acme' (`openssl x509 -noout -subject -nameopt RFC2253` "
                  "prints it)")], id="subject-with-spaces"),
    pytest.param([{"name": "a", "cert_sha256": "abc"}], {},
                 [(f"{C0}.cert_sha256: must be the SHA-256 of the DER certificate: 64 "
                  "hexadecimal characters, colons between the bytes allowed (`openssl x509 "
                  "-noout -fingerprint -sha256` prints it)")], id="short-digest"),
    pytest.param([{"name": "a"}], {}, [f"{C0}.key_sha256: required"], id="no-identity"),
    pytest.param([{"name": "a", "cert_subject": "CN=a"}, {"name": "b", "cert_subject": "cn=a"}],
                 {}, [("clients[1]: names the same certificate as clients[0]: no request could "
                      "tell them apart")], id="same-certificate"),
])
def test_problems_of_clients_by_certificate(
    clients: list[dict[str, Any]], edits: dict[str, object], expected: list[str], files: Path,
) -> None:
    data = _with_clients(*clients)
    for dotted, value in edits.items():
        if value is None:
            data["server"].pop(dotted.removeprefix("server."))
    assert list(problems(data, files)) == expected


def test_a_subject_and_a_digest_of_one_certificate_are_two_clients(
    files: Path, leaves: dict[str, trustme.LeafCert],
) -> None:
    reporting = leaves["reporting"]
    data = _with_clients({"name": "a", "cert_subject": subject(reporting)},
                         {"name": "b", "cert_subject": subject(reporting),
                          "cert_sha256": sha256(reporting)})
    assert [c.name for c in parse(data, base_dir=files, environ={}).clients] == ["a", "b"]
