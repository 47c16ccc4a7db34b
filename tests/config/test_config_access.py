"""Configuration of access control: [[clients]], [admin], [audit], server.allow_anonymous."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from proxy.config import AuditSettings, load, parse
from proxy.inbound.policy import LOOPBACK, AdminAccess
from tests.config.helpers import EXAMPLE, config, problems

KEY_A = hashlib.sha256(b"key-a").hexdigest()
KEY_B = hashlib.sha256(b"key-b").hexdigest()


def with_clients(*clients: dict[str, Any], **edits: object) -> dict[str, Any]:
    data = config(edits)
    data["clients"] = list(clients)
    return data


def test_a_client_with_a_quota(tmp_path: Path) -> None:
    data = with_clients({"name": "etl", "key_sha256": KEY_A, "max_requests_per_second": 2.5,
                         "burst": 5, "max_concurrent": 3},
                        {"name": "plain", "key_sha256": KEY_B})
    quota, plain = parse(data, base_dir=tmp_path, environ={}).clients
    assert (quota.rate_per_second, quota.burst, quota.max_concurrent) == (2.5, 5, 3)
    assert (plain.rate_per_second, plain.burst, plain.max_concurrent) == (None, 1, None)


def test_no_access_sections_keep_the_old_behaviour(tmp_path: Path) -> None:
    settings = parse(config(), base_dir=tmp_path, environ={})
    assert settings.clients == ()
    assert settings.admin == AdminAccess()
    assert settings.admin.cidrs == LOOPBACK
    assert settings.audit == AuditSettings(destination="off", include_query=False)
    assert settings.server.allow_anonymous is False
    assert settings.access_policy().anonymous_allowed


def test_a_full_client(tmp_path: Path) -> None:
    data = with_clients({
        "name": "reporting",
        "key_sha256": KEY_A.upper(),
        "cidrs": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"],
        "connections": ["nmbrs"],
        "read_only": True,
        "rules": [{"methods": ["GET"], "paths": ["/api/companies/*/employees*", "/api/**"]},
                  {"methods": ["*"], "paths": ["/x"]}],
    })
    (client,) = parse(data, base_dir=tmp_path, environ={}).clients
    assert client.name == "reporting"
    assert client.key_sha256 == hashlib.sha256(b"key-a").digest()
    assert client.cidrs == tuple(ipaddress.ip_network(n) for n in
                                 ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"))
    assert client.connections == frozenset({"nmbrs"})
    assert client.read_only is True
    assert client.rules is not None
    assert [sorted(r.methods) for r in client.rules] == [["GET"], ["*"]]
    assert [p.text for p in client.rules[0].paths] == ["/api/companies/*/employees*", "/api/**"]


def test_a_minimal_client_may_do_anything(tmp_path: Path) -> None:
    (client,) = parse(with_clients({"name": "app", "key_sha256": KEY_A}), base_dir=tmp_path,
                      environ={}).clients
    assert (client.cidrs, client.connections, client.rules, client.read_only) == \
        ((), None, None, False)


def test_keys_may_be_references(tmp_path: Path) -> None:
    (tmp_path / "key.sha256").write_text(KEY_A + "\n")
    data = with_clients({"name": "a", "key_sha256": "file:key.sha256"},
                        {"name": "b", "key_sha256": "env:KEY_B"})
    clients = parse(data, base_dir=tmp_path, environ={"KEY_B": KEY_B}).clients
    assert [c.key_sha256 for c in clients] == [bytes.fromhex(KEY_A), bytes.fromhex(KEY_B)]


def test_admin_and_audit(tmp_path: Path) -> None:
    data = config({"admin.key_sha256": KEY_B, "admin.cidrs": ["0.0.0.0/0", "::/0"],
                   "audit.destination": "logs/audit.jsonl", "audit.include_query": True,
                   "server.host": "0.0.0.0", "server.allow_anonymous": True})
    settings = parse(data, base_dir=tmp_path, environ={})
    assert settings.admin.key_sha256 == hashlib.sha256(b"key-b").digest()
    assert [str(n) for n in settings.admin.cidrs] == ["0.0.0.0/0", "::/0"]
    assert settings.audit == AuditSettings(str(tmp_path / "logs" / "audit.jsonl"), True)
    assert settings.server.allow_anonymous is True


@pytest.mark.parametrize("destination", ["off", "stdout", "stderr"])
def test_audit_streams(tmp_path: Path, destination: str) -> None:
    settings = parse(config({"audit.destination": destination}), base_dir=tmp_path, environ={})
    assert settings.audit.destination == destination


def test_admin_networks_may_be_empty(tmp_path: Path) -> None:
    settings = parse(config({"admin.cidrs": []}), base_dir=tmp_path, environ={})
    assert settings.admin.cidrs == ()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.53"])
def test_loopback_needs_no_clients(tmp_path: Path, host: str) -> None:
    parse(config({"server.host": host}), base_dir=tmp_path, environ={})


def test_a_public_bind_with_clients_is_fine(tmp_path: Path) -> None:
    data = with_clients({"name": "app", "key_sha256": KEY_A}, **{"server.host": "0.0.0.0"})
    parse(data, base_dir=tmp_path, environ={})


NOT_LOOPBACK = (
    "server.host: {host!r} is not a loopback address and no [[clients]] are configured, so "
    "anyone who can reach the proxy would act as the linked accounts: add [[clients]] with "
    "keys, or set server.allow_anonymous = true if something else guards the port"
)
HEX = ("must be 64 hexadecimal characters, the SHA-256 of the key (`nmbrs-proxy hash-key` "
       "prints one)")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(config({"server.host": "0.0.0.0"}), [NOT_LOOPBACK.format(host="0.0.0.0")],
                     id="public-bind-without-clients"),
        pytest.param(config({"server.host": "::"}), [NOT_LOOPBACK.format(host="::")],
                     id="public-bind-v6"),
        pytest.param(config({"server.host": "proxy.internal"}),
                     [NOT_LOOPBACK.format(host="proxy.internal")], id="public-bind-name"),
        pytest.param(config({"server.allow_anonymous": "yes"}),
                     ["server.allow_anonymous: expected a boolean, got a string"],
                     id="allow-anonymous-type"),
        pytest.param({**config(), "clients": {"name": "a"}},
                     ["clients: expected an array of tables, got a table"], id="clients-table"),
        pytest.param({**config(), "clients": ["a"]},
                     ["clients: expected an array of tables, got an array"], id="clients-strings"),
        pytest.param(with_clients({}), ["clients[0].name: required",
                                        "clients[0].key_sha256: required"], id="client-empty"),
        pytest.param(with_clients({"name": "a b", "key_sha256": KEY_A}),
                     [("clients[0].name: must be 1 to 64 characters from A-Z, a-z, 0-9, '_', "
                      "'.' and '-'")], id="client-name"),
        pytest.param(with_clients({"name": "a", "key_sha256": "abc"}),
                     [f"clients[0].key_sha256: {HEX}"], id="key-short"),
        pytest.param(with_clients({"name": "a", "key_sha256": "g" * 64}),
                     [f"clients[0].key_sha256: {HEX}"], id="key-not-hex"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A, "keysha": 1}),
                     ["clients[0].keysha: unknown key (did you mean 'key_sha256'?)"],
                     id="client-unknown-key"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A},
                                  {"name": "a", "key_sha256": KEY_B}),
                     ["clients[1].name: another client is already named 'a'"],
                     id="client-name-twice"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A},
                                  {"name": "b", "key_sha256": KEY_A.upper()}),
                     [("clients[1].key_sha256: the same key as clients[0].key_sha256: every key "
                      "must be different")], id="client-key-twice"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A},
                                  **{"admin.key_sha256": KEY_A}),
                     [("admin.key_sha256: the same key as clients[0].key_sha256: the admin key "
                      "must be its own")], id="admin-key-is-a-client-key"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A, "cidrs": "10.0.0.0/8"}),
                     ["clients[0].cidrs: expected an array, got a string"], id="cidrs-string"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A, "cidrs": []}),
                     ["clients[0].cidrs: must not be empty"], id="cidrs-empty"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A,
                                   "cidrs": ["10.0.0.1/8", "nope", 7]}),
                     [("clients[0].cidrs[0]: '10.0.0.1/8' has host bits set (did you mean "
                      "'10.0.0.0/8'?)"),
                      ("clients[0].cidrs[1]: 'nope' is not an IP address or network "
                      "(e.g. '10.0.0.0/8')"),
                      "clients[0].cidrs[2]: expected a string, got an integer"], id="cidrs-bad"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A,
                                   "connections": ["nmbrs", "acme"]}),
                     ["clients[0].connections[1]: no connection is named 'acme'"],
                     id="connections-unknown"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A, "connections": []}),
                     ["clients[0].connections: must not be empty"], id="connections-empty"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A, "read_only": 1}),
                     ["clients[0].read_only: expected a boolean, got an integer"],
                     id="read-only-type"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A,
                                   "max_requests_per_second": 0, "max_concurrent": 0}),
                     ["clients[0].max_requests_per_second: must be greater than 0",
                      "clients[0].max_concurrent: must be at least 1"], id="quota-zero"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A, "burst": 5}),
                     ["clients[0].burst: has no effect without max_requests_per_second"],
                     id="quota-burst-alone"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A,
                                   "max_requests_per_second": "fast"}),
                     ["clients[0].max_requests_per_second: expected a number, got a string"],
                     id="quota-type"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A, "rules": []}),
                     [("clients[0].rules: must not be empty (leave it out to allow every method "
                      "and path)")], id="rules-empty"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A, "rules": [{}]}),
                     ["clients[0].rules[0].methods: required",
                      "clients[0].rules[0].paths: required"], id="rule-empty"),
        pytest.param(with_clients({"name": "a", "key_sha256": KEY_A, "rules": [
                         {"methods": ["get", "GET"], "paths": ["api", "/a/b**", "/ok"],
                          "hosts": []}]}),
                     [("clients[0].rules[0].methods[0]: must be an HTTP method in capitals "
                      "(e.g. 'GET') or '*'"),
                      "clients[0].rules[0].paths[0]: must start with '/'",
                      "clients[0].rules[0].paths[1]: '**' must be a whole segment ('/**/')",
                      "clients[0].rules[0].hosts: unknown key"], id="rule-bad"),
        pytest.param(config({"admin.cidrs": ["::1/64"]}),
                     ["admin.cidrs[0]: '::1/64' has host bits set (did you mean '::/64'?)"],
                     id="admin-cidr"),
        pytest.param(config({"admin.key_sha": KEY_A}),
                     ["admin.key_sha: unknown key (did you mean 'key_sha256'?)"],
                     id="admin-unknown"),
        pytest.param(config({"connections.nmbrs.prefix": "/_proxy/x"}),
                     [("connections.nmbrs.prefix: must not be under /_proxy/ (the proxy's own "
                      "pages)")], id="prefix-under-proxy"),
        pytest.param(config({"connections.nmbrs.prefix": "/_proxy"}),
                     [("connections.nmbrs.prefix: must not be under /_proxy/ (the proxy's own "
                      "pages)")], id="prefix-proxy"),
        pytest.param(config({"audit.destination": ""}), ["audit.destination: must not be empty"],
                     id="audit-empty"),
        pytest.param(config({"audit.include_query": "no"}),
                     ["audit.include_query: expected a boolean, got a string"],
                     id="audit-include-type"),
    ],
)
def test_problems(tmp_path: Path, data: dict[str, Any], expected: list[str]) -> None:
    assert problems(data, tmp_path) == tuple(expected)


def test_broken_clients_are_not_also_reported_as_missing(tmp_path: Path) -> None:
    data = with_clients({"name": "a", "key_sha256": "nope"}, **{"server.host": "0.0.0.0"})
    assert problems(data, tmp_path) == (f"clients[0].key_sha256: {HEX}",)


def test_a_client_naming_a_broken_connection_is_not_blamed(tmp_path: Path) -> None:
    data = with_clients({"name": "a", "key_sha256": KEY_A, "connections": ["nmbrs"]},
                        **{"connections.nmbrs.scopes": []})
    assert problems(data, tmp_path) == ("connections.nmbrs.scopes: must not be empty",)


def test_the_example_documents_the_access_keys(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    assert set(data["server"]) == {"host", "port", "allow_anonymous", "shutdown_grace_seconds"}
    assert set(data["audit"]) == {"destination", "include_query"}
    assert set(data["admin"]) == {"cidrs"}
    assert '# key_sha256 = "env:NMBRS_PROXY_ADMIN_KEY_SHA256"' in text
    # The commented-out client, uncommented, is a valid one with every key.
    block = re.search(r"^# \[\[clients\]\]\n(?:# .*\n)+", text, re.MULTILINE)
    assert block is not None
    client = tomllib.loads(re.sub(r"^# ", "", block.group(0), flags=re.MULTILINE))
    assert set(client["clients"][0]) == {"name", "key_sha256", "cidrs", "connections",
                                         "read_only", "rules"}
    settings = parse({**config(), **client}, base_dir=tmp_path,
                     environ={"REPORTING_KEY_SHA256": KEY_A})
    assert settings.clients[0].name == "reporting"
    example = load(EXAMPLE, dict.fromkeys(re.findall(r"env:([A-Za-z0-9_]+)", text), "x"))
    assert example.admin.cidrs == LOOPBACK
    assert example.audit == AuditSettings()
