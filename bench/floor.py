"""The floor under any proxy built on aiohttp's server: the same 1 KB JSON, answered by a bare
aiohttp application on uvloop, with no upstream, no middleware and no access control.

    python bench/floor.py PORT JSON_FILE

What it costs per request is what the proxy pays before it does anything of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web

from proxy.workers import new_event_loop


def main(port: int, body: bytes) -> None:
    async def answer(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    # uvloop's loop, as serve runs when it is installed: the floor at its lowest
    loop = new_event_loop({"NMBRS_PROXY_EVENT_LOOP": "uvloop"})
    web.run_app(app, host="127.0.0.1", port=port, loop=loop, access_log=None,
                print=None)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]).read_bytes())
