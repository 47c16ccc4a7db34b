"""Several connections in one proxy: two Nmbrs customers and one Nomba account side by side.

Each upstream is its own strict fake with its own keys, so a token or header that crossed from
one connection to another would be refused there, and is also looked for explicitly.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.config import ConnectionSettings
from proxy.core.secret import Secret
from proxy.forwarding.state import PROXY_STATE
from proxy.sandbox import MachineClient, MachineSettings, NombaSandbox
from proxy.tokens.store import FileStore
from tests.conftest import ProxyFactory, RunningSandbox, start_running_sandbox, until

NOMBA_CLIENT = MachineClient(client_id="nomba-client", client_secret="nomba:s3cret",
                             account_id="acc-nomba-1")  # fmt: skip
REQUESTS_EACH = 40


@dataclass
class Three:
    acme: RunningSandbox
    globex: RunningSandbox
    nomba: NombaSandbox
    nomba_url: str
    proxy: TestClient[web.Request, web.Application]
    store_path: Path


@pytest.fixture
async def three(make_proxy: ProxyFactory, tmp_path: Path) -> AsyncIterator[Three]:
    acme, acme_server = await start_running_sandbox(subscription_key="acme-key")
    globex, globex_server = await start_running_sandbox(subscription_key="globex-key")
    nomba = NombaSandbox(MachineSettings(clients=(NOMBA_CLIENT,)))
    nomba_server = TestServer(nomba.app(), host="127.0.0.1")
    await nomba_server.start_server()
    nomba_url = str(nomba_server.make_url("")).rstrip("/")
    store_path = tmp_path / "state" / "tokens.json"
    proxy = await make_proxy(
        acme.connection("acme", prefix="/acme/", headers=(("X-Customer", "acme"),)),
        globex.connection("globex", prefix="/globex/", headers=(("X-Customer", "globex"),)),
        ConnectionSettings(
            name="nomba",
            provider="nomba",
            prefix="/nomba/",
            upstream=nomba_url,
            client_id=NOMBA_CLIENT.client_id,
            client_secret=Secret(NOMBA_CLIENT.client_secret),
            token_url=f"{nomba_url}/v1/auth/token",
            account_id=NOMBA_CLIENT.account_id,
        ),
        tokens={"acme": acme.tokens(), "globex": globex.tokens()},
        store_path=store_path,
    )
    manager = proxy.app[PROXY_STATE].connections["nomba"].manager
    await until(lambda: manager.tokens is not None)
    yield Three(acme, globex, nomba, nomba_url, proxy, store_path)
    for server in (acme_server, globex_server, nomba_server):
        await server.close()


def _token(three: Three, name: str) -> str:
    tokens = three.proxy.app[PROXY_STATE].connections[name].manager.tokens
    assert tokens is not None
    return tokens.access_token


async def test_no_token_or_header_crosses_between_three_connections(three: Three) -> None:
    # A client's attempts to pass credentials of its own are replaced on every connection.
    spoof = {"Authorization": "Bearer stolen", "X-Subscription-Key": "stolen-key"}
    nmbrs_spoof = {**spoof, "X-Customer": "spoofed"}
    targets = (
        [("/acme/api/companies?pageSize=2", nmbrs_spoof)] * REQUESTS_EACH
        + [("/globex/api/debtors", nmbrs_spoof)] * REQUESTS_EACH
        + [("/nomba/v1/accounts/balance", {**spoof, "accountId": "acc-someone-else"})]
        * REQUESTS_EACH
    )
    random.Random(4).shuffle(targets)  # interleaved, all at once

    async def one(path: str, headers: dict[str, str]) -> int:
        async with three.proxy.get(path, headers=headers) as response:
            await response.read()
            return response.status

    statuses = await asyncio.gather(*(one(path, headers) for path, headers in targets))
    assert statuses == [200] * len(targets)

    tokens = {name: _token(three, name) for name in ("acme", "globex", "nomba")}
    assert len(set(tokens.values())) == 3
    expected = {
        "acme": (three.acme.sandbox.stats.api_log, {"X-Subscription-Key": "acme-key",
                                                    "X-Customer": "acme"}),
        "globex": (three.globex.sandbox.stats.api_log, {"X-Subscription-Key": "globex-key",
                                                        "X-Customer": "globex"}),
        "nomba": (three.nomba.stats.api_log, {"accountId": "acc-nomba-1"}),
    }  # fmt: skip
    for name, (log, own) in expected.items():
        assert len(log) == REQUESTS_EACH
        others = [token for other, token in tokens.items() if other != name]
        for seen in log:
            assert seen.headers.getall("Authorization") == [f"Bearer {tokens[name]}"]
            for header, value in own.items():
                assert seen.headers.getall(header) == [value], (name, header)
            sent = "\n".join(f"{k}: {v}" for k, v in seen.headers.items())
            for leaked in [*others, "stolen", "spoofed", "acc-someone-else"]:
                assert leaked not in sent, (name, leaked)
            if name != "nomba":
                assert "accountId" not in seen.headers
            else:
                assert "X-Subscription-Key" not in seen.headers
                assert "X-Customer" not in seen.headers

    stats = [three.acme.sandbox.stats, three.globex.sandbox.stats]
    assert [s.api_statuses[200] for s in stats] == [REQUESTS_EACH, REQUESTS_EACH]
    assert [s.token_requests.total() for s in stats] == [0, 0]  # preloaded, still fresh
    assert three.nomba.stats.token_requests.total() == 1  # fetched once, at start


async def test_each_connection_keeps_its_own_tokens_refresher_and_row(three: Three) -> None:
    before = {name: _token(three, name) for name in ("acme", "globex", "nomba")}
    three.acme.sandbox.revoke_access_tokens()  # only acme's upstream refuses its token now

    assert (await three.proxy.get("/acme/api/companies")).status == 200  # refreshed, replayed
    assert (await three.proxy.get("/globex/api/companies")).status == 200
    assert (await three.proxy.get("/nomba/v1/accounts/balance")).status == 200
    after = {name: _token(three, name) for name in ("acme", "globex", "nomba")}
    assert after["acme"] != before["acme"]
    assert {k: after[k] for k in ("globex", "nomba")} == {
        k: before[k] for k in ("globex", "nomba")
    }
    assert three.acme.sandbox.stats.token_requests["refresh_token"] == 1
    assert three.globex.sandbox.stats.token_requests.total() == 0
    assert three.nomba.stats.token_requests.total() == 1

    names = {task.get_name() for task in asyncio.all_tasks()}
    assert {"refresher:acme", "refresher:globex", "refresher:nomba"} <= names

    stored = {name: await FileStore(three.store_path).load(name)
              for name in ("acme", "globex", "nomba")}  # fmt: skip
    assert {name: tokens.access_token if tokens else None
            for name, tokens in stored.items()} == after  # fmt: skip

    ready = await (await three.proxy.get("/_proxy/readyz")).json()
    assert ready["ready"] is True
    assert set(ready["connections"]) == {"acme", "globex", "nomba"}

    page = await (await three.proxy.get("/_proxy/")).text()
    cards = re.findall(r'<section class="card" id="connection-(.*?)" data-state="linked">(.*?)'
                       r"</section>", page, flags=re.DOTALL)
    assert [name for name, _ in cards] == ["acme", "globex", "nomba"]
    found = dict(cards)
    for consented in ("acme", "globex"):
        assert 'action="/_proxy/login"' in found[consented]
        assert f'name="connection" value="{consented}"' in found[consented]
    assert "Machine credentials: the proxy fetches its tokens by itself" in found["nomba"]
    assert 'action="/_proxy/login"' not in found["nomba"]
    assert "<code>/nomba/</code>" in found["nomba"]
    for secret in ("acme-key", "globex-key", NOMBA_CLIENT.client_secret, *after.values()):
        assert secret not in page
