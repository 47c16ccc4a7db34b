"""Configuration: defaults, references, every rule with its exact message, and no leaked secrets."""

from __future__ import annotations

import base64
import copy
import dataclasses
import re
import tomllib
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from proxy.config import (
    _CONNECTION_KEYS,
    CacheSettings,
    ConfigError,
    RetrySettings,
    Settings,
    StoreSettings,
    config_path,
    load,
    parse,
)
from proxy.core.secret import Secret, revealed_in
from tests.conftest import cache_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
C = "connections.nmbrs"  # the dotted key of the minimal config's connection

CONNECTION: dict[str, Any] = {
    "provider": "nmbrs",
    "client_id": "PartnerApp_demo_*$1",
    "client_secret": "client-secret-value",
    "subscription_key": "subscription-key-value",
    "redirect_uri": "http://localhost:8080/_proxy/callback",
    "scopes": ["offline_access", "company.info.read"],
}
MINIMAL: dict[str, Any] = {"connections": {"nmbrs": CONNECTION}}
DELETE = object()


def config(edits: Mapping[str, object] | None = None) -> dict[str, Any]:
    """The minimal config with `edits` applied: dotted key -> new value, or DELETE."""
    data = copy.deepcopy(MINIMAL)
    for dotted, value in (edits or {}).items():
        *parents, last = dotted.split(".")
        table = data
        for name in parents:
            table = table.setdefault(name, {})
        if value is DELETE:
            del table[last]
        else:
            table[last] = copy.deepcopy(value)
    return data


def problems(
    data: dict[str, Any], base_dir: Path, environ: dict[str, str] | None = None
) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse(data, base_dir=base_dir, environ=environ or {})
    return caught.value.problems


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


def conn(settings: Settings) -> Any:
    return settings.connections[0]


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


# --- env: and file: references -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "value", "expected"),
    [
        pytest.param({}, "env:CLIENT_ID", "id-from-env", id="env"),
        pytest.param({"id.txt": b"id-from-file\n"}, "file:id.txt", "id-from-file", id="file"),
        pytest.param({"id.txt": b"crlf\r\n"}, "file:id.txt", "crlf", id="file-crlf"),
        pytest.param({"id.txt": b"two\n\n"}, "file:id.txt", "two\n", id="file-one-newline-only"),
        pytest.param({"id.txt": b"no-newline"}, "file:id.txt", "no-newline", id="file-as-is"),
        pytest.param({"sub/id.txt": b"nested"}, "file:sub/id.txt", "nested", id="file-relative"),
        pytest.param({"id.txt": b"absolute"}, "file:{base}/id.txt", "absolute", id="file-absolute"),
    ],
)
def test_references_resolve(
    tmp_path: Path, files: dict[str, bytes], value: str, expected: str
) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    data = config({f"{C}.client_id": value.replace("{base}", str(tmp_path))})

    settings = parse(data, base_dir=tmp_path, environ={"CLIENT_ID": "id-from-env"})

    assert conn(settings).client_id == expected


