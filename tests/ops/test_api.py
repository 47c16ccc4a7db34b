"""The admin API (/_proxy/api/): its OpenAPI document is valid OpenAPI 3.1, every answer it
documents is produced by a real request here and matches the documented schema, and each
action does what the page's button does (revoke, reconnect, replace the key)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import jsonschema
import pytest
from openapi_spec_validator import validate

from proxy.app import create_app
from proxy.config import ConfigError, Settings, StoreSettings
from proxy.inbound.policy import AdminAccess, key_digest
from proxy.ops.openapi import OPENAPI_PATH, document
from tests.conftest import ProxyServerFactory
from tests.ops.conftest import MakeEnv
from tests.ops.helpers import CLIENT_ID, CLIENT_SECRET, SUBSCRIPTION_KEY, Env, connection

ADMIN_KEY = "the-admin-key-of-the-tests"
Answer = tuple[int, str, Any]  # status, content type, parsed body


def test_the_document_is_valid_openapi_3_1() -> None:
    spec = document()
    assert spec["openapi"] == "3.1.0"
    validate(spec)


def _operations() -> Iterator[tuple[str, str, str]]:
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status in operation["responses"]:
                yield path, method.upper(), status


class Api:
    """Calls the API and checks each answer against what the document says of it."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.spec = document()
        self.checked: set[tuple[str, str, str]] = set()

    async def call(self, method: str, template: str, *, name: str = "nmbrs",
                   body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
        path = template.replace("{name}", name)
        sent = {**self.headers, **(headers or {})}
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        async with aiohttp.ClientSession() as session, session.request(
                method, self.url + path, data=body, headers=sent) as response:
            raw = await response.read()
            answer = (response.status, response.content_type, json.loads(raw))
        self.check(method, template, answer)
        return answer

    def check(self, method: str, template: str, answer: Answer) -> None:
        status, content_type, body = answer
        operation = self.spec["paths"][template][method.lower()]
        documented = operation["responses"].get(str(status))
        assert documented is not None, f"{method} {template}: {status} is not documented: {body}"
        schema = documented["content"][content_type]["schema"]
        jsonschema.Draft202012Validator(
            {**schema, "components": self.spec["components"]},
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        ).validate(body)
        self.checked.add((template, method, str(status)))


SECRETS = (CLIENT_SECRET, SUBSCRIPTION_KEY, ADMIN_KEY, "a-session-secret-for-the-api-tests",
           "key-from-the-api")


async def test_every_documented_answer_is_real_and_matches_its_schema(  # noqa: PLR0915 - a tour
    make_env: MakeEnv, proxy_server: ProxyServerFactory
) -> None:
    env = await make_env(session_secret="a-session-secret-for-the-api-tests")
    api = Api(env.proxy_url)
    base = "/_proxy/api/connections"
    one, revoke, reconnect = f"{base}/{{name}}", f"{base}/{{name}}/revoke", \
        f"{base}/{{name}}/reconnect"
    key = f"{base}/{{name}}/subscription-key"

    # Not linked yet.
    status, _, listed = await api.call("GET", base)
    assert status == 200
    assert [(c["name"], c["linked"], c["link_state"]) for c in listed["connections"]] == [
        ("nmbrs", False, "not_linked")]
    for method, template in [("GET", one), ("POST", revoke), ("POST", reconnect), ("PUT", key)]:
        body = b'{"subscription_key": "k-1"}' if method == "PUT" else None
        assert (await api.call(method, template, name="elsewhere", body=body))[0] == 404
    assert (await api.call("POST", revoke))[0] == 409
    assert (await api.call("PUT", key, body=b'{"subscription_key": "k-2"}'))[0] == 409

    # Reconnect: the login URL, opened in a person's browser, links the connection.
    status, _, started = await api.call("POST", reconnect, body=b"{}")
    assert status == 200
    assert started["login_url"] == f"{env.proxy_url}/_proxy/login?connection=nmbrs"
    browser = env.new_browser()
    login = await browser.get(started["login_url"])
    assert login.status == 302
    consent = await browser.get(login.location)
    linked = await browser.get(consent.location)
    assert linked.status == 200, linked.text
    status, _, shown = await api.call("GET", one)
    assert (status, shown["linked"], shown["ready"], shown["subscription_key"]) == (
        200, True, True, "config")
    assert shown["scopes_granted"]
    assert (await api.call("GET", base))[2]["connections"][0]["link_state"] == "linked"

    # The subscription key: refused shapes, then replaced (the next request sends it).
    assert (await api.call("PUT", key, body=b'{"subscription_key": "has space"}'))[0] == 400
    assert (await api.call("PUT", key, body=b"{}"))[0] == 400
    assert (await api.call("PUT", key, body=b"[1]"))[0] == 400
    assert (await api.call("PUT", key, body=b"not json"))[0] == 400
    assert (await api.call("PUT", key, body=b'{"subscription_key": "x"}',
                           headers={"Content-Type": "text/plain"}))[0] == 415
    status, _, saved = await api.call("PUT", key,
                                      body=b'{"subscription_key": "key-from-the-api"}')
    assert (status, saved) == (200, {"connection": "nmbrs", "subscription_key": "page"})
    assert (await api.call("GET", one))[2]["subscription_key"] == "page"
    # The upstream now takes only the new key: a forwarded request shows it is the one sent.
    env.sandbox.settings = dataclasses.replace(
        env.sandbox.settings, subscription_keys=frozenset({"key-from-the-api"}))
    async with aiohttp.ClientSession() as session, session.get(
            f"{env.proxy_url}/api/companies") as forwarded:
        assert forwarded.status == 200

    # The configuration in force, without a secret in it.
    status, _, config = await api.call("GET", "/_proxy/api/config")
    assert status == 200
    text = json.dumps(config)
    assert config["connections"][0]["client_secret"] == "***"
    for secret in SECRETS:
        assert secret not in text

    # Revoke: refused by the identity service first (nothing changes), then done.
    env.sandbox.set_client_secret(CLIENT_ID, "rotated elsewhere")
    status, _, refused = await api.call("POST", revoke)
    assert status == 502
    assert "invalid_client" in refused["detail"]
    assert (await api.call("GET", one))[2]["linked"]
    env.sandbox.set_client_secret(CLIENT_ID, CLIENT_SECRET)
    status, _, revoked = await api.call("POST", revoke, body=b"{}")
    assert (status, revoked) == (200, {"connection": "nmbrs", "revoked": True,
                                       "store_updated": True})
    assert not (await api.call("GET", one))[2]["linked"]

    # A store that refuses writes: the key cannot be saved, and says so.
    await browser.get((await browser.get(
        (await browser.get(started["login_url"])).location)).location)
    assert (await api.call("GET", one))[2]["linked"]
    env.store_path.parent.rename(env.store_path.parent.with_name("moved"))
    env.store_path.parent.write_text("a file where the store's directory was")
    status, _, unsaved = await api.call("PUT", key, body=b'{"subscription_key": "k-3"}')
    assert status == 503
    assert "Nothing was changed" in unsaved["detail"]

    # Reload: this proxy was not started from a file.
    assert (await api.call("POST", "/_proxy/api/reload"))[0] == 409

    await _reloads(api, proxy_server, env)
    await _client_credentials(api, proxy_server, env)
    await _guarded(api, proxy_server, env)
    assert api.checked == set(_operations()), sorted(set(_operations()) - api.checked)


def _settings(env: Env, **changes: Any) -> Settings:
    nmbrs = connection("nmbrs", sandbox_url=env.sandbox_url,
                       redirect_uri="http://127.0.0.1:9/_proxy/callback")
    return Settings(store=StoreSettings(path=env.store_path.parent.with_name("other.json")),
                    connections=(nmbrs,), **changes)


async def _serve(proxy_server: ProxyServerFactory, settings: Settings,
                 reload_from: Callable[[], Settings] | None = None) -> str:
    server = await proxy_server(create_app(settings, reload_from=reload_from))
    return str(server.make_url("")).rstrip("/")


async def _reloads(api: Api, proxy_server: ProxyServerFactory, env: Env) -> None:
    settings = _settings(env)
    same = Api(await _serve(proxy_server, settings, lambda: settings))
    status, _, outcome = await same.call("POST", "/_proxy/api/reload", body=b"{}")
    assert (status, outcome["result"]) == (200, "unchanged")

    def invalid() -> Settings:
        raise ConfigError(["clients.0.key_sha256: not a SHA-256", "audit: unknown key 'x'"])

    bad = Api(await _serve(proxy_server, settings, invalid))
    status, _, problem = await bad.call("POST", "/_proxy/api/reload")
    assert status == 422
    assert problem["errors"] == ["clients.0.key_sha256: not a SHA-256", "audit: unknown key 'x'"]
    api.checked |= same.checked | bad.checked


async def _client_credentials(api: Api, proxy_server: ProxyServerFactory, env: Env) -> None:
    machine = dataclasses.replace(
        _settings(env).connections[0], provider="client_credentials", redirect_uri=None,
        token_url=f"{env.sandbox_url}/connect/token", scopes=())
    other = Api(await _serve(proxy_server, dataclasses.replace(
        _settings(env), connections=(machine,))))
    status, _, problem = await other.call("POST", "/_proxy/api/connections/{name}/reconnect")
    assert status == 409
    assert problem["type"] == "urn:nmbrs-proxy:problem:not-interactive"
    api.checked |= other.checked


async def _guarded(api: Api, proxy_server: ProxyServerFactory, env: Env) -> None:
    """401 without the admin key, 403 outside the admin networks: for every operation."""
    keyed = _settings(env, admin=AdminAccess(key_sha256=key_digest(ADMIN_KEY)))
    nobody = _settings(env, admin=AdminAccess(cidrs=()))
    without_key = Api(await _serve(proxy_server, keyed))
    with_key = Api(without_key.url, headers={"X-Proxy-Key": ADMIN_KEY})
    outside = Api(await _serve(proxy_server, nobody), headers={"X-Proxy-Key": ADMIN_KEY})
    for template, method, status in set(_operations()):
        if status not in {"401", "403"}:
            continue
        caller = without_key if status == "401" else outside
        answer = await caller.call(method, template)
        assert answer[0] == int(status), (method, template, answer)
    assert (await with_key.call("GET", "/_proxy/api/connections"))[0] == 200
    api.checked |= without_key.checked | outside.checked


@pytest.mark.parametrize("headers", [
    pytest.param({"Origin": "https://evil.example"}, id="other-origin"),
    pytest.param({"Sec-Fetch-Site": "cross-site"}, id="cross-site"),
])
@pytest.mark.parametrize("path", ["connections/nmbrs/revoke", "connections/nmbrs/reconnect",
                                  "reload"])
async def test_a_change_from_another_site_is_refused(
    make_env: MakeEnv, headers: dict[str, str], path: str
) -> None:
    env = await make_env()
    await env.browser.link("nmbrs")
    async with aiohttp.ClientSession() as session, session.post(
            f"{env.proxy_url}/_proxy/api/{path}", headers=headers) as response:
        assert response.status == 403
        assert response.content_type == "application/problem+json"
    assert env.sandbox.stats.revocations == 0


async def test_the_document_is_served(make_env: MakeEnv) -> None:
    env = await make_env()
    async with aiohttp.ClientSession() as session, session.get(
            env.proxy_url + OPENAPI_PATH) as response:
        assert response.status == 200
        served = await response.json()
    assert served == document()
    validate(served)
