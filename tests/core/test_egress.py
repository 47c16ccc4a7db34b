"""Which proxy a request goes through: curl's rules for the *_proxy variables and no_proxy."""

from __future__ import annotations

import base64

import pytest

from proxy.core.egress import (
    DIRECT,
    EgressConfigError,
    NoProxy,
    configured_policy,
    parse_proxy_url,
    policy_from_environment,
)
from proxy.core.secret import Secret

# no_proxy, host, port, bypassed
NO_PROXY_CASES = [
    ("", "api.example.com", 443, False),
    ("*", "api.example.com", 443, True),
    (" * ", "10.1.2.3", 80, True),
    ("example.com", "example.com", 443, True),
    ("example.com", "api.example.com", 443, True),
    (".example.com", "api.example.com", 443, True),
    (".example.com", "example.com", 443, True),
    ("example.com", "badexample.com", 443, False),
    ("example.com", "example.com.evil.test", 443, False),
    ("EXAMPLE.com", "Api.Example.COM", 443, True),
    ("example.com.", "api.example.com", 443, True),
    ("example.com", "api.example.com.", 443, True),
    ("localhost,127.0.0.1", "127.0.0.1", 8080, True),
    ("localhost, 127.0.0.1", "localhost", 8080, True),
    ("10.0.0.0/8", "10.20.30.40", 443, True),
    ("10.0.0.0/8", "11.0.0.1", 443, False),
    ("10.0.0.0/8", "ten.example", 443, False),  # names are not resolved
    ("192.168.1.7", "192.168.1.7", 443, True),
    ("192.168.1.7", "192.168.1.8", 443, False),
    ("::1", "::1", 443, True),
    ("[::1]", "[::1]", 443, True),
    ("fd00::/8", "fd00::17", 443, True),
    ("[fd00::1]:8443", "fd00::1", 8443, True),
    ("[fd00::1]:8443", "fd00::1", 443, False),
    ("example.com:8443", "api.example.com", 8443, True),
    ("example.com:8443", "api.example.com", 443, False),
    ("10.0.0.1:80", "10.0.0.1", 80, True),
    ("10.0.0.1:80", "10.0.0.1", 443, False),
    ("other.test,,  ,example.com", "example.com", 443, True),
]


@pytest.mark.parametrize(("no_proxy", "host", "port", "bypassed"), NO_PROXY_CASES)
def test_no_proxy_follows_curl(no_proxy: str, host: str, port: int, bypassed: bool) -> None:
    assert NoProxy.parse(no_proxy).matches(host, port) is bypassed


@pytest.mark.parametrize("entry", ["example.com:http", "example.com:0", "example.com:70000",
                                   "a/b/c", "."])
def test_a_broken_no_proxy_entry_is_refused(entry: str) -> None:
    with pytest.raises(EgressConfigError, match="no_proxy"):
        NoProxy.parse(entry)


@pytest.mark.parametrize(("url", "host", "port", "credentials"), [
    ("http://proxy.corp:3128", "proxy.corp", 3128, None),
    ("http://proxy.corp", "proxy.corp", 80, None),
    ("proxy.corp:8080", "proxy.corp", 8080, None),
    ("http://user:p%40ss@proxy.corp:3128", "proxy.corp", 3128, "user:p@ss"),
    ("http://user@proxy.corp:3128/", "proxy.corp", 3128, "user:"),
    ("http://[fd00::3]:3128", "fd00::3", 3128, None),
])
def test_proxy_urls(url: str, host: str, port: int, credentials: str | None) -> None:
    proxy = parse_proxy_url(url)
    assert (proxy.host, proxy.port) == (host, port)
    if credentials is None:
        assert proxy.authorization is None
    else:
        assert proxy.authorization == Secret(
            "Basic " + base64.b64encode(credentials.encode()).decode())
    assert "@" not in proxy.shown
    assert "pass" not in repr(proxy)


@pytest.mark.parametrize(("url", "why"), [
    ("https://proxy.corp:3128", "only http://"),
    ("socks5://proxy.corp:1080", "only http://"),
    ("http://proxy.corp:3128/path", "no path"),
    ("http://:3128", "no host"),
    ("http://proxy.corp:port", "not a proxy URL"),
])
def test_unusable_proxy_urls_are_refused_without_their_secret(url: str, why: str) -> None:
    with pytest.raises(EgressConfigError, match=why) as caught:
        parse_proxy_url(url.replace("://", "://user:hunter2@"))
    assert "hunter2" not in str(caught.value)


# environ, scheme, host, chosen proxy (shown) or None
ENV_CASES = [
    ({}, "https", "api.example.com", None),
    ({"HTTPS_PROXY": "http://up:3128"}, "https", "api.example.com", "http://up:3128"),
    ({"https_proxy": "http://low:3128", "HTTPS_PROXY": "http://up:3128"}, "https", "a.test",
     "http://low:3128"),
    ({"HTTPS_PROXY": "http://up:3128"}, "http", "api.example.com", None),
    ({"http_proxy": "http://plain:3128"}, "http", "api.example.com", "http://plain:3128"),
    ({"HTTP_PROXY": "http://plain:3128"}, "http", "api.example.com", "http://plain:3128"),
    ({"ALL_PROXY": "http://all:3128"}, "https", "api.example.com", "http://all:3128"),
    ({"all_proxy": "http://all:3128", "https_proxy": "http://s:1"}, "https", "a.test",
     "http://s:1"),
    ({"https_proxy": "http://p:3128", "no_proxy": ".example.com"}, "https", "api.example.com",
     None),
    ({"https_proxy": "http://p:3128", "NO_PROXY": "*"}, "https", "api.example.com", None),
    ({"https_proxy": "http://p:3128", "NO_PROXY": "other.test"}, "https", "api.example.com",
     "http://p:3128"),
    ({"https_proxy": ""}, "https", "api.example.com", None),
]


@pytest.mark.parametrize(("environ", "scheme", "host", "chosen"), ENV_CASES)
def test_the_environment(environ: dict[str, str], scheme: str, host: str,
                         chosen: str | None) -> None:
    proxy = policy_from_environment(environ).proxy_for(scheme, host, 443)
    assert (None if proxy is None else proxy.shown) == chosen


def test_the_configuration_wins_over_the_environment() -> None:
    environ = {"https_proxy": "http://env:3128", "no_proxy": "*"}
    assert configured_policy("none", environ) == DIRECT
    configured = configured_policy("http://corp:8080", environ)
    chosen = configured.proxy_for("https", "api.example.com", 443)
    assert chosen is not None
    assert chosen.shown == "http://corp:8080"  # no_proxy belongs to the environment's proxy
    assert configured.source == "config"
    from_env = configured_policy(None, {"https_proxy": "http://env:3128"})
    assert from_env.source == "environment"


def test_a_bad_variable_is_named() -> None:
    with pytest.raises(EgressConfigError, match=r"\$https_proxy: only http://"):
        policy_from_environment({"HTTPS_PROXY": "https://p:1"})
