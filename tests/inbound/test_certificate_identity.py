"""Who a request acts for when clients may be known by their TLS certificate: a plain table
of key, certificate and the client found (or 401), with no network."""

from __future__ import annotations

import hashlib

import pytest
import trustme

from proxy.core.errors import Unauthorized
from proxy.inbound.certificates import PeerCertificate, canonical_subject
from proxy.inbound.policy import AccessPolicy, Client, identify_caller, key_digest
from tests.pki import der


def _peer(name: str) -> PeerCertificate:
    return PeerCertificate(hashlib.sha256(name.encode()).digest(), f"CN={name},O=Acme")


REPORTING, PAYROLL, STRANGER = _peer("reporting"), _peer("payroll"), _peer("stranger")

BY_SUBJECT = Client("by-subject", cert_subject=REPORTING.subject)
BY_DIGEST = Client("by-digest", cert_sha256=PAYROLL.sha256)
# The same subject as BY_SUBJECT, and a digest too: only that one certificate.
BY_BOTH_PARTS = Client("by-both-parts", cert_subject=STRANGER.subject,
                       cert_sha256=REPORTING.sha256)
KEYED = Client("keyed", key_sha256=key_digest("key-of-keyed"))
KEY_AND_CERT = Client("key-and-cert", key_sha256=key_digest("key-of-both"),
                      cert_sha256=PAYROLL.sha256)
CLIENTS = (BY_SUBJECT, BY_DIGEST, BY_BOTH_PARTS, KEYED, KEY_AND_CERT)


@pytest.mark.parametrize(("key", "peer", "found"), [
    pytest.param(None, REPORTING, "by-subject", id="by-subject"),
    pytest.param(None, PAYROLL, "by-digest", id="by-digest"),
    pytest.param(None, STRANGER, None, id="subject-right-digest-wrong"),
    pytest.param("key-of-keyed", None, "keyed", id="key-without-certificate"),
    pytest.param("key-of-keyed", STRANGER, "keyed", id="key-with-any-certificate"),
    pytest.param("key-of-both", PAYROLL, "key-and-cert", id="key-and-its-certificate"),
    pytest.param("key-of-both", REPORTING, None, id="key-with-another-certificate"),
    pytest.param("key-of-both", None, None, id="key-without-its-certificate"),
    pytest.param("wrong", REPORTING, None, id="a-wrong-key-is-not-saved-by-a-certificate"),
    pytest.param(None, None, None, id="nothing"),
])
def test_who_a_request_acts_for(key: str | None, peer: PeerCertificate | None,
                                found: str | None) -> None:
    policy = AccessPolicy(clients=CLIENTS)
    assert policy.by_certificate
    if found is None:
        with pytest.raises(Unauthorized):
            identify_caller(policy, key, peer)
        return
    client = identify_caller(policy, key, peer)
    assert client is not None
    assert client.name == found


def test_the_first_matching_client_wins_and_anonymous_callers_stay_anonymous() -> None:
    second = Client("second", cert_subject=REPORTING.subject, read_only=True)
    policy = AccessPolicy(clients=(BY_SUBJECT, second), allow_anonymous=True)
    assert identify_caller(policy, None, REPORTING) == BY_SUBJECT
    assert identify_caller(policy, None, STRANGER) is None  # anonymous
    assert identify_caller(policy, None, None) is None


def test_without_clients_by_certificate_the_certificate_is_not_looked_at() -> None:
    policy = AccessPolicy(clients=(KEYED,))
    assert policy.by_certificate is False
    with pytest.raises(Unauthorized) as refused:
        identify_caller(policy, None, REPORTING)
    assert "certificate" not in refused.value.detail


def test_the_refusal_says_a_certificate_would_do() -> None:
    with pytest.raises(Unauthorized) as refused:
        identify_caller(AccessPolicy(clients=CLIENTS), None, None)
    assert "client certificate" in refused.value.detail


def test_a_peer_certificate_from_der() -> None:
    leaf = trustme.CA().issue_cert("x@example", common_name="reporting",
                                   organization_name="Acme", organization_unit_name="Payroll")
    peer = PeerCertificate.from_der(der(leaf))
    assert peer.sha256 == hashlib.sha256(der(leaf)).digest()
    assert peer.subject == "CN=reporting,OU=Payroll,O=Acme"


@pytest.mark.parametrize(("written", "canonical"), [
    ("CN=reporting,O=Acme", "CN=reporting,O=Acme"),
    ("cn=reporting,o=Acme", "CN=reporting,O=Acme"),
    ("2.5.4.3=reporting", "CN=reporting"),
    ("CN=a\\,b", "CN=a\\,b"),
    ("CN=reporting, O=Acme", None),
    ("reporting", None),
    ("", None),
])
def test_canonical_subject(written: str, canonical: str | None) -> None:
    if canonical is None:
        with pytest.raises(ValueError, match="RFC 4514"):
            canonical_subject(written)
    else:
        assert canonical_subject(written) == canonical
