"""Access decisions as tables: who is identified, what each client may do, admin and callback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from proxy.core.errors import Forbidden, ProxyError, Unauthorized
from proxy.inbound.policy import (
    LOOPBACK,
    AccessPolicy,
    AdminAccess,
    Area,
    Client,
    area_of,
    authorize_admin,
    authorize_callback,
    authorize_forward,
    bind_problem,
    exposure_warning,
    hash_key,
    identify,
    new_key,
    presented_key,
    source_address,
)
from tests.inbound.test_rules import rule


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def net(*texts: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)



REPORTING = Client(
    name="reporting",
    key_sha256=digest("key-reporting"),
    cidrs=net("10.0.0.0/8", "127.0.0.0/8"),
    connections=frozenset({"nmbrs"}),
    rules=(rule("GET", "/api/companies/*/employees*"),),
)
WRITER = Client(name="writer", key_sha256=digest("key-writer"))
READER = Client(name="reader", key_sha256=digest("key-reader"), read_only=True)
CLIENTS = (REPORTING, WRITER, READER)
POLICY = AccessPolicy(clients=CLIENTS)
HOME = ipaddress.ip_address("10.1.2.3")
ELSEWHERE = ipaddress.ip_address("192.0.2.7")


# --- identification -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "basic", "expected"),
    [
        ({}, False, None),
        ({"X-Proxy-Key": "k1"}, False, "k1"),
        ({"X-Proxy-Key": " k1 "}, False, "k1"),
        ({"X-Proxy-Key": ""}, False, ""),  # presented but empty: a wrong key, not no key
        ({"Authorization": "Bearer k2"}, False, "k2"),
        ({"Authorization": "bearer   k2"}, False, "k2"),
        ({"X-Proxy-Key": "k1", "Authorization": "Bearer k2"}, False, "k1"),  # the header wins
        ({"Authorization": "Basic " + base64.b64encode(b"admin:k3").decode()}, False, None),
        ({"Authorization": "Basic " + base64.b64encode(b"admin:k3").decode()}, True, "k3"),
        ({"Authorization": "Basic " + base64.b64encode(b":k:4").decode()}, True, "k:4"),
        ({"Authorization": "Basic !!notbase64"}, True, ""),
        ({"Authorization": "Digest abc"}, True, None),
    ],
)
def test_presented_key(headers: dict[str, str], basic: bool, expected: str | None) -> None:
    assert presented_key(headers, basic=basic) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("key-reporting", "reporting"),
        ("key-writer", "writer"),
        ("key-reader", "reader"),
        ("key-writer ", None),
        ("KEY-WRITER", None),
        ("", None),
        ("key-", None),
    ],
)
def test_identify(key: str, expected: str | None) -> None:
    found = identify(CLIENTS, key)
    assert (found.name if found is not None else None) == expected


@pytest.mark.parametrize("key", ["key-reporting", "key-reader", "wrong", ""])
def test_keys_are_compared_in_constant_time_with_every_client(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """Whichever client matches (or none), every digest is compared, with compare_digest."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    identify(CLIENTS, key)
    assert [b for _, b in calls] == [c.key_sha256 for c in CLIENTS]
    assert all(a == digest(key) and len(a) == len(b) == 32 for a, b in calls)


def test_new_keys_are_random_and_hash_to_their_digest() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert key.startswith("npk_")
        assert len(key) >= 40
        assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()


def test_a_policy_remembers_the_keys_that_named_a_client_and_no_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = AccessPolicy(clients=CLIENTS)
    hashed: list[str] = []
    real = identify

    def counting(clients: tuple[Client, ...], key: str) -> Client | None:
        hashed.append(key)
        return real(clients, key)

    monkeypatch.setattr("proxy.inbound.policy.identify", counting)
    for _ in range(3):
        for key in ("key-reporting", "key-reader", "wrong", ""):
            found = policy.client_with_key(key)
            expected = real(CLIENTS, key)
            assert found is expected
    # each known key hashed once; an unknown one every time, and never kept
    assert hashed.count("key-reporting") == hashed.count("key-reader") == 1
    assert hashed.count("wrong") == hashed.count("") == 3
    assert set(vars(policy)["_known_keys"]) == {"key-reporting", "key-reader"}
    assert "key-reporting" not in repr(policy)


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("::1", "::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),  # dual-stack sockets report IPv4 this way
        ("fe80::1%eth0", "fe80::1"),
        ("not-an-ip", None),
        ("", None),
        (None, None),
    ],
)
def test_source_address(remote: str | None, expected: str | None) -> None:
    found = source_address(remote)
    assert (str(found) if found is not None else None) == expected


# --- forwarded requests -------------------------------------------------------------------------

Decide = Callable[[], Any]
ALLOWED = "allowed"


