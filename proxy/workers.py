"""`nmbrs-proxy serve`: one process, or N worker processes sharing one port (SO_REUSEPORT).

With `--workers N` the parent process only supervises. It spawns N workers (fresh interpreters:
no event loop, socket or lock is inherited), each binding the same port with SO_REUSEPORT so
the kernel spreads connections over them (the ops listener, when configured, is shared the
same way). A worker that dies is replaced; workers that keep exiting right after they start
(a port in use, a store that cannot be read) make the parent give up. SIGTERM or SIGINT goes
on to every worker, which drains as a single process does (see `proxy.server`); one that has
not stopped within the grace period and a few seconds more is killed. Workers share the
token store, whose refresh lease keeps them from renewing the token together. Each worker's
log records carry its process id as `worker`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Final

from proxy.config import ConfigError, Settings
from proxy.core import redact
from proxy.core.listener_tls import ListenerCertificates
from proxy.core.secret import revealed_in
from proxy.telemetry.logs import set_level, setup_logging

log = logging.getLogger(__name__)

EXIT_FAILED: Final = 1
# Beyond the server's own grace period: how long stopping workers get before they are killed.
STOP_MARGIN_SECONDS: Final = 5.0
# A worker that exits by itself (not killed by a signal) sooner than this after it started
# counts toward giving up ...
MIN_UPTIME_SECONDS: Final = 5.0
# ... and this many such exits in a row stop the whole server.
MAX_EARLY_EXITS: Final = 3
_POLL_SECONDS: Final = 0.5


def new_event_loop(environ: Mapping[str, str] = os.environ) -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (the `fast` extra), else asyncio's own;
    NMBRS_PROXY_EVENT_LOOP=asyncio or =uvloop chooses.

    uvloop serves 2-14 % more requests per second (BENCHMARKS.md). Until the proxy accepted its
    connections itself (proxy.acceptor), uvloop's server took a burst of new clients a few per
    turn of a busy loop, and asyncio's loop was the default for that reason.
    """
    choice = environ.get("NMBRS_PROXY_EVENT_LOOP", "auto")
    if choice in {"uvloop", "auto"}:
        try:
            import uvloop  # noqa: PLC0415 - optional: the `fast` extra
        except ImportError:
            if choice == "uvloop":
                log.warning("NMBRS_PROXY_EVENT_LOOP=uvloop, but uvloop is not installed (the "
                            "fast extra): asyncio's loop it is")
        else:
            log.info("event loop: uvloop")
            return uvloop.new_event_loop()
    elif choice != "asyncio":
        log.warning("NMBRS_PROXY_EVENT_LOOP=%r is neither asyncio nor uvloop: asyncio's loop",
                    choice[:40])
    log.info("event loop: asyncio")
    return asyncio.new_event_loop()


# Reads the configuration file again (a reload); picklable, for the spawned workers.
SettingsSource = Callable[[], Settings]


# Young objects the cyclic collector lets pile up before it looks at them (Python's default:
# 700). A forwarded request makes a few hundred, nearly all freed by reference counting; with
# the default, 256 requests in flight set off a collection every few requests, and what each
# one finds alive is promoted, to be walked again by the rarer full collections (20 ms each).
YOUNG_OBJECTS_PER_COLLECTION: Final = 10_000


def settle_heap() -> None:
    """Before serving: what start-up made (modules, settings, the app) is moved out of the
    collector's sight for good (gc.freeze), and the youngest generation is allowed to grow
    (what the collector costs under load, before and after: BENCHMARKS.md).
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION, middle, old)


def serve(
    settings: Settings, host: str, port: int, *, reuse_port: bool = False,
    sockets: Sequence[socket.socket] = (), reload_from: SettingsSource | None = None,
) -> int:
    """Run the proxy in this process until SIGTERM or SIGINT (SIGHUP: reload); the exit code."""
    from proxy.app import create_app, create_ops_app  # noqa: PLC0415 - keeps the CLI light
    from proxy.server import OpsListener  # noqa: PLC0415 - as above
    from proxy.server import serve as serve_app  # noqa: PLC0415 - as above

    server = settings.server
    try:  # each process makes its own contexts (they cannot be pickled for the workers)
        tls = (None if server.tls is None
               else ListenerCertificates(server.tls, ops=server.ops_tls))
    except ValueError as exc:  # checked when the file was read, but files change
        log.error("cannot serve: server.%s", exc)  # noqa: TRY400 - the message says it all
        return EXIT_FAILED
    app = create_app(settings, reload_from=reload_from)
    ops_context = None if tls is None or tls.ops is None else tls.ops.listening
    ops = (
        None if server.ops_port is None
        else OpsListener(create_ops_app(app), server.ops_host, server.ops_port, ops_context)
    )
    settle_heap()
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve_app(
                app,
                host=host,
                port=port,
                grace=server.shutdown_grace_seconds,
                sockets=sockets,
                ops=ops,
                reuse_port=reuse_port,
                tls=tls,
            ))
    except OSError as exc:  # a port in use, a token store that cannot be read, ...
        log.error("cannot serve: %s", exc)  # noqa: TRY400 - the message says it all
        return EXIT_FAILED
    return 0


class _WorkerField(logging.Filter):
    """Adds `worker=<pid>` to every record, so the workers' lines can be told apart."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self._pid = pid

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self._pid
        return True


