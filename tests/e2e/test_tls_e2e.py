"""Real `serve` processes with TLS on the listener: `--workers 2` with client certificates and
an HTTPS ops listener, the certificate renewed by SIGHUP and by `nmbrs-proxy reload` while
connections made before stay up, and `check-config` naming a bad certificate by its key."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme

from proxy.config import ServerSettings, Settings
from proxy.core.listener_tls import ListenerTls
from proxy.reload_cli import reload_url, tls_context
from tests.pki import Pki, der, served_on, subject
from tests.test_server import (
    ROOT,
    ProxyProcess,
    SlowUpstream,
    free_port,
    start_proxy,
    until,
    write_config,
)

ONLY_EMPLOYEES = '[{ methods = ["GET"], paths = ["/api/companies/*/employees*"] }]'


async def _tls_config(tmp_path: Path, upstream: str, *, port: int, server: str,
                      clients: str = "", ops_port: int | None = None) -> Path:
    config = await write_config(tmp_path, upstream, port=port, grace=5, ops_port=ops_port)
    text = config.read_text().replace("[store]", f"{server}\n[store]", 1)
    config.write_text(text + clients)
    return config


def _reloads(proxy: ProxyProcess) -> list[dict[str, object]]:
    return [line for line in proxy.lines if line.get("event") == "reload"]


async def _get(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        await response.read()
        return response.status


async def _served(pki: Pki, url: str, leaf: trustme.LeafCert | None = None) -> bytes:
    """The certificate a new connection is served."""
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=pki.context(leaf), limit=1)) as session:
        assert await _get(session, url + "/_proxy/healthz") == 200
        return served_on(session)


async def test_workers_serve_tls_identify_clients_and_renew_the_certificate(
    slow_upstream: SlowUpstream, tmp_path: Path, processes: list[ProxyProcess],
) -> None:
    pki = Pki(tmp_path / "tls")
    first = pki.serve()
    reporting = pki.client("reporting")
    port, ops_port = free_port(), free_port()
    config = await _tls_config(
        tmp_path, slow_upstream.url, port=port, ops_port=ops_port,
        server='tls_cert = "tls/proxy.pem"\ntls_key = "tls/proxy.key"\n'
               'tls_client_ca = "tls/ca.pem"\nops_tls = true',
        clients=f'[[clients]]\nname = "reporting"\ncert_subject = "{subject(reporting)}"\n'
                f"rules = {ONLY_EMPLOYEES}\n")
    proxy = await start_proxy(config, args=("--workers", "2"))
    processes.append(proxy)
    await until(lambda: len([e for e in proxy.events() if e == "listening"]) >= 2, timeout=30)
    addresses = {a for line in proxy.lines if line.get("event") == "listening"
                 for a in line["addresses"]}
    assert addresses == {f"https://127.0.0.1:{port}"}
    url = f"https://127.0.0.1:{port}"
    # Probes reach the ops listener over HTTPS with no client certificate.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=pki.context())) as s:
        assert await _get(s, f"https://127.0.0.1:{ops_port}/_proxy/healthz") == 200
    # Every worker identifies the client by its certificate: new connections each time.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=pki.context(reporting), force_close=True)) as fresh:
        allowed = [await _get(fresh, f"{url}/api/companies/7/employees") for _ in range(20)]
        refused = [await _get(fresh, f"{url}/api/companies") for _ in range(10)]
    assert (allowed, refused) == ([200] * 20, [403] * 10)
    served = {line["worker"] for line in proxy.access()}
    assert len(served) == 2  # both workers answered
    # A keep-alive connection opened before the renewal.
    kept = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=pki.context(reporting),
                                                                limit=1))
    try:
        assert await _get(kept, f"{url}/api/companies/7/employees") == 200
        assert served_on(kept) == der(first)
        renewed = pki.serve("renewed")
        proxy.process.send_signal(signal.SIGHUP)
        await until(lambda: len(_reloads(proxy)) >= 2, timeout=20)
        assert {line["result"] for line in _reloads(proxy)} == {"applied"}
        assert {line["worker"] for line in _reloads(proxy)} == served
        for _ in range(10):  # whichever worker accepts it
            assert await _served(pki, url, reporting) == der(renewed)
        assert await _get(kept, f"{url}/api/companies/7/employees") == 200
        assert served_on(kept) == der(first)  # the same connection, its certificate
    finally:
        await kept.close()
    assert await proxy.stop() == 0


async def test_the_reload_command_renews_the_certificate_over_https(
    slow_upstream: SlowUpstream, tmp_path: Path, processes: list[ProxyProcess],
) -> None:
    pki = Pki(tmp_path / "tls")
    pki.serve()
    port = free_port()
    config = await _tls_config(
        tmp_path, slow_upstream.url, port=port,
        server='tls_cert = "file:tls/proxy.pem"\ntls_key = "file:tls/proxy.key"')
    proxy = await start_proxy(config)
    processes.append(proxy)
    await proxy.wait_listening()
    renewed = pki.serve("renewed")
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "proxy", "reload", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env=dict(os.environ))
    assert (done.returncode, done.stdout.strip()) == (
        0, "reloaded: server.tls_cert, server.tls_key"), done.stderr
    assert await _served(pki, f"https://127.0.0.1:{port}") == der(renewed)
    # A certificate broken on disk: the reload is refused, the proxy serves on.
    pki.cert.write_text("broken\n")
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "proxy", "reload", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env=dict(os.environ))
    assert done.returncode == 2  # the command reads the file first, as check-config does
    assert "server.tls_cert: " in done.stderr
    assert await _served(pki, f"https://127.0.0.1:{port}") == der(renewed)
    assert await proxy.stop() == 0


def test_check_config_names_a_bad_certificate_or_key(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "tls")
    pki.serve()
    other = pki.ca.issue_cert("127.0.0.1")
    (tmp_path / "tls" / "other.key").write_bytes(other.private_key_pem.bytes())
    (tmp_path / "tls" / "junk.pem").write_text("junk\n")
    base = ('[connections.nmbrs]\nprovider = "nmbrs"\nclient_id = "a"\n'
            'client_secret = "b"\nsubscription_key = "c"\n'
            'redirect_uri = "http://localhost:8080/_proxy/callback"\n'
            'scopes = ["offline_access"]\n')
    cases = [
        ('tls_cert = "tls/proxy.pem"\ntls_key = "tls/proxy.key"', 0, None),
        ('tls_cert = "tls/junk.pem"\ntls_key = "tls/proxy.key"', 2,
         "server.tls_cert: "),
        ('tls_cert = "tls/proxy.pem"\ntls_key = "tls/other.key"', 2,
         "server.tls_key: "),
        (('tls_cert = "tls/proxy.pem"\ntls_key = "tls/proxy.key"\n'
         'tls_client_ca = "tls/missing.pem"'), 2, "server.tls_client_ca: cannot read"),
    ]
    for server, code, named in cases:
        config = tmp_path / "config.toml"
        config.write_text(f"[server]\n{server}\n{base}")
        done = subprocess.run(
            [sys.executable, "-m", "proxy", "check-config", "--config", str(config)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == code, done.stderr
        if named is not None:
            assert f"  - {named}" in done.stderr, done.stderr


@pytest.mark.parametrize(("host", "url", "verified"), [
    ("127.0.0.1", None, False),
    ("0.0.0.0", None, False),
    ("::", None, False),
    ("127.0.0.1", "https://localhost:8443/_proxy/api/reload", False),
    ("127.0.0.1", "https://proxy.corp.example:8443/_proxy/api/reload", True),
    ("10.0.0.5", None, True),
])
def test_the_reload_command_verifies_the_proxy_beyond_loopback(
    host: str, url: str | None, verified: bool, tmp_path: Path,
) -> None:
    pki = Pki(tmp_path / "tls")
    pki.serve()
    tls = ListenerTls.read(pki.cert, pki.key)
    settings = Settings(server=ServerSettings(host=host, port=8443, tls=tls))
    target = url or reload_url(settings)
    assert target.startswith("https://")
    context = tls_context(settings, target)
    assert context is not None
    assert (context.verify_mode is ssl.CERT_REQUIRED, context.check_hostname) == (
        verified, verified)
    assert tls_context(Settings(), reload_url(Settings())) is None  # plain HTTP