@pytest.mark.parametrize(
    ("name", "pol", "key", "source", "connection", "method", "path", "expected"),
    [
        # no clients configured: anonymous, whatever is presented
        ("no-clients", AccessPolicy(), None, ELSEWHERE, "nmbrs", "POST", "/x", None),
        ("no-clients-key-ignored", AccessPolicy(), "junk", ELSEWHERE, "nmbrs", "GET", "/x", None),
        # clients configured
        ("no-key", POLICY, None, HOME, "nmbrs", "GET", "/x", Unauthorized),
        ("wrong-key", POLICY, "nope", HOME, "nmbrs", "GET", "/x", Unauthorized),
        ("empty-key", POLICY, "", HOME, "nmbrs", "GET", "/x", Unauthorized),
        ("no-key-anonymous-allowed", AccessPolicy(CLIENTS, allow_anonymous=True), None, HOME,
         "nmbrs", "DELETE", "/x", None),
        ("wrong-key-anonymous-allowed", AccessPolicy(CLIENTS, allow_anonymous=True), "nope",
         HOME, "nmbrs", "GET", "/x", Unauthorized),
        # a client with rules, networks and a connection list
        ("rule-allows", POLICY, "key-reporting", HOME, "nmbrs", "GET",
         "/api/companies/1/employees", "reporting"),
        ("rule-allows-head", POLICY, "key-reporting", HOME, "nmbrs", "HEAD",
         "/api/companies/1/employees", "reporting"),
        ("rule-method", POLICY, "key-reporting", HOME, "nmbrs", "POST",
         "/api/companies/1/employees", Forbidden),
        ("rule-path", POLICY, "key-reporting", HOME, "nmbrs", "GET",
         "/api/companies/1/hourcodes", Forbidden),
        ("rule-deeper-path", POLICY, "key-reporting", HOME, "nmbrs", "GET",
         "/api/companies/1/employees/2", Forbidden),
        ("cidr", POLICY, "key-reporting", ELSEWHERE, "nmbrs", "GET",
         "/api/companies/1/employees", Forbidden),
        ("cidr-unknown-source", POLICY, "key-reporting", None, "nmbrs", "GET",
         "/api/companies/1/employees", Forbidden),
        ("cidr-ipv6-loopback-not-listed", POLICY, "key-reporting",
         ipaddress.ip_address("::1"), "nmbrs", "GET", "/api/companies/1/employees", Forbidden),
        ("connection", POLICY, "key-reporting", HOME, "acme", "GET",
         "/api/companies/1/employees", Forbidden),
        ("no-connection-matches", POLICY, "key-reporting", HOME, None, "GET", "/nowhere",
         "reporting"),
        # no limits at all
        ("writer-anything", POLICY, "key-writer", ELSEWHERE, "acme", "DELETE", "/a/b", "writer"),
        # read-only
        ("read-only-get", POLICY, "key-reader", ELSEWHERE, "nmbrs", "GET", "/a", "reader"),
        ("read-only-head", POLICY, "key-reader", ELSEWHERE, "nmbrs", "HEAD", "/a", "reader"),
        ("read-only-options", POLICY, "key-reader", ELSEWHERE, "nmbrs", "OPTIONS", "/a",
         "reader"),
        ("read-only-post", POLICY, "key-reader", ELSEWHERE, "nmbrs", "POST", "/a", Forbidden),
        ("read-only-put", POLICY, "key-reader", ELSEWHERE, "nmbrs", "PUT", "/a", Forbidden),
        ("read-only-patch", POLICY, "key-reader", ELSEWHERE, "nmbrs", "PATCH", "/a", Forbidden),
        ("read-only-delete", POLICY, "key-reader", ELSEWHERE, "nmbrs", "DELETE", "/a",
         Forbidden),
    ],
)
def test_forward_decisions(
    name: str, pol: AccessPolicy, key: str | None, source: Any, connection: str | None,
    method: str, path: str, expected: Any,
) -> None:
    def decide() -> Client | None:
        return authorize_forward(pol, key=key, source=source, connection=connection,
                                 method=method, path=path)

    if isinstance(expected, type) and issubclass(expected, ProxyError):
        with pytest.raises(expected) as caught:
            decide()
        assert caught.value.status == {Unauthorized: 401, Forbidden: 403}[expected]
        if expected is Unauthorized:
            assert caught.value.headers == {"WWW-Authenticate": 'Bearer realm="nmbrs-proxy"'}
        assert "key-" not in caught.value.detail  # never the key itself
    else:
        found = decide()
        assert (found.name if found is not None else None) == expected


def test_rules_combine_with_read_only() -> None:
    both = Client(name="both", key_sha256=digest("k"), read_only=True,
                  rules=(rule("*", "/api/**"),))
    pol = AccessPolicy(clients=(both,))
    assert authorize_forward(pol, key="k", source=HOME, connection="c", method="GET",
                             path="/api/x") is both
    with pytest.raises(Forbidden, match="read-only"):
        authorize_forward(pol, key="k", source=HOME, connection="c", method="POST",
                          path="/api/x")
    with pytest.raises(Forbidden, match="may not GET this path"):
        authorize_forward(pol, key="k", source=HOME, connection="c", method="GET",
                          path="/other")


# --- admin pages and the callback ---------------------------------------------------------------

