"""The configuration in force as JSON: every secret masked, everything else as configured."""

from __future__ import annotations

import json
from ipaddress import ip_network
from pathlib import Path

import pytest

from proxy.config import Settings, StoreSettings
from proxy.config.effective import MASK, effective_config
from proxy.config.schema import ConnectionSettings
from proxy.core.secret import Secret
from proxy.inbound.policy import AdminAccess, Client, key_digest
from proxy.inbound.rules import PathPattern, Rule

SECRETS = ("client-secret-1", "sub-key-2", "old-sub-key-3", "header-token-4", "audience-5",
           "redis-password-6", "store-key-7")

NMBRS = ConnectionSettings(
    name="nmbrs", provider="nmbrs", prefix="/", upstream="https://api.example",
    client_id="PartnerApp", client_secret=Secret(SECRETS[0]),
    subscription_key=Secret(SECRETS[1]), secondary_subscription_keys=(Secret(SECRETS[2]),),
    headers=(("X-Api-Token", Secret(SECRETS[3])), ("X-Plain", "plain-but-hidden")),
    token_params=(("audience", Secret(SECRETS[4])),),
)
SETTINGS = Settings(
    store=StoreSettings(backend="redis", url="redis://127.0.0.1:6379/0",
                        password=Secret(SECRETS[5]), encryption_key=Secret(SECRETS[6]),
                        path=Path("/var/lib/nmbrs-proxy/tokens.json")),
    connections=(NMBRS,),
    clients=(Client(name="payroll-app", key_sha256=key_digest("the-key"),
                    cidrs=(ip_network("10.0.0.0/8"),), connections=frozenset({"nmbrs"}),
                    rules=(Rule(frozenset({"GET"}), (PathPattern.parse("/api/**"),)),)),),
    admin=AdminAccess(key_sha256=key_digest("admin-key")),
)
SHOWN = effective_config(SETTINGS)


def test_no_secret_and_no_digest_is_in_it() -> None:
    text = json.dumps(SHOWN)
    for secret in SECRETS:
        assert secret not in text
    assert "plain-but-hidden" not in text
    assert key_digest("the-key").hex() not in text


@pytest.mark.parametrize(("path", "expected"), [
    (("connections", 0, "client_secret"), MASK),
    (("connections", 0, "subscription_key"), MASK),
    (("connections", 0, "secondary_subscription_keys"), [MASK]),
    (("connections", 0, "headers"), {"X-Api-Token": MASK, "X-Plain": MASK}),
    (("connections", 0, "token_params"), {"audience": MASK}),
    (("connections", 0, "client_id"), "PartnerApp"),
    (("connections", 0, "upstream"), "https://api.example"),
    (("connections", 0, "retries", "statuses"), [429, 502, 503, 504]),
    (("connections", 0, "cache"), None),
    (("store", "password"), MASK),
    (("store", "encryption_key"), MASK),
    (("store", "url"), "redis://127.0.0.1:6379/0"),
    (("store", "path"), "/var/lib/nmbrs-proxy/tokens.json"),
    (("session", "secret"), None),
    (("clients", 0, "name"), "payroll-app"),
    (("clients", 0, "key_sha256"), MASK),
    (("clients", 0, "cidrs"), ["10.0.0.0/8"]),
    (("clients", 0, "connections"), ["nmbrs"]),
    (("clients", 0, "rules", 0, "methods"), ["GET"]),
    (("clients", 0, "rules", 0, "paths"), [{"text": "/api/**"}]),
    (("admin", "key_sha256"), MASK),
    (("admin", "cidrs"), ["127.0.0.0/8", "::1/128"]),
    (("audit", "destination"), "off"),
])
def test_each_value_is_shown_as(path: tuple[str | int, ...], expected: object) -> None:
    found: object = SHOWN
    for step in path:
        assert isinstance(found, dict | list)
        found = found[step]  # type: ignore[index]
    assert found == expected