def test_references_resolve_everywhere(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("subscription-from-file\n", encoding="utf-8")
    data = config(
        {
            "server.host": "env:HOST",
            "store.path": "env:STORE",
            f"{C}.subscription_key": "file:key",
            f"{C}.scopes": ["offline_access", "env:SCOPE"],
        }
    )
    environ = {"HOST": "::1", "STORE": "tokens.json", "SCOPE": "company.info.read"}

    settings = parse(data, base_dir=tmp_path, environ=environ)

    assert settings.server.host == "::1"
    assert settings.store.path == tmp_path / "tokens.json"
    assert conn(settings).subscription_key == Secret("subscription-from-file")
    assert conn(settings).scopes == ("offline_access", "company.info.read")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("env:MISSING", "environment variable MISSING is not set", id="env-unset"),
        pytest.param("env:EMPTY", "environment variable EMPTY is empty", id="env-empty"),
        pytest.param("env:", "an env: reference needs a variable name", id="env-no-name"),
        pytest.param(
            "file:nope.txt",
            "cannot read file {base}/nope.txt (No such file or directory)",
            id="file-missing",
        ),
        pytest.param("file:.", "cannot read file {base} (Is a directory)", id="file-directory"),
        pytest.param(
            "file:latin1", "cannot read file {base}/latin1 (not UTF-8 text)", id="file-bytes"
        ),
        pytest.param("file:", "a file: reference needs a path", id="file-no-path"),
        pytest.param("file:blank", "must not be empty", id="file-only-newline"),
    ],
)
def test_reference_problems(tmp_path: Path, value: str, expected: str) -> None:
    (tmp_path / "latin1").write_bytes(b"caf\xe9")
    (tmp_path / "blank").write_bytes(b"\n")
    data = config({f"{C}.client_secret": value})

    found = problems(data, tmp_path, {"EMPTY": ""})

    assert found == (f"{C}.client_secret: " + expected.replace("{base}", str(tmp_path)),)


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


# --- the token store ------------------------------------------------------------------------------

SESSION_SECRET = "a-session-secret-of-16+"
FERNET_KEY = base64.urlsafe_b64encode(b"k" * 32).decode()  # a valid Fernet key (not random)
REDIS: dict[str, object] = {
    "store.backend": "redis",
    "store.url": "redis://redis.internal:6379/0",
    "session.secret": SESSION_SECRET,
}


def test_a_redis_store_with_every_key(tmp_path: Path) -> None:
    settings = parse(
        config({**REDIS, "store.url": "rediss://proxy@redis.internal:6380/2",
                "store.password": "env:REDIS_PASSWORD", "store.key_prefix": "payroll:",
                "store.encryption_key": "env:STORE_KEY", "store.lease_seconds": 5,
                "store.timeout_seconds": 0.5}),
        base_dir=tmp_path,
        environ={"REDIS_PASSWORD": "pw", "STORE_KEY": FERNET_KEY},
    )
    store = settings.store
    assert store.backend == "redis"
    assert store.url == "rediss://proxy@redis.internal:6380/2"
    assert store.password == Secret("pw")
    assert store.key_prefix == "payroll:"
    assert store.encryption_key == Secret(FERNET_KEY)
    assert store.lease_seconds == 5.0
    assert store.timeout_seconds == 0.5


def test_redis_store_defaults(tmp_path: Path) -> None:
    store = parse(config(REDIS), base_dir=tmp_path, environ={}).store
    assert (store.password, store.key_prefix, store.encryption_key) == (None, "nmbrs-proxy:", None)
    assert (store.lease_seconds, store.timeout_seconds) == (10.0, 2.0)


def test_the_file_store_takes_an_encryption_key(tmp_path: Path) -> None:
    store = parse(config({"store.encryption_key": FERNET_KEY}), base_dir=tmp_path,
                  environ={}).store
    assert store.encryption_key == Secret(FERNET_KEY)


