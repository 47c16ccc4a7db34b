"""Reloading the configuration file in a running proxy (POST /_proxy/api/reload), in process:
what a reload applies, what it leaves for a restart, and that a bad file changes nothing."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.config import load, reload_source
from proxy.forwarding.state import PROXY_STATE, ProxyState
from proxy.ops.reload import RELOADER
from proxy.tokens.store import FileStore
from tests.conftest import SUBSCRIPTION_KEY, ProxyTestServer, RecordingUpstream, token_set

OLD_KEY, NEW_KEY, STAYING_KEY = "key-of-the-old-client", "key-of-the-new-client", "key-staying"


def _client(name: str, key: str) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f'[[clients]]\nname = "{name}"\nkey_sha256 = "{digest}"\n'


def config_text(upstream: str, store: Path, *clients: tuple[str, str], port: int = 8080,
                audit: str = "off", extra: str = "") -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
[store]
path = "{store}"
[session]
secret = "a-session-secret-for-the-tests"
[connections.nmbrs]
provider = "nmbrs"
upstream = "{upstream}"
issuer = "http://127.0.0.1:9"
subscription_key = "{SUBSCRIPTION_KEY}"
client_id = "PartnerApp_tests"
client_secret = "secret"
redirect_uri = "http://127.0.0.1:{port}/_proxy/callback"
scopes = ["offline_access"]
[audit]
destination = "{audit}"
{extra}
""" + "".join(_client(name, key) for name, key in clients)


class Running:
    def __init__(self, server: TestServer, config: Path, store: Path, upstream: str) -> None:
        self.server, self.config, self.store, self.upstream = server, config, store, upstream
        self.url = str(server.make_url("")).rstrip("/")

    def write(self, *clients: tuple[str, str], **fields: Any) -> None:
        self.config.write_text(config_text(self.upstream, self.store, *clients, **fields))

    async def get(self, target: str, key: str | None) -> int:
        headers = {} if key is None else {"X-Proxy-Key": key}
        async with aiohttp.ClientSession() as session, session.get(
                self.url + target, headers=headers) as response:
            await response.read()
            return response.status

    async def reload(self) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as session, session.post(
                self.url + "/_proxy/api/reload", json={}) as response:
            return response.status, json.loads(await response.read())

    async def metric(self, result: str) -> float:
        async with aiohttp.ClientSession() as session, session.get(
                self.url + "/_proxy/metrics") as response:
            text = await response.text()
        name = f'nmbrs_proxy_config_reloads_total{{result="{result}"}}'
        found = [line.split()[-1] for line in text.splitlines() if line.startswith(name)]
        return float(found[0]) if found else 0.0


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(upstream: RecordingUpstream, tmp_path: Path) -> AsyncIterator[Start]:
    servers: list[TestServer] = []

    async def run(*clients: tuple[str, str], **fields: Any) -> Running:
        store = tmp_path / "state" / "tokens.json"
        await FileStore(store).save("nmbrs", token_set())
        config = tmp_path / "config.toml"
        config.write_text(config_text(upstream.url, store, *clients, **fields))
        source = functools.partial(reload_source, config, "127.0.0.1")
        app = create_app(load(config, {}), reload_from=source)
        server = ProxyTestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Running(server, config, store, upstream.url)

    yield run
    for server in servers:
        await server.close()


async def test_a_reload_swaps_the_client_keys(start: Start, upstream: RecordingUpstream) -> None:
    proxy = await start(("old", OLD_KEY), ("staying", STAYING_KEY))
    assert await proxy.get("/api/x", OLD_KEY) == 200
    assert await proxy.get("/api/x", NEW_KEY) == 401
    proxy.write(("new", NEW_KEY), ("staying", STAYING_KEY))
    status, outcome = await proxy.reload()
    assert status == 200
    assert outcome == {"result": "applied", "applied": ["clients"], "needs_restart": [],
                       "errors": []}
    for target in ("/api/x", "/api/%78"):  # the data plane, and the application's own path
        assert await proxy.get(target, OLD_KEY) == 401
        assert await proxy.get(target, NEW_KEY) == 200
        assert await proxy.get(target, STAYING_KEY) == 200
    assert await proxy.metric("applied") == 1
    token_calls = [seen for seen in upstream.seen if seen.raw_path.startswith("/connect")]
    assert token_calls == []  # the token set in use stays: no new login, no token call


