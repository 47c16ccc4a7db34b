"""Serving one application until SIGTERM, then stopping without dropping a request.

On SIGTERM (or SIGINT), in this order:
1. Stop accepting. The listening sockets close. A socket inherited from a service manager
   (systemd socket activation) stays open there, and in a replacement process started with
   the same socket, so connections waiting in its backlog are accepted by the replacement,
   not reset: that is what makes a rolling restart lose nothing.
2. Drain. Every response from now on says `Connection: close`, so clients open their next
   connection to whoever is still accepting. Requests in flight run to completion, for up to
   `[server] shutdown_grace_seconds`.
3. Close. Idle keep-alive connections are closed; whatever still runs after the grace period
   is cancelled. Then the app's cleanup runs: refreshers stop, the upstream pools close.
A second signal during the drain cuts it short.

aiohttp's own `run_app(shutdown_timeout=T)` was not used: measured with aiohttp 3.14, it
closes idle keep-alive connections at once (a client about to reuse one gets a reset), its
answers to requests in flight still offer keep-alive, and a request still running is cancelled
only after twice T (`RequestHandler.shutdown` waits T for the handler, then T again after
cancelling its payload).

A service manager is told when the proxy is ready and when it stops (sd_notify(3)).

With `[server] tls_cert` the proxy's listener speaks HTTPS (and the ops listener too with
`ops_tls`). Its SSLContext is made once; a reload hands new handshakes a renewed certificate
through it (proxy.core.listener_tls), so no connection is dropped and none is refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.web_server import Server

from proxy.acceptor import AcceptingSite, address_url, bound_sockets
from proxy.core.listener_tls import ListenerCertificates
from proxy.forwarding.dataplane import DATA_PLANE
from proxy.forwarding.observe import TRAFFIC
from proxy.ops.reload import LISTENER_CERTIFICATES, RELOADER

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START: Final = 3
# After the last request in flight finished, idle connections get this long to send one more
# request (answered with Connection: close) before they are closed.
LINGER_SECONDS: Final = 0.2
_POLL_SECONDS: Final = 0.02
# What aiohttp waits (twice) for a handler that outlived the grace period before cancelling it.
_CUT_OFF_SECONDS: Final = 0.1
# Connections the kernel holds for accept(): a burst of new clients larger than this waits out a
# SYN retransmission (1 s) before its first request. asyncio's default is 100, aiohttp's 128;
# nginx listens with 511. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG: Final = 1024


def listen_fds(environ: Mapping[str, str], pid: int) -> int:
    """How many sockets a service manager passed, from fd 3 on (sd_listen_fds(3))."""
    if environ.get("LISTEN_PID") != str(pid):
        return 0
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return 0
    return max(count, 0)


def inherited_sockets(environ: Mapping[str, str], pid: int) -> list[socket.socket]:
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + listen_fds(environ, pid)):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)  # noqa: FBT003 - the socket API
        sockets.append(sock)
    return sockets


def notify(state: str, environ: Mapping[str, str]) -> bool:
    """Send `state` ("READY=1", "STOPPING=1", ...) to the service manager, if there is one."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify the service manager (%s)", exc.strerror)
        return False
    return True


class ProxyRunner(web.AppRunner):
    """An AppRunner whose server hands each request to the app's data plane first.

    The data plane (proxy.forwarding.dataplane) forwards most requests itself and passes the
    rest to the application's own handler; an app without one (the ops listener's) is served
    as usual.
    """

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        wrap = self.app.get(DATA_PLANE)
        if wrap is not None:
            server.request_handler = wrap(self.app, server.request_handler)
        return server