_NEEDS_SESSION = (
    'session.secret: required when store.backend = "redis": every replica must read the '
    "consent cookie the others set"
)
_KEY_HINT = (
    "store.encryption_key: must be a Fernet key: 32 random bytes, URL-safe base64 (44 "
    "characters); make one with python3 -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'"
)
STORE_RULES = [
    ({"store.backend": "redis"},
     ['store.url: required when store.backend = "redis"', _NEEDS_SESSION], "redis-bare"),
    ({"store.backend": "redis", "store.url": "redis://r"}, [_NEEDS_SESSION],
     "redis-without-session-secret"),
    ({**REDIS, "session.secret": "short"}, ["session.secret: must be at least 16 characters"],
     "redis-bad-session-secret-reported-once"),
    ({**REDIS, "store.url": "http://redis:6379"},
     ["store.url: must be a redis:// or rediss:// URL"], "url-scheme"),
    ({**REDIS, "store.url": "redis://:hunter2@redis:6379"},
     ['store.url: must not include a password: set store.password (e.g. "env:NAME")'],
     "url-password"),
    ({**REDIS, "store.url": "redis:///0"}, ["store.url: must include a host"], "url-no-host"),
    ({**REDIS, "store.url": "redis://redis:99999"}, ["store.url: is not a valid URL"],
     "url-port"),
    ({**REDIS, "store.url": "redis://redis/zero"},
     ["store.url: the path must be a database number, such as /0"], "url-db"),
    ({**REDIS, "store.url": "redis://redis/\u00b2"},
     ["store.url: the path must be a database number, such as /0"], "url-db-superscript"),
    ({**REDIS, "store.url": "redis://redis/0?ssl_cert_reqs=none"},
     ["store.url: must not include a query or fragment"], "url-query"),
    ({**REDIS, "store.url": "redis://re dis"}, ["store.url: must not contain whitespace"],
     "url-space"),
    ({**REDIS, "store.url": 6379}, ["store.url: expected a string, got an integer"], "url-int"),
    ({**REDIS, "store.path": "tokens.json"},
     ['store.path: only used when store.backend = "file"'], "path-with-redis"),
    ({"store.url": "redis://redis"}, ['store.url: only used when store.backend = "redis"'],
     "url-with-file"),
    ({"store.password": "pw", "store.lease_seconds": 3},
     ['store.password: only used when store.backend = "redis"',
      'store.lease_seconds: only used when store.backend = "redis"'], "redis-keys-with-file"),
    ({"store.encryption_key": "too-short"}, [_KEY_HINT], "key-short"),
    ({"store.encryption_key": "x" * 44}, [_KEY_HINT], "key-not-base64"),
    ({**REDIS, "store.lease_seconds": 0.5}, ["store.lease_seconds: must be at least 1"],
     "lease-short"),
    ({**REDIS, "store.lease_seconds": 0}, ["store.lease_seconds: must be greater than 0"],
     "lease-zero"),
    ({**REDIS, "store.timeout_seconds": 0}, ["store.timeout_seconds: must be greater than 0"],
     "timeout-zero"),
    ({**REDIS, "store.timeout_seconds": "2"},
     ["store.timeout_seconds: expected a number, got a string"], "timeout-str"),
    ({**REDIS, "store.key_prefix": "a b"}, ["store.key_prefix: must not contain whitespace"],
     "prefix-space"),
    ({**REDIS, "store.password": "env:NOPE"},
     ["store.password: environment variable NOPE is not set"], "password-env-missing"),
    ({**REDIS, "store.lease_second": 3},
     ["store.lease_second: unknown key (did you mean 'lease_seconds'?)"],
     "store-unknown-suggested"),
]


@pytest.mark.parametrize(
    ("edits", "expected"),
    [pytest.param(edits, expected, id=id_) for edits, expected, id_ in STORE_RULES],
)
def test_store_rules(tmp_path: Path, edits: dict[str, object], expected: list[str]) -> None:
    assert problems(config(edits), tmp_path) == tuple(expected)


def test_store_secrets_stay_out_of_reprs_and_problems(tmp_path: Path) -> None:
    environ = {"REDIS_PASSWORD": "redis-SENTINEL-5", "STORE_KEY": FERNET_KEY}
    edits = {**REDIS, "store.password": "env:REDIS_PASSWORD",
             "store.encryption_key": "env:STORE_KEY"}
    settings = parse(config(edits), base_dir=tmp_path, environ=environ)
    shown = repr(settings) + str(settings)
    assert "SENTINEL" not in shown
    assert FERNET_KEY not in shown
    with pytest.raises(ConfigError) as caught:
        parse(config({**edits, "store.encryption_key": "env:REDIS_PASSWORD"}),
              base_dir=tmp_path, environ=environ)
    assert "SENTINEL" not in str(caught.value)