LOCAL = ipaddress.ip_address("127.0.0.1")
LOCAL6 = ipaddress.ip_address("::1")
ADMIN_KEYED = AccessPolicy(
    admin=AdminAccess(key_sha256=digest("admin-key"), cidrs=net("0.0.0.0/0"))
)


@pytest.mark.parametrize(
    ("pol", "key", "source", "expected"),
    [
        (AccessPolicy(), None, LOCAL, None),
        (AccessPolicy(), None, LOCAL6, None),
        (AccessPolicy(), None, ELSEWHERE, Forbidden),
        (AccessPolicy(), None, None, Forbidden),
        (AccessPolicy(), "key-writer", ELSEWHERE, Forbidden),
        (AccessPolicy(admin=AdminAccess(cidrs=())), None, LOCAL, Forbidden),  # nobody
        (ADMIN_KEYED, "admin-key", ELSEWHERE, None),
        (ADMIN_KEYED, None, ELSEWHERE, Unauthorized),
        (ADMIN_KEYED, "wrong", LOCAL, Unauthorized),
        (ADMIN_KEYED, "key-writer", LOCAL, Unauthorized),
        (AccessPolicy(admin=AdminAccess(key_sha256=digest("admin-key"))), "admin-key",
         ELSEWHERE, Forbidden),  # the key does not widen the networks
    ],
)
def test_admin_decisions(pol: AccessPolicy, key: str | None, source: Any, expected: Any) -> None:
    if expected is None:
        authorize_admin(pol, key=key, source=source)
        return
    with pytest.raises(expected) as caught:
        authorize_admin(pol, key=key, source=source)
    if expected is Unauthorized:
        assert caught.value.headers["WWW-Authenticate"].startswith('Basic realm="nmbrs-proxy')


@pytest.mark.parametrize(
    ("pol", "source", "allowed"),
    [
        (AccessPolicy(), LOCAL, True),
        (AccessPolicy(), ELSEWHERE, False),
        (ADMIN_KEYED, ELSEWHERE, True),  # no key needed: the browser cannot add one
        (AccessPolicy(admin=AdminAccess(cidrs=net("10.0.0.0/8"))), HOME, True),
        (AccessPolicy(admin=AdminAccess(cidrs=net("10.0.0.0/8"))), LOCAL, False),
    ],
)
def test_callback_decisions(pol: AccessPolicy, source: Any, allowed: bool) -> None:
    if allowed:
        authorize_callback(pol, source=source)
    else:
        with pytest.raises(Forbidden):
            authorize_callback(pol, source=source)


CALLBACKS = frozenset({"/_proxy/callback", "/oauth/cb"})


@pytest.mark.parametrize(
    ("path", "area"),
    [
        ("/_proxy/healthz", Area.OPEN),
        ("/_proxy/readyz", Area.OPEN),
        ("/_proxy/healthz/", Area.ADMIN),
        ("/_proxy/callback", Area.CALLBACK),
        ("/oauth/cb", Area.CALLBACK),
        ("/oauth/cb/x", Area.FORWARD),
        ("/_proxy", Area.ADMIN),
        ("/_proxy/", Area.ADMIN),
        ("/_proxy/login", Area.ADMIN),
        ("/_proxy/metrics", Area.ADMIN),
        ("/_proxy/revoke", Area.ADMIN),
        ("/_proxy/anything/else", Area.ADMIN),
        ("/_proxyx", Area.FORWARD),
        ("/api/companies", Area.FORWARD),
        ("/", Area.FORWARD),
    ],
)
def test_areas(path: str, area: Area) -> None:
    assert area_of(path, CALLBACKS) is area


# --- where the proxy may listen -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "pol", "refused", "warned"),
    [
        ("127.0.0.1", AccessPolicy(), False, False),
        ("127.0.0.2", AccessPolicy(), False, False),
        ("::1", AccessPolicy(), False, False),
        ("localhost", AccessPolicy(), False, False),
        ("127.0.0.1", AccessPolicy(allow_anonymous=True), False, False),
        ("0.0.0.0", AccessPolicy(), True, False),
        ("::", AccessPolicy(), True, False),
        ("", AccessPolicy(), True, False),
        ("proxy.internal", AccessPolicy(), True, False),
        ("10.0.0.5", AccessPolicy(), True, False),
        ("0.0.0.0", AccessPolicy(allow_anonymous=True), False, True),
        ("0.0.0.0", POLICY, False, False),
        ("0.0.0.0", AccessPolicy(CLIENTS, allow_anonymous=True), False, True),
    ],
)
def test_bind_rules(host: str, pol: AccessPolicy, refused: bool, warned: bool) -> None:
    assert (bind_problem(host, pol) is not None) is refused
    assert (exposure_warning(host, pol) is not None) is warned


def test_the_admin_default_is_loopback() -> None:
    assert AdminAccess().cidrs == LOOPBACK
    assert AdminAccess().key_sha256 is None


def test_reprs_hold_no_digests() -> None:
    text = repr(POLICY) + repr(ADMIN_KEYED)
    assert digest("key-writer").hex() not in text
    assert repr(digest("key-writer")) not in text
    assert repr(digest("admin-key")) not in text