@dataclass(frozen=True)
class OpsListener:
    """The second listener, for probes and scrapers (see `proxy.app.create_ops_app`)."""

    app: web.Application
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None  # HTTPS (`[server] ops_tls`); None: plain HTTP

    async def start(self) -> web.AppRunner:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=_CUT_OFF_SECONDS)
        await runner.setup()
        # reuse_port: the process that replaces this one in a rolling restart binds it too.
        await web.TCPSite(runner, self.host, self.port, reuse_address=True,
                          reuse_port=True, ssl_context=self.ssl_context).start()
        scheme = "http" if self.ssl_context is None else "https"
        addresses = [address_url(name, scheme) for name in runner.addresses]
        log.info("probes and metrics on %s", ", ".join(addresses),
                 extra={"event": "ops_listening", "addresses": addresses})
        return runner


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    grace: float,
    sockets: Sequence[socket.socket] = (),
    environ: Mapping[str, str] | None = None,
    ops: OpsListener | None = None,
    reuse_port: bool = False,
    tls: ListenerCertificates | None = None,
) -> None:
    """Run `app` until SIGTERM or SIGINT, then stop as described above.

    `ops`, when given, is served on its own address from start to finish: it keeps answering
    probes (readiness says "draining") while the proxy drains. `tls`, when given, makes the
    proxy's listener speak HTTPS; a reload of `app` renews its certificate.
    """
    env = os.environ if environ is None else environ
    context = None
    if tls is not None:
        app[LISTENER_CERTIFICATES] = tls  # before the app starts: its state is then frozen
        context = tls.proxy.listening
    runner = ProxyRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=_CUT_OFF_SECONDS
    )
    await runner.setup()
    ops_runner = None if ops is None else await ops.start()
    signals = _Signals()
    _reload_on_sighup(app)
    # reuse_port: the workers of `serve --workers N` all bind the same port.
    listening = list(sockets) or bound_sockets(host, port, backlog=LISTEN_BACKLOG,
                                               reuse_port=reuse_port)
    sites = [AcceptingSite(runner, sock, ssl_context=context) for sock in listening]
    try:
        for site in sites:
            await site.start()
        scheme = "http" if context is None else "https"
        addresses = [address_url(name, scheme) for name in runner.addresses]
        log.info(
            "listening on %s", ", ".join(addresses), extra={"event": "listening",
                                                           "addresses": addresses},
        )
        notify(f"READY=1\nSTATUS=listening on {', '.join(addresses)}", env)
        signum = await signals.first
        notify("STOPPING=1", env)
        traffic = app[TRAFFIC]
        log.info(
            "stopping (%s): no new connections; %d request(s) in flight get up to %g s",
            signal.Signals(signum).name,
            traffic.in_flight,
            grace,
            extra={"event": "stopping", "in_flight": traffic.in_flight},
        )
        for site in sites:
            await site.stop()
        traffic.draining = True
        started = time.perf_counter()
        drained = await _drain(app, grace, signals.again)
        elapsed = time.perf_counter() - started
        if drained:
            log.info("drained in %.2f s", elapsed, extra={"event": "drained"})
        else:
            log.warning(
                "grace period over after %.2f s: %d request(s) are cut off",
                elapsed,
                traffic.in_flight,
                extra={"event": "cut_off", "in_flight": traffic.in_flight},
            )
    finally:
        await runner.cleanup()
        if ops_runner is not None:
            await ops_runner.cleanup()
        signals.close()
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
    log.info("stopped", extra={"event": "stopped"})


def _reload_on_sighup(app: web.Application) -> None:
    """SIGHUP (what `systemctl reload` and most supervisors send) reloads the configuration
    file (proxy.ops.reload) instead of ending the process."""
    loop = asyncio.get_running_loop()
    reloader = app.get(RELOADER)
    running: set[asyncio.Task[object]] = set()

    def on_sighup() -> None:
        if reloader is None:
            log.warning("SIGHUP: this app has nothing to reload")
            return
        log.info("SIGHUP: reloading the configuration", extra={"event": "sighup"})
        task: asyncio.Task[object] = loop.create_task(reloader.reload(app))
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)


_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class _Signals:
    """SIGTERM and SIGINT: the first one stops the server, a second one cuts the drain short."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.first: asyncio.Future[int] = self._loop.create_future()
        self.again = asyncio.Event()
        for signum in _STOP_SIGNALS:
            self._loop.add_signal_handler(signum, self._received, signum)

    def _received(self, signum: int) -> None:
        if self.first.done():
            self.again.set()
        else:
            self.first.set_result(signum)

    def close(self) -> None:
        for signum in _STOP_SIGNALS:
            self._loop.remove_signal_handler(signum)


async def _drain(app: web.Application, grace: float, hurry: asyncio.Event) -> bool:
    """Wait for requests in flight to finish; False when the grace period ran out first."""
    traffic = app[TRAFFIC]
    deadline = time.perf_counter() + grace
    while True:
        now = time.perf_counter()
        if traffic.in_flight == 0 and now - traffic.last_change >= LINGER_SECONDS:
            return True
        if now >= deadline or hurry.is_set():
            return traffic.in_flight == 0
        await asyncio.sleep(_POLL_SECONDS)