async def test_an_unchanged_file_changes_nothing(start: Start) -> None:
    proxy = await start(("old", OLD_KEY))
    status, outcome = await proxy.reload()
    assert (status, outcome["result"], outcome["applied"]) == (200, "unchanged", [])
    assert await proxy.metric("unchanged") == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server\nport = 1", "invalid TOML"),
        (None, "server.no_such_key"),  # an unknown key (written below)
        (None, "NMBRS_PROXY_TEST_MISSING"),  # a missing env: secret
    ],
    ids=["bad-toml", "unknown-key", "missing-secret"],
)
async def test_an_invalid_file_leaves_the_proxy_serving_as_before(
    start: Start, text: str | None, expected: str,
) -> None:
    proxy = await start(("old", OLD_KEY))
    if text is not None:
        proxy.config.write_text(text)
    elif expected == "server.no_such_key":
        proxy.config.write_text(proxy.config.read_text().replace(
            "[store]", "no_such_key = 1\n[store]"))
    else:
        proxy.write(("new", NEW_KEY))
        proxy.config.write_text(proxy.config.read_text().replace(
            'client_secret = "secret"', f'client_secret = "env:{expected}"'))
    status, problem = await proxy.reload()
    assert status == 422
    assert problem["type"] == "urn:nmbrs-proxy:problem:invalid-configuration"
    assert any(expected in error for error in problem["errors"]), problem
    assert await proxy.get("/api/x", OLD_KEY) == 200  # exactly as before
    assert await proxy.get("/api/x", NEW_KEY) == 401
    assert await proxy.metric("invalid") == 1


async def test_what_needs_a_restart_is_reported_and_the_rest_applied(start: Start) -> None:
    proxy = await start(("old", OLD_KEY))
    proxy.write(("new", NEW_KEY), port=9999)
    status, outcome = await proxy.reload()
    assert status == 200
    assert outcome["applied"] == ["connections.nmbrs", "clients"]  # its redirect_uri's port
    assert outcome["needs_restart"] == ["server.port"]
    assert await proxy.get("/api/x", NEW_KEY) == 200


async def test_a_reload_that_would_open_the_proxy_to_anyone_is_refused(start: Start) -> None:
    """Listening beyond loopback without clients is refused at start; the same goes for a
    reload, judged by the address the proxy really listens on."""
    proxy = await start(("old", OLD_KEY))
    wide = functools.partial(reload_source, proxy.config, "0.0.0.0")
    proxy.server.app[RELOADER].source = wide  # as if started with --host 0.0.0.0
    proxy.write()  # no clients at all
    status, problem = await proxy.reload()
    assert status == 422
    assert any("0.0.0.0" in error for error in problem["errors"]), problem
    assert await proxy.get("/api/x", OLD_KEY) == 200


async def test_a_reload_switches_the_audit_log(start: Start, tmp_path: Path) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    proxy = await start(("old", OLD_KEY), audit=str(first))
    assert await proxy.get("/api/one", OLD_KEY) == 200
    proxy.write(("old", OLD_KEY), audit=str(second), extra="include_query = true")
    status, outcome = await proxy.reload()
    assert status == 200
    assert outcome["applied"] == ["audit.destination", "audit.include_query"]
    assert await proxy.get("/api/two?page=3", OLD_KEY) == 200
    await proxy.server.close()  # writes what is queued
    assert [json.loads(line)["path"] for line in first.read_text().splitlines()] == ["/api/one"]
    lines = [json.loads(line) for line in second.read_text().splitlines()]
    assert [line["path"] for line in lines if line["path"].startswith("/api")] == [
        "/api/two?page=3"]


async def test_a_reload_sets_the_log_level(start: Start) -> None:
    root = logging.getLogger()
    before = root.level
    try:
        proxy = await start(("old", OLD_KEY))
        proxy.write(("old", OLD_KEY), extra='[logs]\nlevel = "warning"')
        status, outcome = await proxy.reload()
        assert (status, outcome["applied"]) == (200, ["logs.level"])
        assert root.level == logging.WARNING
        proxy.write(("old", OLD_KEY), extra='[logs]\nlevel = "loud"')
        status, outcome = await proxy.reload()
        assert status == 422
        assert any(error.startswith("logs.level: must be one of") for error in outcome["errors"])
        assert root.level == logging.WARNING
        proxy.write(("old", OLD_KEY))  # the key removed: the level the process started with
        status, outcome = await proxy.reload()
        assert (status, outcome["applied"]) == (200, ["logs.level"])
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)


async def test_a_proxy_started_without_a_file_says_so(
    upstream: RecordingUpstream, tmp_path: Path,
) -> None:
    store = tmp_path / "tokens.json"
    config = tmp_path / "config.toml"
    config.write_text(config_text(upstream.url, store))
    server = ProxyTestServer(create_app(load(config, {})), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session, session.post(
                str(server.make_url("/_proxy/api/reload"))) as response:
            assert response.status == 409
            assert "not started from a file" in (await response.json())["detail"]
    finally:
        await server.close()


async def test_a_form_from_another_site_cannot_reload(start: Start) -> None:
    proxy = await start(("old", OLD_KEY))
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url + "/_proxy/api/reload", headers={"Origin": "https://evil.example"}
    ) as response:
        assert response.status == 403
    assert await proxy.metric("applied") == 0


# --- connections ------------------------------------------------------------------------------