# --- loading the file and finding it --------------------------------------------------------------


def test_load_resolves_paths_against_the_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "secret.txt").write_text("from-file\n", encoding="utf-8")
    (folder / "proxy.toml").write_text(
        """
        [store]
        path = "tokens.json"
        [connections.nmbrs]
        provider = "nmbrs"
        client_id = "id"
        client_secret = "file:secret.txt"
        subscription_key = "env:KEY"
        redirect_uri = "http://localhost:8080/_proxy/callback"
        scopes = ["offline_access"]
        """,
        encoding="utf-8",
    )

    settings = load(folder / "proxy.toml", {"KEY": "k"})

    assert settings.store.path == folder / "tokens.json"
    assert conn(settings).client_secret == Secret("from-file")


def test_load_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    assert caught.value.problems == (
        f"{path}: cannot read the configuration file (No such file or directory)",
    )


def test_load_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, {})
    assert caught.value.problems == (
        f"{tmp_path}: cannot read the configuration file (Is a directory)",
    )


def test_load_bad_toml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[server]\nhost = "x"\nport = \n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in problem


def test_load_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhost = "caf\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    assert caught.value.problems == (f"{path}: the configuration file is not UTF-8 text",)


def test_config_error_lists_every_problem() -> None:
    err = ConfigError(["a.b: required", "c: unknown key"])
    assert isinstance(err, ValueError)
    assert err.problems == ("a.b: required", "c: unknown key")
    assert str(err) == "invalid configuration:\n  - a.b: required\n  - c: unknown key"


@pytest.mark.parametrize(
    ("cli", "environ", "expected"),
    [
        pytest.param(None, {}, "config.toml", id="default"),
        pytest.param(None, {"NMBRS_PROXY_CONFIG": "/etc/p.toml"}, "/etc/p.toml", id="env"),
        pytest.param("cli.toml", {"NMBRS_PROXY_CONFIG": "/etc/p.toml"}, "cli.toml", id="cli-wins"),
        pytest.param(None, {"NMBRS_PROXY_CONFIG": ""}, "config.toml", id="empty-env-ignored"),
        pytest.param("", {"NMBRS_PROXY_CONFIG": "e.toml"}, "e.toml", id="empty-cli-ignored"),
    ],
)
def test_config_path(cli: str | None, environ: dict[str, str], expected: str) -> None:
    assert config_path(cli, environ) == Path(expected)


# --- other providers ---------------------------------------------------------------------------

MACHINE: dict[str, dict[str, Any]] = {
    "client_credentials": {
        "provider": "client_credentials",
        "upstream": "https://api.example.test/v2/",
        "token_url": "https://id.example.test/oauth2/token",
        "client_id": "machine-app",
        "client_secret": "machine-secret",
    },
    "nomba": {
        "provider": "nomba",
        "client_id": "nomba-client",
        "client_secret": "nomba-secret",
        "account_id": "0123-acc",
    },
    "nitro": {"provider": "nitro", "client_id": "nitro-client", "client_secret": "nitro-secret"},
}


def machine(provider: str, **edits: object) -> dict[str, Any]:
    """A config with one connection of `provider`, named after it, with `edits` (or DELETE)."""
    table = {**MACHINE[provider], "prefix": f"/{provider}/"}
    for key, value in edits.items():
        if value is DELETE:
            del table[key]
        else:
            table[key] = value
    return {"connections": {provider: table}}


