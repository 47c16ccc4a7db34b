"""The machine providers (client_credentials, nomba, nitro), their headers and token_params."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from proxy.config import parse
from proxy.core.secret import Secret, revealed_in
from tests.config.helpers import DELETE, EXAMPLE, C, config, problems

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
