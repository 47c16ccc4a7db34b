"""[upstream] and a connection's own proxy, ca_mode, ca_file, client_cert and client_key:
which wins, what the environment adds, and every unusable value named by its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme

from proxy.config import parse
from proxy.config.outbound import OUTBOUND_KEYS
from proxy.core.egress import DIRECT
from proxy.core.tls import OutboundTls
from tests.config.helpers import C, config, conn, problems


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, str]:
    """A CA bundle, a client certificate and its key, as files beside the config."""
    ca = trustme.CA()
    client = ca.issue_cert("legacy-app.example")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    (tmp_path / "junk.pem").write_text("not a certificate\n", encoding="utf-8")
    return {"ca": "ca.pem", "cert": "client.pem", "key": "client.key", "junk": "junk.pem"}


def _chosen(data: dict[str, Any], tmp_path: Path, environ: dict[str, str]) -> str | None:
    """The proxy the connection's API calls go through."""
    connection = conn(parse(data, base_dir=tmp_path, environ=environ))
    host = urlsplit(connection.upstream).hostname
    proxy = connection.egress.proxy_for("https", host, 443)
    return None if proxy is None else proxy.shown


ENV = {"HTTPS_PROXY": "http://env-proxy:3128", "NO_PROXY": ".internal"}


@pytest.mark.parametrize(("edits", "environ", "chosen"), [
    pytest.param({}, {}, None, id="nothing-set"),
    pytest.param({}, ENV, "http://env-proxy:3128", id="environment"),
    pytest.param({f"{C}.upstream": "https://api.internal"}, ENV, None, id="no_proxy"),
    pytest.param({"upstream.proxy": "http://corp:8080"}, ENV, "http://corp:8080",
                 id="global-wins-over-env"),
    pytest.param({"upstream.proxy": "none"}, ENV, None, id="global-none"),
    pytest.param({"upstream.proxy": "http://corp:8080", f"{C}.proxy": "none"}, ENV, None,
                 id="connection-none-wins"),
    pytest.param({"upstream.proxy": "none", f"{C}.proxy": "http://own:1"}, {},
                 "http://own:1", id="connection-wins"),
    pytest.param({f"{C}.proxy": "env:CORP_PROXY"}, {"CORP_PROXY": "http://u:p@ref:3128"},
                 "http://ref:3128", id="env-reference"),
])
def test_which_proxy(edits: dict[str, object], environ: dict[str, str], chosen: str | None,
                     tmp_path: Path) -> None:
    assert _chosen(config(edits), tmp_path, environ) == chosen


def test_the_proxy_password_is_a_secret(tmp_path: Path) -> None:
    settings = parse(config({f"{C}.proxy": "http://legacy:hunter2@corp:8080"}),
                     base_dir=tmp_path, environ={})
    assert "hunter2" not in repr(settings)
    proxy = conn(settings).egress.https
    assert proxy is not None
    assert proxy.authorization is not None


def test_the_tls_files(pem: dict[str, str], tmp_path: Path) -> None:
    settings = parse(config({"upstream.ca_file": pem["ca"], f"{C}.client_cert": pem["cert"],
                             f"{C}.client_key": pem["key"]}), base_dir=tmp_path, environ={})
    assert conn(settings).tls == OutboundTls(
        ca_mode="both", ca_file=tmp_path / "ca.pem", client_cert=tmp_path / "client.pem",
        client_key=tmp_path / "client.key")
    only = parse(config({f"{C}.ca_file": pem["ca"], f"{C}.ca_mode": "file"}),
                 base_dir=tmp_path, environ={})
    assert conn(only).tls.ca_mode == "file"
    assert conn(parse(config(), base_dir=tmp_path, environ={})).tls.is_default
    assert conn(parse(config(), base_dir=tmp_path, environ={})).egress == DIRECT


@pytest.mark.parametrize(("edits", "expected"), [
    pytest.param({f"{C}.proxy": "https://corp:8443"}, f"{C}.proxy: only http:// proxies",
                 id="https-proxy"),
    pytest.param({"upstream.proxy": "socks5://corp:1080"}, f"{C}.proxy: only http://",
                 id="global-socks"),
    pytest.param({f"{C}.proxy": "http://corp:8080/path"}, f"{C}.proxy: a proxy URL has no path",
                 id="path"),
    pytest.param({f"{C}.ca_mode": "file"}, f'{C}.ca_mode: ca_mode = "file" needs ca_file',
                 id="file-without-bundle"),
    pytest.param({f"{C}.ca_mode": "mine"}, f"{C}.ca_mode: must be one of", id="unknown-mode"),
    pytest.param({f"{C}.ca_file": "missing.pem"}, f"{C}.ca_file: ", id="missing-bundle"),
    pytest.param({f"{C}.ca_file": "junk.pem"}, f"{C}.ca_file: cannot use", id="junk-bundle"),
    pytest.param({f"{C}.ca_file": "ca.pem", f"{C}.ca_mode": "system"},
                 f'{C}.ca_file: has no effect with ca_mode = "system"', id="ignored-bundle"),
    pytest.param({f"{C}.client_cert": "junk.pem"}, f"{C}.client_cert: cannot use",
                 id="junk-cert"),
    pytest.param({f"{C}.client_cert": "client.pem"}, f"{C}.client_cert: cannot use",
                 id="cert-without-key"),
    pytest.param({f"{C}.client_key": "client.key"}, f"{C}.client_key: needs client_cert",
                 id="key-without-cert"),
    pytest.param({"upstream.proxies": "x"}, "upstream.proxies: unknown key", id="unknown-key"),
])
def test_unusable_values_are_named(edits: dict[str, object], expected: str,
                                   pem: dict[str, str], tmp_path: Path) -> None:
    found = problems(config(edits), tmp_path)
    assert any(problem.startswith(expected) for problem in found), found


def test_a_broken_environment_variable_is_named(tmp_path: Path) -> None:
    found = problems(config(), tmp_path,
                     {"https_proxy": "https://corp:8443"})
    assert any("$https_proxy: only http://" in problem for problem in found), found


def test_the_example_shows_every_outbound_key() -> None:
    text = (Path(__file__).resolve().parents[2] / "config.example.toml").read_text("utf-8")
    block = text[text.index("# [upstream]\n"):text.index("[admin]")]
    shown = {line.removeprefix("# ").split(" = ")[0] for line in block.splitlines()
             if " = " in line}
    assert shown == set(OUTBOUND_KEYS)
