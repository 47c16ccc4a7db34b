"""The benchmark's identity service and upload sink, in one process beside the proxy under test.

Run with the project's interpreter (it imports the embedded sandbox):

    python bench/helper.py --redirect-uri http://127.0.0.1:P/_proxy/callback ...

It serves, on loopback:
- two sandboxes (proxy.sandbox, the strict fake Nmbrs identity service): `main`, whose access
  tokens live an hour (no refresh can disturb a throughput run), and `short`, whose tokens live
  `--short-lifetime` seconds (refresh under load). Each has control routes under `/_bench/`:
  the times of every token call, a token-endpoint delay, token minting for a preloaded store;
- a sink that reads a request body to its end and answers with the byte count (the 1 GB upload
  goes there through the proxy: nginx would answer before reading the body).

It prints one JSON line with the ports when it is ready, and runs until stdin closes or it is
killed; the benchmark driver owns it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from proxy.oauth.protocol import parse_token_response
from proxy.sandbox import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    NMBRS_SCOPES,
    Sandbox,
    SandboxClient,
    SandboxSettings,
)
from proxy.tokens.store import write_atomically

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HOST = "127.0.0.1"
CHUNK = 256 * 1024
EXPIRED_AGO_SECONDS = 7200.0  # a preloaded "expired" token was issued this long ago


@dataclasses.dataclass
class TokenCall:
    grant_type: str
    started: float
    ended: float = 0.0
    status: int = 0


class Controlled:
    """A sandbox plus the control routes the benchmark uses to watch and steer it."""

    def __init__(self, name: str, lifetime: float, redirect_uris: tuple[str, ...]) -> None:
        self.name = name
        client = SandboxClient(
            client_id=DEMO_CLIENT_ID,
            client_secret=DEMO_CLIENT_SECRET,
            redirect_uris=redirect_uris,
            allowed_scopes=frozenset(NMBRS_SCOPES),
        )
        self.sandbox = Sandbox(SandboxSettings(clients=(client,), access_token_lifetime=lifetime))
        self.calls: list[TokenCall] = []

    def app(self) -> web.Application:
        app = self.sandbox.app()
        app.middlewares.append(self._record_token_calls)
        app.router.add_get("/_bench/token-calls", self._token_calls)
        app.router.add_post("/_bench/token-delay", self._token_delay)
        app.router.add_post("/_bench/mint", self._mint)
        app.router.add_post("/_bench/preload", self._preload)
        return app

    @web.middleware
    async def _record_token_calls(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if request.path != "/connect/token":
            return await handler(request)
        body = await request.read()  # cached: the sandbox's handler reads the same bytes
        grant_type = parse_qs(body.decode("utf-8", "replace")).get("grant_type", [""])[0]
        call = TokenCall(grant_type=grant_type, started=time.time())
        self.calls.append(call)
        try:
            response = await handler(request)
            call.status = response.status
            return response
        finally:
            call.ended = time.time()

    async def _token_calls(self, _request: web.Request) -> web.Response:
        return web.json_response([dataclasses.asdict(call) for call in self.calls])

    async def _token_delay(self, request: web.Request) -> web.Response:
        self.sandbox.token_delay = float((await request.json())["seconds"])
        return web.json_response({"seconds": self.sandbox.token_delay})

    async def _mint(self, request: web.Request) -> web.Response:
        """A token answer minted without the browser flow (for the baselines' static header)."""
        scopes = (await request.json()).get("scopes", ["company.info.read"])
        return web.json_response(self.sandbox.issue_tokens_for_test(DEMO_CLIENT_ID, scopes))

    async def _preload(self, request: web.Request) -> web.Response:
        """Write a token file holding a minted set per connection, as a proxy would save it.

        With `expired`, the sets were issued two hours ago: their access tokens are past `exp`
        (the proxy must refresh before forwarding) while their refresh tokens still work.
        """
        spec: dict[str, Any] = await request.json()
        scopes = tuple(spec.get("scopes", ["offline_access", "company.info.read"]))
        sandbox = self.sandbox
        real_clock = sandbox.clock
        issued_at = time.time() - (EXPIRED_AGO_SECONDS if spec.get("expired") else 0.0)
        sandbox.clock = lambda: issued_at
        try:
            entries = {
                name: parse_token_response(
                    sandbox.issue_tokens_for_test(DEMO_CLIENT_ID, scopes),
                    requested_at=issued_at,
                    previous=None,
                    requested_scopes=scopes,
                ).to_json()
                for name in spec["connections"]
            }
        finally:
            sandbox.clock = real_clock
        document = {"version": 1, "connections": entries}
        await asyncio.to_thread(
            write_atomically, Path(spec["path"]), json.dumps(document).encode()
        )
        return web.json_response({"written": len(entries)})


async def _sink(request: web.Request) -> web.Response:
    """Read the whole body, keep nothing, answer how many bytes arrived."""
    size = 0
    while chunk := await request.content.read(CHUNK):
        size += len(chunk)
    return web.json_response({"bytes": size})


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    return runner


async def main(args: argparse.Namespace) -> None:
    uris = tuple(args.redirect_uri)
    main_idp = Controlled("main", 3600.0, uris)
    short_idp = Controlled("short", args.short_lifetime, uris)
    sink = web.Application(client_max_size=0)
    sink.router.add_route("*", "/{tail:.*}", _sink)
    runners = [
        await _serve(main_idp.app(), args.main_port),
        await _serve(short_idp.app(), args.short_port),
        await _serve(sink, args.sink_port),
    ]
    main_idp.sandbox.base_url = f"http://{HOST}:{args.main_port}"
    short_idp.sandbox.base_url = f"http://{HOST}:{args.short_port}"
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    try:
        # Until the driver closes our stdin (or kills us).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        for runner in runners:
            await runner.cleanup()


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--main-port", type=int, required=True)
    parser.add_argument("--short-port", type=int, required=True)
    parser.add_argument("--sink-port", type=int, required=True)
    parser.add_argument("--short-lifetime", type=float, default=12.0)
    parser.add_argument("--redirect-uri", action="append", default=[])
    return parser.parse_args(argv)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(_parse()))
