"""The proxy's listener with TLS, in process, on loopback: HTTPS served and verified with a
private CA, what it refuses (TLS 1.1, plain HTTP, missing client certificates), clients known
by their certificate on both ways a request takes (the data plane and the middleware chain),
and a reload that renews the certificate for new connections while old ones carry on.

It runs on asyncio's loop and on uvloop's (tests/conftest.py): the handshake and the
certificate swap happen in each loop's own SSL code.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import ssl
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.app import create_app
from proxy.config import load, reload_source
from proxy.core.listener_tls import ListenerCertificates
from proxy.inbound import access
from proxy.inbound.certificates import PeerCertificate
from proxy.ops.reload import LISTENER_CERTIFICATES
from proxy.tokens.store import FileStore
from tests.conftest import SUBSCRIPTION_KEY, ProxyServerFactory, RecordingUpstream, token_set
from tests.pki import Pki, der, served_on, sha256, subject

KEY = "key-of-the-keyed-client"
KEY_SHA256 = hashlib.sha256(KEY.encode()).hexdigest()


def _toml(value: object) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def config_text(upstream: str, store: Path, server: dict[str, object],
                clients: list[dict[str, object]]) -> str:
    lines = ["[server]", 'host = "127.0.0.1"',
             *(f"{name} = {_toml(value)}" for name, value in server.items())]
    lines += [f'[store]\npath = "{store}"', '[session]\nsecret = "a-session-secret-for-tests"',
              "[connections.nmbrs]", 'provider = "nmbrs"', f'upstream = "{upstream}"',
              'issuer = "http://127.0.0.1:9"', f'subscription_key = "{SUBSCRIPTION_KEY}"',
              'client_id = "PartnerApp_tests"', 'client_secret = "secret"',
              'redirect_uri = "http://127.0.0.1:8080/_proxy/callback"',
              'scopes = ["offline_access"]',
              "[connections.other]", 'provider = "nmbrs"', 'prefix = "/other/"',
              f'upstream = "{upstream}"', 'issuer = "http://127.0.0.1:9"',
              f'subscription_key = "{SUBSCRIPTION_KEY}"', 'client_id = "PartnerApp_other"',
              'client_secret = "secret"',
              'redirect_uri = "http://127.0.0.1:8080/_proxy/callback"',
              'scopes = ["offline_access"]']
    for client in clients:
        lines.append("[[clients]]")
        for name, value in client.items():
            lines.append(f"{name} = {value}" if name == "rules" else f"{name} = {_toml(value)}")
    return "\n".join(lines) + "\n"


@dataclass
class Running:
    """A proxy served with TLS from a configuration file, and the CA of its certificates."""

    server: TestServer
    pki: Pki
    leaf: trustme.LeafCert  # the certificate it was started with
    config: Path
    write: Callable[..., None]
    sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def session(self, leaf: trustme.LeafCert | None = None, *,
                context: ssl.SSLContext | None = None) -> aiohttp.ClientSession:
        """A session with one keep-alive connection, presenting `leaf` (None: nothing)."""
        tls = self.pki.context(leaf) if context is None else context
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls, limit=1))
        self.sessions.append(session)
        return session

    async def get(self, session: aiohttp.ClientSession, target: str,
                  key: str | None = None, method: str = "GET") -> int:
        headers = {} if key is None else {"X-Proxy-Key": key}
        url = URL(self.url + target, encoded=True)  # a percent-encoded path stays so
        async with session.request(method, url, headers=headers) as response:
            await response.read()
            return response.status

    async def served_certificate(self, session: aiohttp.ClientSession) -> bytes:
        """The DER certificate the proxy presented on the session's one connection (a
        request is made first, so that there is one)."""
        async with session.get(self.url + "/_proxy/healthz") as response:
            await response.read()
        return served_on(session)

    async def reload(self, session: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        async with session.post(self.url + "/_proxy/api/reload", json={}) as response:
            return response.status, json.loads(await response.read())


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(tmp_path: Path, upstream: RecordingUpstream,
                proxy_server: ProxyServerFactory) -> AsyncIterator[Start]:
    started: list[Running] = []
    store = tmp_path / "state" / "tokens.json"
    for name in ("nmbrs", "other"):
        await FileStore(store).save(name, token_set())
    pki = Pki(tmp_path / "tls")
    leaf = pki.serve()

    async def run(server: dict[str, object] | None = None,
                  clients: list[dict[str, object]] | None = None) -> Running:
        config = tmp_path / "config.toml"
        base = {"tls_cert": "tls/proxy.pem", "tls_key": "tls/proxy.key"}

        def write(server: dict[str, object] | None = None,
                  clients: list[dict[str, object]] | None = None) -> None:
            config.write_text(config_text(upstream.url, store, {**base, **(server or {})},
                                          clients or []))

        write(server, clients)
        settings = load(config, {})
        assert settings.server.tls is not None
        app = create_app(settings, reload_from=functools.partial(reload_source, config,
                                                                  "127.0.0.1"))
        certificates = ListenerCertificates(settings.server.tls)
        app[LISTENER_CERTIFICATES] = certificates  # as proxy.server.serve does
        served = await proxy_server(app, ssl=certificates.proxy.listening)
        running = Running(served, pki, leaf, config, write)
        started.append(running)
        return running

    yield run
    for running in started:
        for session in running.sessions:
            await session.close()


MTLS = {"tls_client_ca": "tls/ca.pem"}
OPTIONAL = {**MTLS, "tls_client_auth": "optional"}
ONLY_EMPLOYEES = '[{ methods = ["GET"], paths = ["/api/companies/*/employees*"] }]'


# --- HTTPS ----------------------------------------------------------------------------------


async def test_https_is_served_with_the_configured_certificate(start: Start) -> None:
    proxy = await start()
    assert proxy.url.startswith("https://127.0.0.1:")
    session = proxy.session()
    assert await proxy.get(session, "/api/companies") == 200
    assert await proxy.served_certificate(session) == der(proxy.leaf)


async def test_alpn_offers_http_1_1_only_and_tls_1_2_is_the_least(start: Start) -> None:
    proxy = await start()
    assert proxy.server.port is not None
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = proxy.pki.context()
        context.minimum_version = context.maximum_version = version
        context.set_alpn_protocols(["h2", "http/1.1"])
        reader, writer = await _open(proxy.server.port, context)
        connection = writer.get_extra_info("ssl_object")
        assert (connection.version(), connection.selected_alpn_protocol()) == (
            "TLSv1.2" if version is ssl.TLSVersion.TLSv1_2 else "TLSv1.3", "http/1.1")
        writer.close()
        assert not reader.at_eof()


def _tls_1_1_client(pki: Pki) -> ssl.SSLContext:
    context = pki.context()
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 allows TLS 1.1 at level 0 only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: the point
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


async def test_tls_1_1_is_refused(start: Start) -> None:
    proxy = await start()
    assert proxy.server.port is not None
    # The client can speak TLS 1.1: a server that allows it accepts the handshake ...
    control = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    control.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        control.minimum_version = ssl.TLSVersion.TLSv1_1
    control.load_cert_chain(proxy.pki.cert, proxy.pki.key)
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=control)
    try:
        _reader, writer = await _open(server.sockets[0].getsockname()[1],
                                      _tls_1_1_client(proxy.pki))
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.1"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    # ... the proxy does not.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _open(proxy.server.port, _tls_1_1_client(proxy.pki))


async def test_plain_http_to_the_tls_port_gets_no_http_answer(start: Start) -> None:
    proxy = await start()
    plain = proxy.url.replace("https://", "http://")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(plain + "/_proxy/healthz") as response:
                await response.read()


async def test_a_client_that_does_not_trust_the_ca_cannot_connect(start: Start) -> None:
    proxy = await start()
    session = proxy.session(context=Pki(proxy.pki.folder / "elsewhere").context())
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await proxy.get(session, "/_proxy/healthz")


# --- client certificates --------------------------------------------------------------------


async def test_required_client_certificates_refuse_a_connection_without_one(
    start: Start,
) -> None:
    proxy = await start(MTLS, [{"name": "keyed", "key_sha256": KEY_SHA256}])
    with pytest.raises(aiohttp.ClientError):  # TLS 1.3: the alert comes with the first read
        await proxy.get(proxy.session(), "/api/companies", KEY)
    stranger = Pki(proxy.pki.folder / "elsewhere").client("stranger")
    with pytest.raises(aiohttp.ClientError):  # a certificate of another CA
        await proxy.get(proxy.session(stranger), "/api/companies", KEY)
    # A key-only client still connects with a certificate of the CA, and its key decides.
    assert await proxy.get(proxy.session(proxy.pki.client("anyone")), "/api/companies",
                           KEY) == 200


async def test_optional_client_certificates_let_key_only_clients_in(start: Start) -> None:
    pki_client = {"name": "keyed", "key_sha256": KEY_SHA256}
    proxy = await start(OPTIONAL, [pki_client])
    plain = proxy.session()
    assert await proxy.get(plain, "/api/companies", KEY) == 200
    assert await proxy.get(plain, "/api/companies") == 401
    stranger = Pki(proxy.pki.folder / "elsewhere").client("stranger")
    with pytest.raises(aiohttp.ClientError):  # a certificate that is presented is verified
        await proxy.get(proxy.session(stranger), "/api/companies", KEY)


@pytest.mark.parametrize("by", ["subject", "sha256"])
async def test_a_client_known_by_its_certificate_passes_its_rules_only(
    start: Start, upstream: RecordingUpstream, by: str,
) -> None:
    proxy = await start(OPTIONAL, [])
    reporting = proxy.pki.client("reporting")
    other = proxy.pki.client("other-app")
    identity = ({"cert_subject": subject(reporting)} if by == "subject"
                else {"cert_sha256": sha256(reporting)})
    proxy.write(OPTIONAL, [
        {"name": "reporting", **identity, "read_only": True, "connections": ["nmbrs"],
         "rules": ONLY_EMPLOYEES},
        {"name": "keyed", "key_sha256": KEY_SHA256},
    ])
    status, outcome = await proxy.reload(proxy.session(reporting))
    assert (status, outcome["applied"]) == (200, ["clients"])
    session = proxy.session(reporting)
    before = len(upstream.seen)
    # Forwarded by the data plane ...
    assert await proxy.get(session, "/api/companies/7/employees") == 200
    # ... and through the middleware chain (a percent-encoded path takes that way).
    assert await proxy.get(session, "/api/companies/%37/employees") == 200
    assert [seen.raw_path for seen in upstream.seen[before:]] == [
        "/api/companies/7/employees", "/api/companies/%37/employees"]
    for target, method in [("/api/companies", "GET"), ("/api/companies/%37", "GET"),
                           ("/api/companies/7/employees", "POST"),
                           ("/other/api/companies/7/employees", "GET")]:
        assert await proxy.get(session, target, method=method) == 403, (target, method)
    assert len(upstream.seen) == before + 2  # nothing refused reached the upstream
    # Another certificate of the same CA is nobody: no key, no client.
    assert await proxy.get(proxy.session(other), "/api/companies/7/employees") == 401
    assert await proxy.get(proxy.session(other), "/api/companies/%37/employees") == 401


async def test_a_client_with_key_and_certificate_needs_both(start: Start) -> None:
    proxy = await start(OPTIONAL, [])
    app = proxy.pki.client("app")
    proxy.write(OPTIONAL, [{"name": "app", "key_sha256": KEY_SHA256,
                            "cert_sha256": sha256(app)}])
    status, _ = await proxy.reload(proxy.session())
    assert status == 200
    assert await proxy.get(proxy.session(app), "/api/companies", KEY) == 200
    assert await proxy.get(proxy.session(app), "/api/companies") == 401  # the cert alone
    assert await proxy.get(proxy.session(), "/api/companies", KEY) == 401  # the key alone
    wrong = proxy.pki.client("someone-else")
    assert await proxy.get(proxy.session(wrong), "/api/companies", KEY) == 401
    assert await proxy.get(proxy.session(wrong), "/api/%63ompanies", KEY) == 401


async def test_a_client_outside_its_networks_is_refused(start: Start) -> None:
    proxy = await start(OPTIONAL, [])
    app = proxy.pki.client("app")
    proxy.write(OPTIONAL, [{"name": "app", "cert_subject": subject(app),
                            "cidrs": ["10.0.0.0/8"]}])
    assert (await proxy.reload(proxy.session()))[0] == 200
    assert await proxy.get(proxy.session(app), "/api/companies") == 403


async def test_the_certificate_is_read_once_per_connection(
    start: Start, monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = await start(OPTIONAL, [])
    app = proxy.pki.client("app")
    proxy.write(OPTIONAL, [{"name": "app", "cert_sha256": sha256(app)}])
    assert (await proxy.reload(proxy.session()))[0] == 200
    made: list[bytes] = []
    original = PeerCertificate.from_der.__func__  # type: ignore[attr-defined]

    def counted(cls: type[PeerCertificate], certificate: bytes) -> PeerCertificate:
        made.append(certificate)
        peer: PeerCertificate = original(cls, certificate)
        return peer

    monkeypatch.setattr(PeerCertificate, "from_der", classmethod(counted))
    session = proxy.session(app)
    for target in ("/api/a", "/api/b", "/api/%63", "/api/d"):
        assert await proxy.get(session, target) == 200
    assert made == [der(app)]  # four requests, one keep-alive connection, one digest
    assert await proxy.get(proxy.session(app), "/api/e") == 200
    assert len(made) == 2  # a new connection reads its own
    assert len(access._PEERS) >= 1


# --- reloading the certificate --------------------------------------------------------------


async def test_a_reload_serves_the_renewed_certificate_to_new_connections(start: Start) -> None:
    proxy = await start()
    old_session = proxy.session()
    first = await proxy.served_certificate(old_session)
    renewed = proxy.pki.serve("proxy-renewed")  # the same paths, new files
    status, outcome = await proxy.reload(proxy.session())
    assert (status, outcome["applied"]) == (200, ["server.tls_cert", "server.tls_key"])
    assert await proxy.served_certificate(proxy.session()) == der(renewed) != first
    # The connection made before the reload is still open, and keeps its certificate.
    assert await proxy.served_certificate(old_session) == first
    assert await proxy.get(old_session, "/api/companies") == 200
    assert served_on(old_session) == first  # one connection, reused throughout


async def test_a_bad_certificate_at_reload_changes_nothing(start: Start) -> None:
    proxy = await start()
    served = await proxy.served_certificate(proxy.session())
    good_cert, good_key = proxy.pki.cert.read_bytes(), proxy.pki.key.read_bytes()
    other = proxy.pki.ca.issue_cert("127.0.0.1")
    cases = [
        (b"not a certificate\n", good_key, "server.tls_cert: ", "holds no PEM certificate"),
        (good_cert, other.private_key_pem.bytes(), "server.tls_key: ",
         "is not the key of the certificate"),
        (good_cert, b"", "server.tls_key: ", "holds no PEM private key"),
    ]
    for cert, key, where, why in cases:
        proxy.pki.cert.write_bytes(cert)
        proxy.pki.key.write_bytes(key)
        status, problem = await proxy.reload(proxy.session())
        assert status == 422
        (error,) = problem["errors"]
        assert error.startswith(where), error
        assert why in error, error
        assert await proxy.served_certificate(proxy.session()) == served
    proxy.pki.cert.write_bytes(good_cert)
    proxy.pki.key.write_bytes(good_key)
    status, outcome = await proxy.reload(proxy.session())
    assert (status, outcome["result"]) == (200, "unchanged")


async def test_files_that_break_after_they_were_read_change_nothing(
    start: Start, monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = await start()
    served = await proxy.served_certificate(proxy.session())
    proxy.pki.serve("renewed")

    def broken(_self: ListenerCertificates, _tls: object) -> Callable[[], None]:
        raise ValueError("tls_cert: cannot read proxy.pem (No such file or directory)")

    monkeypatch.setattr(ListenerCertificates, "prepare", broken)
    status, problem = await proxy.reload(proxy.session())
    assert status == 409
    assert problem["detail"] == "server.tls_cert: cannot read proxy.pem (No such file or directory)"
    assert await proxy.served_certificate(proxy.session()) == served


async def test_a_new_client_ca_applies_to_new_connections(start: Start, tmp_path: Path) -> None:
    proxy = await start(OPTIONAL, [])
    old_client = proxy.pki.client("app")
    proxy.write(OPTIONAL, [{"name": "app", "cert_subject": "CN=app,OU=Payroll,O=Acme"}])
    assert (await proxy.reload(proxy.session()))[0] == 200
    kept = proxy.session(old_client)
    assert await proxy.get(kept, "/api/x") == 200
    new_ca = Pki(tmp_path / "new-ca")
    (tmp_path / "tls" / "ca.pem").write_bytes(new_ca.ca.cert_pem.bytes())
    status, outcome = await proxy.reload(proxy.session())
    assert (status, outcome["applied"]) == (200, ["server.tls_client_ca"])
    with pytest.raises(aiohttp.ClientError):  # the old CA's certificate: not any more
        await proxy.get(proxy.session(old_client), "/api/x")
    assert await proxy.get(proxy.session(new_ca.client("app")), "/api/x") == 200
    assert await proxy.get(kept, "/api/x") == 200  # verified before the reload


async def test_asking_for_certificates_otherwise_waits_for_a_restart(start: Start) -> None:
    proxy = await start(OPTIONAL, [])
    proxy.pki.serve("renewed")
    proxy.write({**MTLS, "tls_client_auth": "required"}, [])
    status, outcome = await proxy.reload(proxy.session())
    assert (status, outcome["result"]) == (200, "unchanged")
    assert outcome["needs_restart"] == ["server.tls_cert", "server.tls_key",
                                        "server.tls_client_auth"]
    assert await proxy.get(proxy.session(), "/api/x") == 200  # still optional


async def _open(port: int, context: ssl.SSLContext,
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TLS connection, no HTTP."""
    return await asyncio.open_connection("127.0.0.1", port, ssl=context)
