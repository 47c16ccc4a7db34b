"""The command line: serve | demo | login | status | revoke | check-config | hash-key |
sandbox.

Exit codes: 0 success, 1 the command failed, 2 the configuration is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

import aiohttp

from proxy.config import ConfigError, Settings, config_path, load, reload_source
from proxy.core import redact
from proxy.core.secret import revealed_in
from proxy.inbound.policy import bind_problem, exposure_warning, hash_key, new_key
from proxy.oauth.protocol import GrantError
from proxy.telemetry.logs import FORMATS, LEVELS, set_level, setup_logging
from proxy.tokens.backends import open_store
from proxy.tokens.health import DAY, warning_window
from proxy.tokens.model import token_state
from proxy.tokens.store import StoreError, TokenStore

EXIT_FAILED = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs = setup_logging(args.log_level, args.log_format)
    redact.install()  # every record, from here on, has its secrets masked
    try:
        command: Callable[[argparse.Namespace], int] = args.run
        return command(args)
    finally:
        logs.close()


def _with_settings(
    command: Callable[[argparse.Namespace, Settings], int],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        settings = _load_settings(args.config, sys.stderr)
        if settings is None:
            return EXIT_CONFIG
        redact.install(revealed_in(settings))  # the configured secrets, wherever they show up
        return command(args, settings)

    return run


def _check_config(_args: argparse.Namespace, settings: Settings) -> int:
    names = ", ".join(c.name for c in settings.connections)
    print(f"configuration OK: {len(settings.connections)} connection(s): {names}")
    return 0


def _login(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.login_cli import run_login  # noqa: PLC0415 - a rarely used path

    code: int = asyncio.run(run_login(settings, args.connection, stdin=sys.stdin,
                                      stdout=sys.stdout, listen=not args.no_listen))
    return code


def _reload(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.reload_cli import run_reload  # noqa: PLC0415 - a rarely used path

    return run_reload(settings, args.url, out=sys.stdout, err=sys.stderr)


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(revoke_connection(settings, args.connection, out=sys.stdout))


async def revoke_connection(settings: Settings, name: str, *, out: TextIO) -> int:
    """Revoke the stored token set of connection `name` at its provider, then forget it.

    The set leaves the store only after the provider confirmed; otherwise it stays as it was.
    """
    from proxy.forwarding.connection import build_connection  # noqa: PLC0415 - keeps the other commands light

    chosen = next((c for c in settings.connections if c.name == name), None)
    if chosen is None:
        names = ", ".join(c.name for c in settings.connections) or "none"
        print(f"error: no connection is named {name!r} (configured: {names})", file=out)
        return EXIT_FAILED
    store = open_store(settings.store)
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:
            connection = build_connection(chosen, session=session, store=store, clock=time.time)
            try:
                revoked = await connection.manager.revoke()
            except GrantError as exc:
                said = f"{exc.error} ({exc.description})" if exc.description else exc.error
                print(f"error: {chosen.provider} did not confirm revoking the token of "
                      f"connection {name!r}: {said}; the stored token is kept", file=out)
                return EXIT_FAILED
            except StoreError as exc:
                print(f"error: connection {name!r}: {exc}", file=out)
                return EXIT_FAILED
    finally:
        await store.close()
    if not revoked:
        print(f"connection {name!r} holds no token: nothing to revoke", file=out)
        return 0
    after = ("a person must link it again (/_proxy/ or `nmbrs-proxy login`)"
             if connection.consent is not None
             else "the proxy fetches a new token with its credentials when one is needed")
    print(f"revoked the token of connection {name!r} at {chosen.provider} and removed it from "
          f"the store; {after}", file=out)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo  # noqa: PLC0415 - only the demo needs the sandbox

    try:
        code: int = asyncio.run(run_demo(port=args.port, sandbox_port=args.sandbox_port,
                                         smoke=args.smoke, stdout=sys.stdout))
    except KeyboardInterrupt:
        return 0
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmbrs-proxy", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("NMBRS_PROXY_LOG_LEVEL", "info"),
                        choices=LEVELS)
    parser.add_argument("--log-format",
                        default=os.environ.get("NMBRS_PROXY_LOG_FORMAT", "auto"), choices=FORMATS,
                        help="json lines, readable text, or auto: text on a terminal, else json")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", help="config file (default: $NMBRS_PROXY_CONFIG or "
                                          "./config.toml)")
        return sub

    serve = with_config("serve", "run the proxy")
    serve.set_defaults(run=_with_settings(_serve))
    serve.add_argument("--host", help="override [server] host")
    serve.add_argument("--port", type=int, help="override [server] port")
    serve.add_argument("--workers", type=_positive, default=1,
                       help="worker processes sharing the port (SO_REUSEPORT); default 1")
    reload = with_config("reload", "make the running proxy reload its configuration file")
    reload.set_defaults(run=_with_settings(_reload))
    reload.add_argument("--url", help="the proxy's reload endpoint (default: from [server])")
    check = with_config("check-config", "validate the configuration and exit")
    check.set_defaults(run=_with_settings(_check_config))
    status = with_config("status", "show each connection's token state (no secrets)")
    status.set_defaults(run=_with_settings(lambda _a, s: asyncio.run(_status(s, sys.stdout))))
    revoke = with_config("revoke", "revoke a connection's token at its provider and forget it")
    revoke.set_defaults(run=_with_settings(_revoke))
    revoke.add_argument("--connection", required=True)
    login = with_config("login", "link a connection from a terminal")
    login.set_defaults(run=_with_settings(_login))
    login.add_argument("--connection", required=True)
    login.add_argument("--no-listen", action="store_true",
                       help="do not listen on the redirect URI; only accept a pasted URL")

    demo = commands.add_parser("demo", help="run the sandbox and the proxy against it, linked")
    demo.set_defaults(run=_demo)
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--sandbox-port", type=int, default=8081)
    demo.add_argument("--smoke", action="store_true",
                      help="make the printed requests once, check them and exit")

    hash_key_command = commands.add_parser(
        "hash-key", help="print a new random key and the SHA-256 the configuration holds")
    hash_key_command.set_defaults(run=_hash_key)
    hash_key_command.add_argument("--stdin", action="store_true",
                                  help="hash a key read from standard input instead")

    sandbox = commands.add_parser("sandbox", help="run an embedded fake upstream alone")
    sandbox.set_defaults(run=_sandbox)
    sandbox.add_argument("--provider", default="nmbrs",
                         choices=["nmbrs", "client_credentials", "nomba", "nitro"],
                         help="which upstream to play (default nmbrs)")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8081)
    sandbox.add_argument("--token-lifetime", type=float, default=3600.0,
                         help="access token lifetime in seconds")
    sandbox.add_argument("--rate-limit", type=int, default=None,
                         help="API requests per second per subscription key before 429")
    return parser


def _load_settings(cli_path: str | None, err: TextIO) -> Settings | None:
    path = config_path(cli_path, os.environ)
    try:
        return load(path, os.environ)
    except ConfigError as error:
        print(f"nmbrs-proxy: {path}: {error}", file=err)
        return None


def _hash_key(args: argparse.Namespace) -> int:
    if args.stdin:
        key = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
        if not key:
            print("nmbrs-proxy hash-key: no key on standard input", file=sys.stderr)
            return EXIT_FAILED
        print(f"key_sha256: {hash_key(key)}")
        return 0
    key = new_key()
    print(f"key:        {key}\n"
          f"key_sha256: {hash_key(key)}\n\n"
          "Give the key to the caller (it is not stored anywhere); put key_sha256 in a\n"
          "[[clients]] block or in [admin].")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from proxy.server import inherited_sockets  # noqa: PLC0415 - keeps status light
    from proxy.workers import run_workers, serve  # noqa: PLC0415 - as above

    set_level(settings.logs.level)  # the file's [logs] level wins over --log-level
    host = args.host or settings.server.host
    policy = settings.access_policy()
    refusal = bind_problem(host, policy)
    if refusal is not None:
        print(f"nmbrs-proxy: refusing to listen on {host}: {refusal}", file=sys.stderr)
        return EXIT_CONFIG
    warning = exposure_warning(host, policy)
    if warning is not None:
        logging.getLogger("proxy").warning("%s", warning)
    # Sockets passed by a service manager (systemd socket activation) win over host and port.
    sockets = inherited_sockets(os.environ, os.getpid())
    port = settings.server.port if args.port is None else args.port
    source = functools.partial(reload_source, config_path(args.config, os.environ).absolute(),
                               host)
    if args.workers == 1:
        return serve(settings, host, port, sockets=sockets, reload_from=source)
    if sockets:
        print("nmbrs-proxy: --workers cannot share sockets passed by a service manager; "
              "start one process per socket instead", file=sys.stderr)
        return EXIT_FAILED
    if port == 0:
        print("nmbrs-proxy: --workers needs a fixed port, not 0", file=sys.stderr)
        return EXIT_FAILED
    return run_workers(settings, host, port, count=args.workers, log_level=args.log_level,
                       log_format=args.log_format, reload_from=source)


async def _status(settings: Settings, out: TextIO) -> int:
    store = open_store(settings.store)
    try:
        return await _print_status(settings, store, out)
    finally:
        await store.close()


async def _print_status(settings: Settings, store: TokenStore, out: TextIO) -> int:
    now = time.time()
    for connection in settings.connections:
        try:
            tokens = await store.load(connection.name)
        except StoreError as error:
            print(f"{connection.name}: store error: {error}", file=out)
            return EXIT_FAILED
        if tokens is None and not connection.interactive:
            print(f"{connection.name}: no token yet (the proxy fetches one with the "
                  f"{connection.provider} credentials when it runs)", file=out)
            continue
        if tokens is None:
            print(f"{connection.name}: not linked (run `nmbrs-proxy login --connection "
                  f"{connection.name}` or visit /_proxy/)", file=out)
            continue
        if tokens.refused is not None:
            print(f"{connection.name}: linked, but the identity service refused its refresh "
                  f"token ({tokens.refused}): consent is needed (visit /_proxy/)", file=out)
            continue
        state = token_state(tokens, now, connection.refresh_margin_seconds)
        expiry = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(tokens.expires_at))
        refresh_age = (
            "none" if tokens.refresh_issued_at is None
            else f"{(now - tokens.refresh_issued_at) / 86400:.1f} days old"
        )
        linked = "linked" if connection.interactive else "has a token"
        if tokens.subscription_key is not None:
            key = ", subscription key entered on the page"
        elif connection.subscription_key is not None:
            key = ", subscription key from the configuration"
        else:
            key = ", subscription key missing" if connection.provider == "nmbrs" else ""
        print(f"{connection.name}: {linked}, access token {state.value}, expires {expiry}, "
              f"refresh token {refresh_age}, scopes {' '.join(tokens.scopes) or '-'}{key}",
              file=out)
        lifetime = connection.refresh_token_lifetime_days * DAY
        if connection.interactive and tokens.refresh_issued_at is not None:
            left = tokens.refresh_issued_at + lifetime - now
            if left <= warning_window(lifetime):
                print(f"{connection.name}: warning: the refresh token reaches the end of its "
                      f"lifetime in {max(left, 0) / DAY:.1f} days; connect again before then "
                      "unless a refresh succeeds", file=out)
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    from proxy import sandbox as fakes  # noqa: PLC0415 - dev tool only

    served: fakes.Servable
    if args.provider == "nmbrs":
        served = fakes.Sandbox(fakes.SandboxSettings(access_token_lifetime=args.token_lifetime,
                                                     rate_limit=args.rate_limit))
    elif args.rate_limit is not None:
        print("nmbrs-proxy sandbox: --rate-limit is for --provider nmbrs only", file=sys.stderr)
        return EXIT_CONFIG
    else:
        settings = fakes.MachineSettings(access_token_lifetime=args.token_lifetime)
        served = fakes.MACHINE_SANDBOXES[args.provider](settings)
    fakes.main_sandbox(args.host, args.port, served)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
