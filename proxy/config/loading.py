"""The entry points: where the file is (`config_path`), reading it (`load`) and checking what
TOML decoded (`parse`), which raises one `ConfigError` listing every problem with its key.

`parse` reads the sections in a fixed order, so problems come in the order of the file's
tables, and then makes the checks between sections that no single one can make.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from proxy.config.access import _connection_names, _with_access
from proxy.config.connections import _connections
from proxy.config.outbound import Outbound, read_outbound
from proxy.config.problems import ConfigError, _reason
from proxy.config.reader import _Reader
from proxy.config.references import _Context
from proxy.config.schema import ServerSettings, SessionSettings, Settings, StoreSettings
from proxy.config.sections import _server, _session, _store
from proxy.inbound.policy import bind_problem

_CONFIG_ENV: Final = "NMBRS_PROXY_CONFIG"
_DEFAULT_CONFIG_FILE: Final = "config.toml"


def config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """Where the configuration lives: `--config`, else $NMBRS_PROXY_CONFIG, else ./config.toml."""
    return Path(cli_value or environ.get(_CONFIG_ENV) or _DEFAULT_CONFIG_FILE)


def reload_source(path: Path, listen_host: str) -> Settings:
    """The file again, as a reload of a running proxy reads it: refused also when its clients
    would leave the address the proxy really listens on open to anyone (a `--host` given at
    start may differ from `server.host`)."""
    settings = load(path, os.environ)
    refusal = bind_problem(listen_host, settings.access_policy())
    if refusal is not None:
        raise ConfigError([f"clients: the proxy listens on {listen_host}: {refusal}"])
    return settings


def load(path: Path, environ: Mapping[str, str]) -> Settings:
    """Read and check the TOML file at `path`; relative paths in it are relative to its folder."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise ConfigError([f"{path}: cannot read the configuration file ({_reason(err)})"]) from err
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: the configuration file is not UTF-8 text"]) from err
    except tomllib.TOMLDecodeError as err:  # its message ends with "(at line L, column C)"
        raise ConfigError([f"{path}: invalid TOML: {err}"]) from err
    return parse(data, base_dir=path.absolute().parent, environ=environ)


def parse(data: Mapping[str, Any], *, base_dir: Path, environ: Mapping[str, str]) -> Settings:
    """Check already-decoded TOML. Only `file:` references touch the file system."""
    context = _Context(base_dir.absolute(), environ)
    root = _Reader(data, "", context)
    server = root.table("server")
    store = root.table("store")
    session = root.table("session")
    upstream = root.table("upstream")
    outbound = Outbound()
    if upstream is not None:
        outbound = read_outbound(upstream)
        upstream.finish()
    settings = Settings(
        server=_server(server) if server is not None else ServerSettings(),
        store=_store(store) if store is not None else StoreSettings(),
        session=_session(session) if session is not None else SessionSettings(),
        connections=_connections(root.table("connections"), outbound),
    )
    settings = _with_access(root, settings, _connection_names(data))
    root.finish()
    if (
        settings.store.backend == "redis"
        and settings.session.secret is None
        and session is not None
        and session.is_valid("secret")
    ):
        # Replicas share one Redis; a login started on one may come back to another.
        session.problem(
            'required when store.backend = "redis": every replica must read the consent '
            "cookie the others set",
            "secret",
        )
    if context.problems:
        raise ConfigError(context.problems)
    return settings