@dataclass(frozen=True)
class _WorkerArgs:
    """What a spawned worker is given (pickled)."""

    settings: Settings
    host: str
    port: int
    log_level: str
    log_format: str
    reload_from: SettingsSource | None


def _worker(args: _WorkerArgs) -> None:
    settings, host, port = args.settings, args.host, args.port
    log_level, log_format, reload_from = args.log_level, args.log_format, args.reload_from
    # Out of the terminal's process group: Ctrl-C reaches the parent only, which stops the
    # workers with one SIGTERM each (a second signal would cut their drain short).
    os.setpgid(0, 0)
    logs = setup_logging(log_level, log_format, filters=[_WorkerField(os.getpid())])
    if reload_from is not None:
        # A worker started after a reload (to replace one that exited) serves the file as it
        # is now, like the others; a file broken since then leaves it the supervisor's copy.
        try:
            settings = reload_from()
        except ConfigError as error:
            log.warning("worker starts with the settings the supervisor read: %s", error)
    set_level(settings.logs.level)
    redact.install(revealed_in(settings))  # as in the parent: secrets never reach the log
    try:
        code = serve(settings, host, port, reuse_port=True, reload_from=reload_from)
    finally:
        logs.close()
    sys.exit(code)


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    started: float


def run_workers(
    settings: Settings, host: str, port: int, *, count: int, log_level: str, log_format: str,
    reload_from: SettingsSource | None = None,
) -> int:
    """Supervise `count` workers until a signal stops them; the exit code of the server.

    SIGHUP is passed to every worker, each of which reloads the configuration file; a worker
    asked to reload by the admin API sends the supervisor a SIGHUP, so that all of them do.
    """
    from proxy.ops.reload import SUPERVISOR_ENV  # noqa: PLC0415 - keeps the CLI light

    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    os.environ[SUPERVISOR_ENV] = str(os.getpid())  # the spawned workers inherit it

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping the workers", signal.Signals(signum).name)
        stopping.set()

    def on_sighup(_signum: int, _frame: FrameType | None) -> None:
        log.info("received SIGHUP: every worker reloads the configuration")
        _signal_all(workers, signal.SIGHUP)

    def start(number: int) -> _Worker:
        process = context.Process(
            target=_worker,
            args=(_WorkerArgs(settings, host, port, log_level, log_format, reload_from),),
            name=f"worker-{number}",
        )
        process.start()
        log.info("started worker %d (pid %s)", number, process.pid,
                 extra={"event": "worker_started", "worker": process.pid})
        return _Worker(process, time.monotonic())

    workers: list[_Worker] = []
    handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_sighup)
    code = 0
    try:
        workers = [start(number) for number in range(count)]
        early_exits = 0
        while not stopping.is_set():
            multiprocessing.connection.wait(
                [worker.process.sentinel for worker in workers], timeout=_POLL_SECONDS
            )
            for number, worker in enumerate(workers):
                if stopping.is_set() or worker.process.is_alive():
                    continue
                uptime = time.monotonic() - worker.started
                exitcode = worker.process.exitcode
                log.warning("worker %d (pid %s) exited with code %s after %.1f s",
                            number, worker.process.pid, exitcode, uptime)
                early = (exitcode or 0) >= 0 and uptime < MIN_UPTIME_SECONDS  # not a signal
                early_exits = early_exits + 1 if early else 0
                if early_exits >= MAX_EARLY_EXITS:
                    log.error("workers keep exiting right after they start; stopping")
                    code = EXIT_FAILED
                    stopping.set()
                    break
                workers[number] = start(number)
    finally:
        _stop_all(workers, settings.server.shutdown_grace_seconds + STOP_MARGIN_SECONDS)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return code


def _signal_all(workers: list[_Worker], signum: int) -> None:
    for worker in workers:
        if worker.process.is_alive() and worker.process.pid is not None:
            os.kill(worker.process.pid, signum)


def _stop_all(workers: list[_Worker], patience: float) -> None:
    processes = [worker.process for worker in workers]
    for process in processes:
        if process.is_alive():
            process.terminate()  # SIGTERM: each worker drains like a single process
    deadline = time.monotonic() + patience
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            log.warning("worker pid %s did not stop in time: killing it", process.pid)
            process.kill()
            process.join()