@pytest.mark.parametrize(
    ("provider", "expected"),
    [
        pytest.param(
            "client_credentials",
            {
                "upstream": "https://api.example.test/v2",
                "token_url": "https://id.example.test/oauth2/token",
                "auth_method": "client_secret_basic",
                "scopes": (),
                "audience": None,
                "token_params": (),
                "revocation_url": None,
                "subscription_key": None,
                "issuer": None,
                "redirect_uri": None,
                "account_id": None,
                "headers": (),
                "refresh_margin_seconds": 300.0,
            },
            id="client-credentials",
        ),
        pytest.param(
            "nomba",
            {
                "upstream": "https://api.nomba.com",
                "token_url": "https://api.nomba.com/v1/auth/token",
                "account_id": "0123-acc",
                "subscription_key": None,
                "scopes": (),
                "headers": (),
            },
            id="nomba",
        ),
        pytest.param(
            "nitro",
            {
                "upstream": "https://api.gonitro.dev",
                "token_url": "https://api.gonitro.dev/oauth/token",
                "subscription_key": None,
                "account_id": None,
            },
            id="nitro",
        ),
    ],
)
def test_machine_providers_take_their_defaults(
    tmp_path: Path, provider: str, expected: dict[str, object]
) -> None:
    (connection,) = parse(machine(provider), base_dir=tmp_path, environ={}).connections
    assert connection.provider == provider
    assert connection.prefix == f"/{provider}/"
    assert {key: getattr(connection, key) for key in expected} == expected


def test_a_client_credentials_connection_with_every_key(tmp_path: Path) -> None:
    data = machine(
        "client_credentials",
        auth_method="client_secret_post",
        scopes=["read", "write"],
        audience="https://api.example.test",
        token_params={"resource": "urn:api", "tenant": "env:TENANT"},
        revocation_url="https://id.example.test/oauth2/revoke",
        subscription_key="gateway-key",
        headers={"Accept": "application/json", "X-Api-Version": "2"},
    )
    (c,) = parse(data, base_dir=tmp_path, environ={"TENANT": "acme"}).connections
    assert c.auth_method == "client_secret_post"
    assert c.scopes == ("read", "write")
    assert c.audience == "https://api.example.test"
    assert c.token_params == (("resource", "urn:api"), ("tenant", Secret("acme")))
    assert c.revocation_url == "https://id.example.test/oauth2/revoke"
    assert c.subscription_key == Secret("gateway-key")
    assert c.headers == (("Accept", "application/json"), ("X-Api-Version", "2"))


def test_headers_are_taken_by_every_provider(tmp_path: Path) -> None:
    data = config({f"{C}.headers": {"X-Tenant": "acme"}})
    data["connections"].update(machine("nomba", headers={"X-Trace": "on"})["connections"])
    settings = parse(data, base_dir=tmp_path, environ={})
    assert [c.headers for c in settings.connections] == [
        (("X-Tenant", "acme"),),
        (("X-Trace", "on"),),
    ]


def test_header_values_and_token_params_stay_out_of_reprs(tmp_path: Path) -> None:
    data = machine("client_credentials", headers={"X-Api-Key": "env:KEY"},
                   token_params={"assertion": "env:KEY"})
    settings = parse(data, base_dir=tmp_path, environ={"KEY": "SENTINEL-header"})
    assert "SENTINEL" not in repr(settings)
    # referenced values are held as secrets, so the log redaction masks them too
    assert settings.connections[0].headers == (("X-Api-Key", Secret("SENTINEL-header")),)
    assert list(revealed_in(settings)).count("SENTINEL-header") == 2


def test_literal_header_values_are_not_secrets(tmp_path: Path) -> None:
    data = machine("client_credentials", headers={"Accept": "application/json"})
    (c,) = parse(data, base_dir=tmp_path, environ={}).connections
    assert c.headers == (("Accept", "application/json"),)
    assert "application/json" not in list(revealed_in(c))


CC = "connections.client_credentials"
NB = "connections.nomba"
NI = "connections.nitro"
_MANAGED = "is managed by the proxy and cannot be set here"