def other_connection(upstream: str, *, callback: str = "/_proxy/callback",
                     client_id: str = "PartnerApp_other") -> str:
    return f"""
[connections.other]
provider = "nmbrs"
prefix = "/other/"
upstream = "{upstream}"
issuer = "http://127.0.0.1:9"
subscription_key = "{SUBSCRIPTION_KEY}"
client_id = "{client_id}"
client_secret = "secret"
redirect_uri = "http://127.0.0.1:8080{callback}"
scopes = ["offline_access"]
"""


async def test_a_reload_adds_and_removes_connections(
    start: Start, upstream: RecordingUpstream,
) -> None:
    proxy = await start(("old", OLD_KEY))
    await FileStore(proxy.store).save("other", token_set("access-of-other"))
    assert await proxy.get("/other/api/x", OLD_KEY) == 200
    assert upstream.seen[-1].raw_path == "/other/api/x"  # the catch-all connection served it
    proxy.write(("old", OLD_KEY), extra=other_connection(upstream.url))
    status, outcome = await proxy.reload()
    assert (status, outcome["applied"], outcome["needs_restart"]) == (
        200, ["connections.other"], [])
    assert await proxy.get("/other/api/x", OLD_KEY) == 200
    assert upstream.seen[-1].raw_path == "/api/x"  # its own connection, prefix stripped
    assert upstream.seen[-1].headers["authorization"] == ["Bearer access-of-other"]
    state = proxy.server.app[PROXY_STATE]
    assert set(state.refreshers) == {"nmbrs", "other"}

    proxy.write(("old", OLD_KEY))
    status, outcome = await proxy.reload()
    assert (status, outcome["applied"]) == (200, ["connections.other"])
    assert await proxy.get("/other/api/x", OLD_KEY) == 200
    assert upstream.seen[-1].raw_path == "/other/api/x"  # back to the catch-all
    assert set(state.refreshers) == {"nmbrs"}
    await until_retired(state)


async def until_retired(state: ProxyState) -> None:
    for _ in range(200):
        if not state.retiring:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a retired token manager did not stop")


async def test_a_changed_connection_keeps_its_token_manager_when_its_identity_stays(
    start: Start, upstream: RecordingUpstream,
) -> None:
    second = RecordingUpstream()
    server = TestServer(second.app(), host="127.0.0.1")
    await server.start_server()
    try:
        proxy = await start(("old", OLD_KEY))
        state = proxy.server.app[PROXY_STATE]
        before = state.connections["nmbrs"]
        proxy.upstream = str(server.make_url("")).rstrip("/")  # the same, behind another URL
        proxy.write(("old", OLD_KEY))
        status, outcome = await proxy.reload()
        assert (status, outcome["applied"]) == (200, ["connections.nmbrs"])
        after = state.connections["nmbrs"]
        assert after is not before
        assert after.manager is before.manager  # same token set, same refresher
        assert state.refreshers["nmbrs"] is not None
        assert await proxy.get("/api/x", OLD_KEY) == 200
        assert len(second.seen) == 1
        assert upstream.seen == []
        assert second.seen[0].headers["authorization"] == ["Bearer access-1"]
    finally:
        await server.close()


async def test_a_new_identity_gets_a_new_token_manager_and_the_old_one_stops(
    start: Start, upstream: RecordingUpstream,
) -> None:
    proxy = await start(("old", OLD_KEY), extra=other_connection(upstream.url))
    state = proxy.server.app[PROXY_STATE]
    before = state.connections["other"]
    old_refresher = state.refreshers["other"]
    proxy.write(("old", OLD_KEY), extra=other_connection(upstream.url, client_id="another"))
    status, outcome = await proxy.reload()
    assert (status, outcome["applied"]) == (200, ["connections.other"])
    assert state.connections["other"].manager is not before.manager
    await until_retired(state)
    assert old_refresher.cancelled()
    assert state.refreshers["other"] is not old_refresher


async def test_a_connection_on_a_callback_path_not_served_yet_waits_for_a_restart(
    start: Start, upstream: RecordingUpstream,
) -> None:
    proxy = await start(("old", OLD_KEY))
    proxy.write(("old", OLD_KEY), extra=other_connection(upstream.url, callback="/cb/other"))
    status, outcome = await proxy.reload()
    assert status == 200
    assert outcome["result"] == "unchanged"
    assert outcome["needs_restart"] == ["connections.other.redirect_uri"]
    assert "other" not in proxy.server.app[PROXY_STATE].connections


async def test_a_reload_gives_a_client_a_quota(start: Start) -> None:
    proxy = await start(("old", OLD_KEY))
    assert [await proxy.get("/api/x", OLD_KEY) for _ in range(3)] == [200, 200, 200]
    proxy.write(("old", OLD_KEY))
    proxy.config.write_text(proxy.config.read_text() + "max_requests_per_second = 0.5\n")
    status, outcome = await proxy.reload()
    assert (status, outcome["applied"]) == (200, ["clients"])
    assert [await proxy.get("/api/x", OLD_KEY) for _ in range(2)] == [200, 429]
