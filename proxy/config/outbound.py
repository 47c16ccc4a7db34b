"""How the proxy reaches upstreams and identity services: `[upstream]` for every connection,
and the same keys in a `[connections.NAME]` table for one (the connection's value wins).

    proxy        "http://user:pass@host:port" (an env: or file: reference works too), or
                 "none"; absent: the *_proxy / no_proxy variables (proxy.core.egress)
    ca_mode      "system" (default), "file" (ca_file only) or "both"
    ca_file      a PEM bundle of the CAs to trust (a path, relative to the config file)
    client_cert  a PEM certificate (chain) for upstreams that demand mTLS; its key is
    client_key   in client_key, or in client_cert itself

The files are loaded when the configuration is read, so a bundle that cannot be used is
reported with its key by `check-config` and by a reload, and never reaches a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from proxy.config.problems import _Invalid
from proxy.config.reader import _Parser, _Reader
from proxy.config.references import _Context
from proxy.config.values import _one_of, _secret, _text
from proxy.core.egress import EgressConfigError, EgressPolicy, configured_policy
from proxy.core.secret import Secret
from proxy.core.tls import CA_MODES, OutboundTls


def _file_path(value: Any, context: _Context) -> Path:
    path = context.path(_text(value, context))
    if not path.is_file():
        raise _Invalid(f"{path} is not a readable file")
    return path


OUTBOUND_KEYS: Final[Mapping[str, _Parser[Any]]] = {
    "proxy": _secret,
    "ca_mode": _one_of(*CA_MODES),
    "ca_file": _file_path,
    "client_cert": _file_path,
    "client_key": _file_path,
}


@dataclass(frozen=True)
class Outbound:
    """The outbound keys as written (None: not set), before the environment is consulted."""

    proxy: Secret | None = None
    ca_mode: str | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def over(self, defaults: Outbound) -> Outbound:
        """These values, with `defaults` (the [upstream] table) where these are not set."""
        return replace(defaults, **{
            name: value for name, value in vars(self).items() if value is not None})


def read_outbound(table: _Reader) -> Outbound:
    values = {name: table.optional(name, parse) for name, parse in OUTBOUND_KEYS.items()}
    return Outbound(**values)


def resolve_outbound(written: Outbound, table: _Reader, context: _Context,
                     ) -> tuple[EgressPolicy, OutboundTls] | None:
    """The policy and TLS settings a connection runs with; None when a value cannot be used
    (every problem recorded under `table`'s key)."""
    before = table.problem_count()
    policy = None
    try:
        policy = configured_policy(written.proxy, context.environ)
    except EgressConfigError as exc:
        table.problem(str(exc), "proxy" if written.proxy is not None else None)
    before_tls = table.problem_count()
    mode = written.ca_mode or ("both" if written.ca_file is not None else "system")
    if mode == "file" and written.ca_file is None:
        table.problem('ca_mode = "file" needs ca_file', "ca_mode")
    if mode == "system" and written.ca_file is not None:
        table.problem('has no effect with ca_mode = "system" (use "both" or "file")', "ca_file")
    if written.client_key is not None and written.client_cert is None:
        table.problem("needs client_cert", "client_key")
    tls = OutboundTls(ca_mode=mode, ca_file=written.ca_file, client_cert=written.client_cert,
                      client_key=written.client_key)
    if table.problem_count() == before_tls:
        try:
            tls.context()  # loads every file now: a bad bundle is a configuration problem
        except ValueError as exc:
            name, _, why = str(exc).partition(": ")
            table.problem(why, name)
    if policy is None or table.problem_count() > before:
        return None
    return policy, tls