MACHINE_RULES = [
    # required keys
    *[
        pytest.param(machine("client_credentials", **{key: DELETE}), [f"{CC}.{key}: required"],
                     id=f"cc-requires-{key}")
        for key in ("upstream", "token_url", "client_id", "client_secret")
    ],
    *[
        pytest.param(machine("nomba", **{key: DELETE}), [f"{NB}.{key}: required"],
                     id=f"nomba-requires-{key}")
        for key in ("client_id", "client_secret", "account_id")
    ],
    pytest.param(machine("nitro", client_secret=DELETE), [f"{NI}.client_secret: required"],
                 id="nitro-requires-secret"),
    # keys a provider does not take
    pytest.param(machine("nomba", subscription_key="k"),
                 [(f"{NB}.subscription_key: not a key of provider 'nomba' (only for: 'nmbrs', "
                  "'client_credentials')")], id="nomba-no-subscription-key"),
    pytest.param(machine("nitro", redirect_uri="http://x.test/cb"),
                 [f"{NI}.redirect_uri: not a key of provider 'nitro' (only for: 'nmbrs')"],
                 id="nitro-no-redirect"),
    pytest.param(machine("nitro", scopes=["a"]),
                 [(f"{NI}.scopes: not a key of provider 'nitro' (only for: 'nmbrs', "
                  "'client_credentials')")], id="nitro-no-scopes"),
    pytest.param(machine("client_credentials", issuer="https://id.test"),
                 [(f"{CC}.issuer: not a key of provider 'client_credentials' (only for: "
                  "'nmbrs')")], id="cc-no-issuer"),
    pytest.param(machine("nomba", acount_id="x"),
                 [f"{NB}.acount_id: unknown key (did you mean 'account_id'?)"],
                 id="nomba-typo"),
    pytest.param(config({f"{C}.token_url": "https://x.test/t"}),
                 [(f"{C}.token_url: not a key of provider 'nmbrs' (only for: "
                  "'client_credentials', 'nomba', 'nitro')")], id="nmbrs-no-token-url"),
    # values
    pytest.param(machine("client_credentials", auth_method="private_key_jwt"),
                 [(f"{CC}.auth_method: must be one of: 'client_secret_basic', "
                  "'client_secret_post'")], id="auth-method"),
    pytest.param(machine("client_credentials", token_url="https://id.test/token?x=1"),
                 [f"{CC}.token_url: must not include a query"], id="token-url-query"),
    pytest.param(machine("nitro", token_url="id.test/token"),
                 [f"{NI}.token_url: must be an absolute http or https URL"],
                 id="token-url-relative"),
    pytest.param(machine("client_credentials", revocation_url="ftp://id.test"),
                 [f"{CC}.revocation_url: must be an absolute http or https URL"],
                 id="revocation-url"),
    pytest.param(machine("client_credentials", scopes=[]), [f"{CC}.scopes: must not be empty"],
                 id="cc-scopes-empty"),
    pytest.param(machine("client_credentials", audience=""),
                 [f"{CC}.audience: must not be empty"], id="audience-empty"),
    pytest.param(machine("nomba", account_id=7),
                 [f"{NB}.account_id: expected a string, got an integer"], id="account-id-int"),
    # token_params
    pytest.param(machine("client_credentials", token_params="resource=x"),
                 [f"{CC}.token_params: expected a table, got a string"], id="params-not-table"),
    pytest.param(
        machine("client_credentials",
                token_params={"grant_type": "password", "scope": "x", "ok": "y", "n": 1}),
        [
            f"{CC}.token_params.grant_type: is set by the proxy: is always client_credentials",
            f"{CC}.token_params.scope: is set by the proxy: comes from scopes",
            f"{CC}.token_params.n: expected a string, got an integer",
        ],
        id="params-reserved-and-typed",
    ),
    pytest.param(machine("client_credentials", token_params={"x": "env:NOPE"}),
                 [f"{CC}.token_params.x: environment variable NOPE is not set"],
                 id="params-reference"),
    # headers
    pytest.param(config({f"{C}.headers": ["Accept"]}),
                 [f"{C}.headers: expected a table, got an array"], id="headers-not-table"),
    pytest.param(
        config({f"{C}.headers": {"Authorization": "Basic x", "x-subscription-key": "k",
                                 "Host": "h", "Connection": "close", "Via": "v"}}),
        [
            f"{C}.headers.Authorization: is set by the proxy: it carries the access token",
            f"{C}.headers.x-subscription-key: is set by the proxy from subscription_key",
            f"{C}.headers.Host: {_MANAGED}",
            f"{C}.headers.Connection: {_MANAGED}",
            f"{C}.headers.Via: {_MANAGED}",
        ],
        id="headers-managed",
    ),
    pytest.param(machine("nomba", headers={"AccountID": "other"}),
                 [f"{NB}.headers.AccountID: is set by the proxy from account_id"],
                 id="headers-nomba-account"),
    pytest.param(machine("nitro", headers={"accountId": "fine-here"}), [],
                 id="headers-account-id-elsewhere-is-fine"),
    pytest.param(
        config({f"{C}.headers": {"Bad Name": "x", "X-A": "a\r\nInjected: 1", "X-B": " pad",
                                 "X-C": "é", "X-D": 5}}),
        [
            (f'{C}.headers."Bad Name": is not a valid header name (RFC 9110 token characters '
            "only)"),
            (f"{C}.headers.X-A: value must be printable ASCII without leading or trailing "
            "whitespace"),
            (f"{C}.headers.X-B: value must be printable ASCII without leading or trailing "
            "whitespace"),
            (f"{C}.headers.X-C: value must be printable ASCII without leading or trailing "
            "whitespace"),
            f"{C}.headers.X-D: expected a string, got an integer",
        ],
        id="headers-names-and-values",
    ),
    pytest.param(config({f"{C}.headers": {"X-Tenant": "a", "x-tenant": "b"}}),
                 [f"{C}.headers.x-tenant: repeats 'X-Tenant'"], id="headers-case-clash"),
]


