"""Configuration: defaults, the example, every rule with its exact message, no leaked secrets."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from proxy.config import CacheSettings, ConfigError, RetrySettings, StoreSettings, load, parse
from proxy.config.connections import _CONNECTION_KEYS
from proxy.core.secret import Secret
from tests.config.helpers import CONNECTION, DELETE, EXAMPLE, C, config, conn, problems
from tests.conftest import cache_settings


def test_minimal_config_takes_the_defaults(tmp_path: Path) -> None:
    settings = parse(config(), base_dir=tmp_path, environ={})

    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.store.backend == "file"
    assert settings.store.path == tmp_path / "state" / "tokens.json"
    assert settings.session.secret is None
    (connection,) = settings.connections
    assert connection.name == "nmbrs"
    assert connection.provider == "nmbrs"
    assert connection.prefix == "/"
    assert connection.upstream == "https://api.nmbrsapp.com"
    assert connection.issuer == "https://identityservice.nmbrs.com"
    assert connection.client_id == "PartnerApp_demo_*$1"
    assert connection.client_secret == Secret("client-secret-value")
    assert connection.subscription_key == Secret("subscription-key-value")
    assert connection.redirect_uri == "http://localhost:8080/_proxy/callback"
    assert connection.scopes == ("offline_access", "company.info.read")
    assert connection.refresh_margin_seconds == 300.0
    assert connection.connect_timeout_seconds == 10.0
    assert connection.read_timeout_seconds == 60.0
    # the quota: no shaping, retries of idempotent requests, no cache
    assert connection.secondary_subscription_keys == ()
    assert connection.rate_per_second is None
    assert connection.burst == 1
    assert connection.max_concurrent is None
    assert connection.max_queue == 100
    assert connection.max_wait_seconds == 10.0
    assert connection.retries == RetrySettings(
        count=2, deadline_seconds=30.0, backoff_seconds=0.5,
        methods=("GET", "HEAD", "PUT", "DELETE", "OPTIONS"), statuses=(429, 502, 503, 504),
    )
    assert connection.cache is None
    assert connection.refresh_token_lifetime_days == 30.0
    assert settings.server.shutdown_grace_seconds == 25.0


def test_the_example_config_parses() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    names = set(re.findall(r"env:([A-Za-z0-9_]+)", text))
    assert {"NMBRS_CLIENT_ID", "NMBRS_CLIENT_SECRET", "NMBRS_SUBSCRIPTION_KEY"} <= names
    environ = {name: f"value-of-{name}" for name in names}

    settings = load(EXAMPLE, environ)

    assert settings.server.host == "127.0.0.1"  # loopback by default
    assert settings.store.path == EXAMPLE.parent / "state" / "tokens.json"
    (connection,) = settings.connections
    assert connection.client_id == "value-of-NMBRS_CLIENT_ID"
    assert connection.client_secret == Secret("value-of-NMBRS_CLIENT_SECRET")
    assert connection.scopes == ("offline_access", "company.info.read", "employee.info.read")
    assert connection.retries == RetrySettings()  # the example shows the defaults
    assert (connection.max_queue, connection.max_wait_seconds) == (100, 10.0)


def test_the_readme_documents_every_connection_key() -> None:
    readme = (EXAMPLE.parent / "README.md").read_text(encoding="utf-8")
    keys = [*_CONNECTION_KEYS, "provider"]
    keys += [f"retries.{f.name}" for f in dataclasses.fields(RetrySettings)]
    keys += [f"cache.{f.name}" for f in dataclasses.fields(CacheSettings)]
    missing = [key for key in keys if f"`connections.NAME.{key}`" not in readme]
    missing = [key for key in missing if key not in {"client_id", "client_secret"}]  # one row
    assert "`connections.NAME.client_id` / `client_secret`" in readme
    assert missing == []


def test_the_commented_out_cache_example_parses(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    start = text.index("# [connections.nmbrs.cache]")
    block = text[start:text.index("# --- Access control", start)]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines()
                            if re.match(r"# (\[connections|[a-z_]+ = )", line))
    data = tomllib.loads(uncommented)
    cache = data["connections"]["nmbrs"]["cache"]
    settings = parse(config({f"{C}.cache": cache}), base_dir=tmp_path, environ={})
    assert conn(settings).cache == cache_settings("/api/companies", "/api/companies/*/hourcodes"
    )


def test_the_example_documents_every_key() -> None:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    text = EXAMPLE.read_text(encoding="utf-8")
    connection_keys = set(data["connections"]["nmbrs"])
    assert connection_keys == {
        "provider", "prefix", "upstream", "subscription_key", "issuer", "client_id",
        "client_secret", "redirect_uri", "scopes", "refresh_margin_seconds",
        "connect_timeout_seconds", "read_timeout_seconds", "max_queue", "max_wait_seconds",
        "retries", "refresh_token_lifetime_days",
    }  # fmt: skip
    assert set(data["connections"]["nmbrs"]["retries"]) == {
        "count", "deadline_seconds", "backoff_seconds", "methods", "statuses",
    }  # fmt: skip
    for optional in ("rate_per_second", "burst", "max_concurrent", "[connections.nmbrs.cache]",
                     "paths", "ttl_seconds", "max_entries", "max_body_bytes"):
        assert f"# {optional}" in text, optional  # documented, shown commented out
    assert set(data["server"]) == {"host", "port", "allow_anonymous", "shutdown_grace_seconds"}
    assert '# secret = "env:NMBRS_PROXY_SESSION_SECRET"' in text  # optional, shown commented out
    for field in dataclasses.fields(StoreSettings):  # set, or shown commented out
        assert re.search(rf"^(# )?{field.name} = ", text, re.MULTILINE), field.name


# --- valid values and how they are normalised --------------------------------------------------


@pytest.mark.parametrize(
    ("edits", "read", "expected"),
    [
        pytest.param({"server.port": 0}, lambda s: s.server.port, 0, id="port-0-any-free"),
        pytest.param({"server.host": "::1"}, lambda s: s.server.host, "::1", id="host"),
        pytest.param(
            {"store.path": "/var/lib/proxy/t.json"},
            lambda s: s.store.path,
            Path("/var/lib/proxy/t.json"),
            id="store-path-absolute",
        ),
        pytest.param(
            {"session.secret": "0123456789abcdef"},
            lambda s: s.session.secret,
            Secret("0123456789abcdef"),
            id="session-secret-16-chars",
        ),
        pytest.param(
            {f"{C}.prefix": "/acme"}, lambda s: conn(s).prefix, "/acme/", id="prefix-slash"
        ),
        pytest.param({f"{C}.prefix": "/a/b/"}, lambda s: conn(s).prefix, "/a/b/", id="prefix-kept"),
        pytest.param(
            {f"{C}.upstream": "https://x.test/v1/"},
            lambda s: conn(s).upstream,
            "https://x.test/v1",
            id="upstream-base-path",
        ),
        pytest.param(
            {f"{C}.upstream": "http://127.0.0.1:9000/"},
            lambda s: conn(s).upstream,
            "http://127.0.0.1:9000",
            id="upstream-trailing-slash",
        ),
        pytest.param(
            {f"{C}.issuer": "https://id.test/"},
            lambda s: conn(s).issuer,
            "https://id.test",
            id="issuer-trailing-slash",
        ),
        pytest.param(
            {f"{C}.redirect_uri": "https://app.test/oauth/cb?x=1"},
            lambda s: conn(s).redirect_uri,
            "https://app.test/oauth/cb?x=1",
            id="redirect-outside-proxy-with-query",
        ),
        pytest.param(
            {f"{C}.scopes": ["a", "b", "a", "c", "b"]},
            lambda s: conn(s).scopes,
            ("a", "b", "c"),
            id="scopes-deduplicated-in-order",
        ),
        pytest.param(
            {f"{C}.refresh_margin_seconds": 0},
            lambda s: conn(s).refresh_margin_seconds,
            0.0,
            id="margin-zero",
        ),
        pytest.param(
            {f"{C}.read_timeout_seconds": 2.5},
            lambda s: conn(s).read_timeout_seconds,
            2.5,
            id="timeout-float",
        ),
        pytest.param(
            {f"{C}.connect_timeout_seconds": 3},
            lambda s: conn(s).connect_timeout_seconds,
            3.0,
            id="timeout-int-becomes-float",
        ),
        pytest.param(
            {f"{C}.subscription_key": ["primary", "secondary", "primary"]},
            lambda s: (conn(s).subscription_key, conn(s).secondary_subscription_keys,
                       conn(s).subscription_keys),
            (Secret("primary"), (Secret("secondary"),), (Secret("primary"), Secret("secondary"))),
            id="keys-list-deduplicated",
        ),
        pytest.param(
            {f"{C}.subscription_key": ["only"]},
            lambda s: conn(s).subscription_keys,
            (Secret("only"),),
            id="keys-list-of-one",
        ),
        pytest.param(
            {f"{C}.rate_per_second": 2.5, f"{C}.burst": 5, f"{C}.max_concurrent": 4,
             f"{C}.max_queue": 0, f"{C}.max_wait_seconds": 0},
            lambda s: (conn(s).rate_per_second, conn(s).burst, conn(s).max_concurrent,
                       conn(s).max_queue, conn(s).max_wait_seconds),
            (2.5, 5, 4, 0, 0.0),
            id="shaping",
        ),
        pytest.param(
            {f"{C}.retries": {"count": 0}},
            lambda s: conn(s).retries,
            RetrySettings(count=0),
            id="retries-off",
        ),
        pytest.param(
            {f"{C}.retries": {"count": 5, "deadline_seconds": 60, "backoff_seconds": 0.1,
                              "methods": ["GET", "POST", "GET"], "statuses": [503, 500]}},
            lambda s: conn(s).retries,
            RetrySettings(count=5, deadline_seconds=60.0, backoff_seconds=0.1,
                          methods=("GET", "POST"), statuses=(503, 500)),
            id="retries-all",
        ),
        pytest.param(
            {f"{C}.cache": {"paths": ["/api/companies", "/api/companies/*/hourcodes"]}},
            lambda s: conn(s).cache,
            cache_settings("/api/companies", "/api/companies/*/hourcodes"),
            id="cache-defaults",
        ),
        pytest.param(
            {f"{C}.cache": {"paths": ["/**"], "ttl_seconds": 5, "max_entries": 10,
                            "max_body_bytes": 4096}},
            lambda s: conn(s).cache,
            cache_settings("/**", ttl_seconds=5.0, max_entries=10, max_body_bytes=4096),
            id="cache-all",
        ),
        pytest.param(
            {"server.ops_port": 9090, "server.ops_host": "0.0.0.0"},
            lambda s: (s.server.ops_host, s.server.ops_port),
            ("0.0.0.0", 9090),
            id="ops-listener",
        ),
        pytest.param(
            {"server.shutdown_grace_seconds": 0},
            lambda s: s.server.shutdown_grace_seconds,
            0.0,
            id="grace-zero-stops-at-once",
        ),
        pytest.param(
            {f"{C}.refresh_token_lifetime_days": 14.5},
            lambda s: conn(s).refresh_token_lifetime_days,
            14.5,
            id="refresh-token-lifetime",
        ),
        pytest.param(
            {"connections.acme": {**CONNECTION, "prefix": "/acme/"}},
            lambda s: [(c.name, c.prefix) for c in s.connections],
            [("nmbrs", "/"), ("acme", "/acme/")],
            id="two-connections",
        ),
    ],
)
def test_valid_values(
    tmp_path: Path, edits: dict[str, object], read: Any, expected: object
) -> None:
    assert read(parse(config(edits), base_dir=tmp_path, environ={})) == expected


# --- every rule, with its exact message ----------------------------------------------------------

_PROVIDER_NAMES = "'nmbrs', 'client_credentials', 'nomba', 'nitro'"
_NAME_RULE = "the name must be 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"
_ONLY_CALLBACK = "path must not be under /_proxy/ (the proxy's own pages), except /_proxy/callback"

RULES = [
    # top level
    ({"sever": {}}, ["sever: unknown key (did you mean 'server'?)"], "top-unknown-suggested"),
    ({"zzz": 1}, ["zzz: unknown key"], "top-unknown"),
    ({"my key": 1}, ['"my key": unknown key'], "top-unknown-quoted"),
    # server
    ({"server": "x"}, ["server: expected a table, got a string"], "server-not-table"),
    ({"server.hots": "h"}, ["server.hots: unknown key (did you mean 'host'?)"], "server-unknown"),
    ({"server.host": ""}, ["server.host: must not be empty"], "host-empty"),
    ({"server.host": 1}, ["server.host: expected a string, got an integer"], "host-int"),
    ({"server.port": "8080"}, ["server.port: expected an integer, got a string"], "port-str"),
    ({"server.port": True}, ["server.port: expected an integer, got a boolean"], "port-bool"),
    ({"server.port": 8080.0}, ["server.port: expected an integer, got a float"], "port-float"),
    ({"server.port": -1}, ["server.port: must be between 0 and 65535"], "port-negative"),
    ({"server.port": 65536}, ["server.port: must be between 0 and 65535"], "port-too-big"),
    # store
    (
        {"store.backend": "memcached"},
        ["store.backend: must be one of: 'file', 'redis'"],
        "backend-unknown",
    ),
    ({"store.path": 5}, ["store.path: expected a string, got an integer"], "store-path-int"),
    ({"store.path": ""}, ["store.path: must not be empty"], "store-path-empty"),
    ({"store.pth": "x"}, ["store.pth: unknown key (did you mean 'path'?)"], "store-unknown"),
    # session
    (
        {"session.secret": "short"},
        ["session.secret: must be at least 16 characters"],
        "secret-short",
    ),
    ({"session.secret": 1}, ["session.secret: expected a string, got an integer"], "secret-int"),
    ({"session.key": "k"}, ["session.key: unknown key"], "session-unknown"),
    # connections
    ({"connections": DELETE}, ["connections: at least one connection is required"], "none"),
    ({"connections": {}}, ["connections: at least one connection is required"], "empty"),
    ({"connections": "x"}, ["connections: expected a table, got a string"], "not-table"),
    ({"connections.nmbrs": 1}, [f"{C}: expected a table, got an integer"], "entry-not-table"),
    (
        {"connections": {"has space": CONNECTION}},
        [f'connections."has space": {_NAME_RULE}'],
        "name",
    ),
    (
        {"connections": {"a" * 65: CONNECTION}},
        [f"connections.{'a' * 65}: {_NAME_RULE}"],
        "name-long",
    ),
    ({f"{C}.provider": DELETE}, [f"{C}.provider: required"], "provider-missing"),
    (
        {f"{C}.provider": "acme"},
        [f"{C}.provider: must be one of: {_PROVIDER_NAMES}"],
        "provider-unknown",
    ),
    (
        {f"{C}.client_secrt": "x"},
        [f"{C}.client_secrt: unknown key (did you mean 'client_secret'?)"],
        "connection-unknown",
    ),
    ({f"{C}.client_id": ""}, [f"{C}.client_id: must not be empty"], "client-id-empty"),
    ({f"{C}.client_id": 5}, [f"{C}.client_id: expected a string, got an integer"], "client-id-int"),
    (
        {f"{C}.client_secret": ["x"]},
        [f"{C}.client_secret: expected a string, got an array"],
        "client-secret-array",
    ),
    (
        {f"{C}.subscription_key": {"a": 1}},
        [f"{C}.subscription_key: expected a string or an array of strings, got a table"],
        "subscription-key-table",
    ),
    (
        {f"{C}.client_id": date(2024, 1, 1)},
        [f"{C}.client_id: expected a string, got a date or time"],
        "client-id-date",
    ),
    # prefix
    ({f"{C}.prefix": "api"}, [f"{C}.prefix: must start with '/'"], "prefix-relative"),
    ({f"{C}.prefix": "/a/../b"}, [f"{C}.prefix: must not contain '..'"], "prefix-dotdot"),
    ({f"{C}.prefix": "/a//b"}, [f"{C}.prefix: must not contain '//'"], "prefix-double-slash"),
    ({f"{C}.prefix": "/a?b"}, [f"{C}.prefix: must not contain '?'"], "prefix-query"),
    ({f"{C}.prefix": "/a#b"}, [f"{C}.prefix: must not contain '#'"], "prefix-fragment"),
    ({f"{C}.prefix": "/a%2F"}, [f"{C}.prefix: must not contain '%'"], "prefix-percent"),
    ({f"{C}.prefix": "/a b"}, [f"{C}.prefix: must not contain whitespace"], "prefix-space"),
    (
        {f"{C}.prefix": "/a?#\t"},
        [f"{C}.prefix: must not contain '?', '#', whitespace"],
        "prefix-many",
    ),
    (
        {"connections.acme": {**CONNECTION, "prefix": "/"}},
        ["connections.acme.prefix: '/' is already served by connection 'nmbrs'"],
        "prefix-duplicate",
    ),
    (
        {f"{C}.prefix": "/acme/", "connections.acme": {**CONNECTION, "prefix": "/acme"}},
        ["connections.acme.prefix: '/acme/' is already served by connection 'nmbrs'"],
        "prefix-duplicate-after-normalising",
    ),
    (
        {f"{C}.prefix": "bad", "connections.acme": CONNECTION},
        [f"{C}.prefix: must start with '/'"],
        "bad-prefix-is-not-a-duplicate",
    ),
    # upstream and issuer
    (
        {f"{C}.upstream": "ftp://x.test"},
        [f"{C}.upstream: must be an absolute http or https URL"],
        "upstream-scheme",
    ),
    (
        {f"{C}.upstream": "api.nmbrsapp.com"},
        [f"{C}.upstream: must be an absolute http or https URL"],
        "upstream-relative",
    ),
    ({f"{C}.upstream": "https://"}, [f"{C}.upstream: must include a host"], "upstream-no-host"),
    (
        {f"{C}.upstream": "https://x.test/?a=1"},
        [f"{C}.upstream: must not include a query"],
        "upstream-query",
    ),
    (
        {f"{C}.upstream": "https://x.test/#top"},
        [f"{C}.upstream: must not include a fragment"],
        "upstream-fragment",
    ),
    (
        {f"{C}.upstream": "https://user:pw@x.test"},
        [f"{C}.upstream: must not include user info"],
        "upstream-userinfo",
    ),
    (
        {f"{C}.upstream": "https://x.test:99999"},
        [f"{C}.upstream: is not a valid URL"],
        "upstream-bad-port",
    ),
    ({f"{C}.upstream": "http://[::1"}, [f"{C}.upstream: is not a valid URL"], "upstream-bad-ipv6"),
    (
        {f"{C}.upstream": "https://x .test"},
        [f"{C}.upstream: must not contain whitespace"],
        "upstream-space",
    ),
    (
        {f"{C}.issuer": "https://id.test?x"},
        [f"{C}.issuer: must not include a query"],
        "issuer-query",
    ),
    (
        {f"{C}.issuer": "//id.test"},
        [f"{C}.issuer: must be an absolute http or https URL"],
        "issuer-rel",
    ),
    # redirect_uri
    (
        {f"{C}.redirect_uri": "http://localhost:8080"},
        [f"{C}.redirect_uri: must include a path (e.g. /_proxy/callback)"],
        "redirect-no-path",
    ),
    (
        {f"{C}.redirect_uri": "/_proxy/callback"},
        [f"{C}.redirect_uri: must be an absolute http or https URL"],
        "redirect-relative",
    ),
    (
        {f"{C}.redirect_uri": "http://localhost/_proxy/other"},
        [f"{C}.redirect_uri: {_ONLY_CALLBACK}"],
        "redirect-reserved-path",
    ),
    (
        {f"{C}.redirect_uri": "http://localhost/_proxy/callback/"},
        [f"{C}.redirect_uri: {_ONLY_CALLBACK}"],
        "redirect-callback-slash",
    ),
    (
        {f"{C}.redirect_uri": "http://localhost/cb#x"},
        [f"{C}.redirect_uri: must not include a fragment"],
        "redirect-fragment",
    ),
    # scopes
    (
        {f"{C}.scopes": "offline_access"},
        [f"{C}.scopes: expected an array of strings, got a string"],
        "scopes-string",
    ),
    ({f"{C}.scopes": []}, [f"{C}.scopes: must not be empty"], "scopes-empty"),
    ({f"{C}.scopes": ["a", ""]}, [f"{C}.scopes[1]: must not be empty"], "scope-empty"),
    ({f"{C}.scopes": ["a b"]}, [f"{C}.scopes[0]: must not contain whitespace"], "scope-space"),
    (
        {f"{C}.scopes": [1, "x", True]},
        [
            f"{C}.scopes[0]: expected a string, got an integer",
            f"{C}.scopes[2]: expected a string, got a boolean",
        ],
        "scopes-types",
    ),
    (
        {f"{C}.scopes": ["env:NOPE"]},
        [f"{C}.scopes[0]: environment variable NOPE is not set"],
        "scope-reference",
    ),
    # numbers
    (
        {f"{C}.refresh_margin_seconds": -1},
        [f"{C}.refresh_margin_seconds: must be at least 0"],
        "margin-negative",
    ),
    (
        {f"{C}.refresh_margin_seconds": True},
        [f"{C}.refresh_margin_seconds: expected a number, got a boolean"],
        "margin-bool",
    ),
    (
        {f"{C}.refresh_margin_seconds": "300"},
        [f"{C}.refresh_margin_seconds: expected a number, got a string"],
        "margin-string",
    ),
    (
        {f"{C}.refresh_margin_seconds": float("nan")},
        [f"{C}.refresh_margin_seconds: must be a finite number"],
        "margin-nan",
    ),
    (
        {f"{C}.connect_timeout_seconds": 0},
        [f"{C}.connect_timeout_seconds: must be greater than 0"],
        "connect-timeout-zero",
    ),
    (
        {f"{C}.read_timeout_seconds": -5},
        [f"{C}.read_timeout_seconds: must be greater than 0"],
        "read-timeout-negative",
    ),
    (
        {f"{C}.read_timeout_seconds": float("inf")},
        [f"{C}.read_timeout_seconds: must be a finite number"],
        "read-timeout-inf",
    ),
    # subscription keys
    ({f"{C}.subscription_key": []}, [f"{C}.subscription_key: must not be empty"], "keys-empty"),
    (
        {f"{C}.subscription_key": ["a", 5, ""]},
        [
            f"{C}.subscription_key[1]: expected a string, got an integer",
            f"{C}.subscription_key[2]: must not be empty",
        ],
        "keys-items",
    ),
    (
        {f"{C}.subscription_key": ["env:NOPE"]},
        [f"{C}.subscription_key[0]: environment variable NOPE is not set"],
        "keys-reference",
    ),
    # shaping
    (
        {f"{C}.rate_per_second": 0},
        [f"{C}.rate_per_second: must be greater than 0"],
        "rate-zero",
    ),
    (
        {f"{C}.rate_per_second": "5"},
        [f"{C}.rate_per_second: expected a number, got a string"],
        "rate-string",
    ),
    ({f"{C}.rate_per_second": 5, f"{C}.burst": 0}, [f"{C}.burst: must be at least 1"], "burst-0"),
    ({f"{C}.rate_per_second": 5, f"{C}.burst": 1.5},
     [f"{C}.burst: expected an integer, got a float"], "burst-float"),
    ({f"{C}.burst": 3}, [f"{C}.burst: has no effect without rate_per_second"], "burst-alone"),
    (
        {f"{C}.rate_per_second": -1, f"{C}.burst": 3},
        [f"{C}.rate_per_second: must be greater than 0"],
        "burst-with-bad-rate-says-nothing-more",
    ),
    ({f"{C}.max_concurrent": 0}, [f"{C}.max_concurrent: must be at least 1"], "concurrent-0"),
    ({f"{C}.max_queue": -1}, [f"{C}.max_queue: must be at least 0"], "queue-negative"),
    (
        {f"{C}.max_wait_seconds": -1},
        [f"{C}.max_wait_seconds: must be at least 0"],
        "max-wait-negative",
    ),
    # retries
    ({f"{C}.retries": 3}, [f"{C}.retries: expected a table, got an integer"], "retries-int"),
    ({f"{C}.retries.count": -1}, [f"{C}.retries.count: must be at least 0"], "retries-count"),
    (
        {f"{C}.retries.deadline_seconds": 0},
        [f"{C}.retries.deadline_seconds: must be greater than 0"],
        "retries-deadline",
    ),
    (
        {f"{C}.retries.backoff_seconds": 0},
        [f"{C}.retries.backoff_seconds: must be greater than 0"],
        "retries-backoff",
    ),
    (
        {f"{C}.retries.methods": ["GET", "get", 1, "*"]},
        [
            f"{C}.retries.methods[1]: must be an HTTP method in capitals (e.g. 'GET') or '*'",
            f"{C}.retries.methods[2]: expected a string, got an integer",
            (f"{C}.retries.methods[3]: name the methods to retry; a repeated POST may do its "
             "work twice"),
        ],
        "retries-methods",
    ),
    (
        {f"{C}.retries.statuses": [429, 404, 600, "503"]},
        [
            f"{C}.retries.statuses[1]: must be 429 or a 5xx status",
            f"{C}.retries.statuses[2]: must be 429 or a 5xx status",
            f"{C}.retries.statuses[3]: expected an integer, got a string",
        ],
        "retries-statuses",
    ),
    (
        {f"{C}.retries.tries": 2},
        [f"{C}.retries.tries: unknown key"],
        "retries-unknown",
    ),
    # cache
    ({f"{C}.cache": True}, [f"{C}.cache: expected a table, got a boolean"], "cache-bool"),
    ({f"{C}.cache": {}}, [f"{C}.cache.paths: required"], "cache-no-paths"),
    ({f"{C}.cache.paths": []}, [f"{C}.cache.paths: must not be empty"], "cache-paths-empty"),
    (
        {f"{C}.cache.paths": ["api/x", "/a b", "/x?y", "/a**"]},
        [
            f"{C}.cache.paths[0]: must start with '/'",
            f"{C}.cache.paths[1]: must not contain '?', '#', '%', '\\' or whitespace",
            f"{C}.cache.paths[2]: must not contain '?', '#', '%', '\\' or whitespace",
            f"{C}.cache.paths[3]: '**' must be a whole segment ('/**/')",
        ],
        "cache-paths",
    ),
    (
        {f"{C}.cache": {"paths": ["/**"], "ttl_seconds": 0, "max_entries": 0,
                        "max_body_bytes": 0, "size": 1}},
        [
            f"{C}.cache.ttl_seconds: must be greater than 0",
            f"{C}.cache.max_entries: must be at least 1",
            f"{C}.cache.max_body_bytes: must be at least 1",
            f"{C}.cache.size: unknown key",
        ],
        "cache-numbers",
    ),
    (
        {f"{C}.refresh_token_lifetime_days": 0},
        [f"{C}.refresh_token_lifetime_days: must be greater than 0"],
        "refresh-token-lifetime-zero",
    ),
    (
        {f"{C}.refresh_token_lifetime_days": "30"},
        [f"{C}.refresh_token_lifetime_days: expected a number, got a string"],
        "refresh-token-lifetime-string",
    ),
    (
        {"server.ops_port": 8080},
        ["server.ops_port: must differ from server.port"],
        "ops-port-same-as-port",
    ),
    (
        {"server.ops_port": 70000},
        ["server.ops_port: must be between 0 and 65535"],
        "ops-port-range",
    ),
    (
        {"server.shutdown_grace_seconds": -1},
        ["server.shutdown_grace_seconds: must be at least 0"],
        "grace-negative",
    ),
    (
        {"server.shutdown_grace_seconds": True},
        ["server.shutdown_grace_seconds: expected a number, got a boolean"],
        "grace-bool",
    ),
    (
        {f"{C}.subscription_key": ""},
        [f"{C}.subscription_key: must not be empty"],
        "subscription-key-empty",
    ),
]


@pytest.mark.parametrize(
    ("edits", "expected"), [pytest.param(edits, expected, id=id_) for edits, expected, id_ in RULES]
)
def test_rules(tmp_path: Path, edits: dict[str, object], expected: list[str]) -> None:
    assert problems(config(edits), tmp_path) == tuple(expected)


@pytest.mark.parametrize("key", ["client_id", "client_secret", "redirect_uri", "scopes"])
def test_nmbrs_required_keys(tmp_path: Path, key: str) -> None:
    assert problems(config({f"{C}.{key}": DELETE}), tmp_path) == (f"{C}.{key}: required",)


def test_the_subscription_key_may_come_from_the_page_instead(tmp_path: Path) -> None:
    settings = parse(config({f"{C}.subscription_key": DELETE}), base_dir=tmp_path, environ={})
    assert conn(settings).subscription_key is None


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = {
        "server": {"port": 70000, "hots": "x"},
        "store": {"backend": "memcached"},
        "session": {"secret": "short"},
        "connections": {
            "nmbrs": {**CONNECTION, "prefix": "api", "client_secret": "env:NOPE", "scopes": []},
            "acme": {"provider": "nmbrs", "redirect_uri": "http://x.test"},
            "third": CONNECTION,
            "bad name": 3,
        },
        "extra": True,
    }

    found = problems(data, tmp_path)

    assert sorted(found) == sorted(
        [
            "server.port: must be between 0 and 65535",
            "server.hots: unknown key (did you mean 'host'?)",
            "store.backend: must be one of: 'file', 'redis'",
            "session.secret: must be at least 16 characters",
            f"{C}.client_secret: environment variable NOPE is not set",
            f"{C}.scopes: must not be empty",
            f"{C}.prefix: must start with '/'",
            "connections.acme.client_id: required",
            "connections.acme.client_secret: required",
            "connections.acme.redirect_uri: must include a path (e.g. /_proxy/callback)",
            "connections.acme.scopes: required",
            "connections.third.prefix: '/' is already served by connection 'acme'",
            'connections."bad name": expected a table, got an integer',
            "extra: unknown key",
        ]
    )


# --- secrets --------------------------------------------------------------------------------------

SECRETS = {
    "CLIENT_SECRET": "client-secret-SENTINEL-1",
    "SUBSCRIPTION_KEY": "subscription-SENTINEL-2",
    "SESSION_SECRET": "session-SENTINEL-3-long-enough",
}
SECRET_REFS = {
    f"{C}.client_secret": "env:CLIENT_SECRET",
    f"{C}.subscription_key": "file:subscription.key",
    "session.secret": "env:SESSION_SECRET",
}


def test_secrets_stay_out_of_reprs(tmp_path: Path) -> None:
    (tmp_path / "subscription.key").write_text(SECRETS["SUBSCRIPTION_KEY"] + "\n", encoding="utf-8")

    settings = parse(config(SECRET_REFS), base_dir=tmp_path, environ=SECRETS)

    shown = repr(settings) + str(settings)
    assert "PartnerApp_demo_*$1" in shown  # the client id is not a secret
    for value in SECRETS.values():
        assert value not in shown
    assert conn(settings).client_secret.reveal() == SECRETS["CLIENT_SECRET"]
    assert conn(settings).subscription_key.reveal() == SECRETS["SUBSCRIPTION_KEY"]
    assert settings.session.secret == Secret(SECRETS["SESSION_SECRET"])


@pytest.mark.parametrize(
    "edits",
    [
        pytest.param({f"{C}.prefix": "bad", "server.port": -1}, id="other-keys-invalid"),
        pytest.param({"session.secret": "env:SHORT"}, id="session-secret-too-short"),
        pytest.param({f"{C}.scopes": ["env:CLIENT_SECRET", "a b"]}, id="secret-in-a-list"),
        pytest.param({f"{C}.provider": "env:CLIENT_SECRET"}, id="secret-where-a-choice-goes"),
    ],
)
def test_secrets_stay_out_of_problems(tmp_path: Path, edits: dict[str, object]) -> None:
    (tmp_path / "subscription.key").write_text(SECRETS["SUBSCRIPTION_KEY"], encoding="utf-8")
    environ = {**SECRETS, "SHORT": "SENTINEL-4"}

    with pytest.raises(ConfigError) as caught:
        parse(config({**SECRET_REFS, **edits}), base_dir=tmp_path, environ=environ)

    shown = str(caught.value) + repr(caught.value)
    assert "SENTINEL" not in shown.replace("'", "")  # not even in a quoted, echoed value