@pytest.mark.parametrize(("data", "expected"), MACHINE_RULES)
def test_machine_rules(tmp_path: Path, data: dict[str, Any], expected: list[str]) -> None:
    if not expected:
        parse(data, base_dir=tmp_path, environ={})
        return
    assert problems(data, tmp_path) == tuple(expected)


def test_a_header_value_is_never_echoed(tmp_path: Path) -> None:
    data = config({f"{C}.headers": {"X-Key": "env:KEY"}})
    found = problems(data, tmp_path, {"KEY": "SENTINEL\nx"})
    assert found == ((f"{C}.headers.X-Key: value must be printable ASCII without leading or "
                     "trailing whitespace"),)


def test_the_commented_provider_examples_parse_when_uncommented() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    head, marker, tail = text.partition("# ==== Other providers")
    assert marker
    lines = tail.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("# [")):]
    uncommented = "\n".join(line[2:] if line.startswith("# ") else "" for line in lines)
    data = tomllib.loads(head + "\n" + uncommented)
    names = set(re.findall(r"env:([A-Za-z0-9_]+)", text))
    environ = {name: f"value-of-{name}" for name in names}

    settings = parse(data, base_dir=EXAMPLE.parent, environ=environ)

    by_name = {c.name: c for c in settings.connections}
    assert {name: c.provider for name, c in by_name.items()} == {
        "nmbrs": "nmbrs", "reporting": "client_credentials", "nomba": "nomba", "nitro": "nitro",
    }  # fmt: skip
    assert by_name["reporting"].token_params == (("resource", "https://api.example.com"),)
    assert by_name["nomba"].account_id == "value-of-NOMBA_ACCOUNT_ID"
    assert by_name["nitro"].token_url == "https://api.gonitro.dev/oauth/token"
    machine_keys = {key for table in data["connections"].values() for key in table}
    assert machine_keys >= {"token_url", "auth_method", "scopes", "audience", "token_params",
                            "revocation_url", "subscription_key", "account_id"}
