"""Who may call what: the [[clients]] array, the [admin] table and the [audit] table, compiled
into the pure policy types of `proxy.inbound.policy`.

The checks that span tables live here too: a client may name only connections the file has,
no two keys (of clients or the admin) may be the same, no two clients the same certificate, a
client identified by its certificate needs `server.tls_client_ca`, and the listen address must
be one the access policy allows.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Final

from proxy.config.problems import _Invalid
from proxy.config.reader import _Reader
from proxy.config.references import _Context
from proxy.config.schema import (
    AUDIT_OFF,
    AUDIT_STREAMS,
    LOG_LEVELS,
    AuditSettings,
    LogSettings,
    Settings,
)
from proxy.config.values import (
    _array,
    _boolean,
    _count,
    _method,
    _one_of,
    _path_pattern,
    _seconds,
    _text,
)
from proxy.inbound.certificates import canonical_subject
from proxy.inbound.policy import (
    LOOPBACK,
    AdminAccess,
    Client,
    IPNetwork,
    bind_problem,
)
from proxy.inbound.rules import Rule

_SHA256_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")
_FINGERPRINT: Final = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){31}")


def _sha256(value: Any, context: _Context) -> bytes:
    """A key's SHA-256 in hex (what `nmbrs-proxy hash-key` prints), as the 32-byte digest."""
    text = _text(value, context).strip()
    if not _SHA256_HEX.fullmatch(text):
        raise _Invalid(
            "must be 64 hexadecimal characters, the SHA-256 of the key "
            "(`nmbrs-proxy hash-key` prints one)"
        )
    return bytes.fromhex(text)


def _cert_sha256(value: Any, context: _Context) -> bytes:
    """A certificate's SHA-256 (of its DER form) in hex, with or without colons."""
    text = _text(value, context).strip()
    if not (_SHA256_HEX.fullmatch(text) or _FINGERPRINT.fullmatch(text)):
        raise _Invalid(
            "must be the SHA-256 of the DER certificate: 64 hexadecimal characters, colons "
            "between the bytes allowed (`openssl x509 -noout -fingerprint -sha256` prints it)"
        )
    return bytes.fromhex(text.replace(":", ""))


def _cert_subject(value: Any, context: _Context) -> str:
    try:
        return canonical_subject(_text(value, context))
    except ValueError as err:
        raise _Invalid(str(err)) from None


def _network(value: Any, context: _Context) -> IPNetwork:
    text = _text(value, context)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as err:
        if "host bits set" in str(err):
            loose = ipaddress.ip_network(text, strict=False)
            raise _Invalid(f"{text!r} has host bits set (did you mean {str(loose)!r}?)") from None
        raise _Invalid(f"{text!r} is not an IP address or network (e.g. '10.0.0.0/8')") from None


def _audit_destination(value: Any, context: _Context) -> str:
    text = _text(value, context)
    if text in (AUDIT_OFF, *AUDIT_STREAMS):
        return text
    return str(context.path(text))


_CLIENT_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _client_name(value: Any, context: _Context) -> str:
    text = _text(value, context)
    if not _CLIENT_NAME.fullmatch(text):
        raise _Invalid("must be 1 to 64 characters from A-Z, a-z, 0-9, '_', '.' and '-'")
    return text


def _connection_names(data: Mapping[str, Any]) -> frozenset[str]:
    """Connection names as written, valid or not (a client naming a broken one is not wrong)."""
    connections = data.get("connections")
    return frozenset(connections) if isinstance(connections, Mapping) else frozenset()


def _with_access(root: _Reader, settings: Settings, connections: frozenset[str]) -> Settings:
    """`settings` with [[clients]], [admin], [audit] and [logs] read, and the listen address
    checked."""
    keys: dict[bytes, str] = {}  # key digest -> the dotted key that holds it first
    client_tables = root.array_of_tables("clients")
    tls = settings.server.tls
    clients = _clients(client_tables, connections, keys,
                       certificates=tls is not None and tls.client_ca is not None)
    admin_table = root.table("admin")
    admin = _admin(admin_table, keys) if admin_table is not None else AdminAccess()
    audit_table = root.table("audit")
    audit = _audit(audit_table) if audit_table is not None else AuditSettings()
    logs_table = root.table("logs")
    logs = LogSettings()
    if logs_table is not None:
        logs = LogSettings(level=logs_table.optional("level", _one_of(*LOG_LEVELS)))
        logs_table.finish()
    settings = replace(settings, clients=clients, admin=admin, audit=audit, logs=logs)
    problem = bind_problem(settings.server.host, settings.access_policy())
    if problem is not None and not client_tables:  # broken clients are reported themselves
        root.problem(problem, "server", ".host")
    return settings


_CERTIFICATE_KEYS: Final = ("cert_sha256", "cert_subject")


def _clients(
    tables: list[_Reader] | None, connections: frozenset[str], keys: dict[bytes, str], *,
    certificates: bool,
) -> tuple[Client, ...]:
    clients: list[Client] = []
    names: set[str] = set()
    # (cert_sha256, cert_subject) of a client without a key -> the dotted key of its table
    identities: dict[tuple[bytes | None, str | None], str] = {}
    for table in tables or ():
        client = _client(table, connections, keys, certificates=certificates)
        if client is None:
            continue
        if client.name in names:
            table.problem(f"another client is already named {client.name!r}", "name")
            continue
        if client.key_sha256 is None:
            where = table.key("name").removesuffix(".name")  # clients[i]
            first = identities.setdefault((client.cert_sha256, client.cert_subject), where)
            if first != where:
                table.problem(f"names the same certificate as {first}: no request could tell "
                              "them apart")
                continue
        names.add(client.name)
        clients.append(client)
    return tuple(clients)


def _client(
    table: _Reader, connections: frozenset[str], keys: dict[bytes, str], *, certificates: bool,
) -> Client | None:
    before = table.problem_count()
    name = table.require("name", _client_name)
    digest, cert_sha256, cert_subject = _identity(table, certificates=certificates)
    cidrs = table.optional("cidrs", _array(_network, allow_empty=False)) or ()
    allowed = table.optional("connections", _array(_text, allow_empty=False))
    read_only = table.get("read_only", _boolean, default=False)
    rate = table.optional("max_requests_per_second", _seconds(allow_zero=False))
    burst = table.optional("burst", _count(1))
    if burst is not None and rate is None and table.is_valid("max_requests_per_second"):
        table.problem("has no effect without max_requests_per_second", "burst")
    max_concurrent = table.optional("max_concurrent", _count(1))
    rule_tables = table.array_of_tables("rules")
    rules = [_rule(rule) for rule in rule_tables] if rule_tables is not None else None
    if rule_tables == []:
        table.problem("must not be empty (leave it out to allow every method and path)", "rules")
    table.finish()
    for index, connection in enumerate(allowed or ()):
        if connection not in connections:
            table.problem(f"no connection is named {connection!r}", "connections", f"[{index}]")
    if digest is not None:
        first = keys.setdefault(digest, table.key("key_sha256"))
        if first != table.key("key_sha256"):
            table.problem(f"the same key as {first}: every key must be different", "key_sha256")
    if table.problem_count() > before or name is None or (
            digest is None and cert_sha256 is None and cert_subject is None):
        return None
    return Client(
        name=name,
        key_sha256=digest,
        cert_sha256=cert_sha256,
        cert_subject=cert_subject,
        cidrs=cidrs,
        connections=frozenset(allowed) if allowed is not None else None,
        rules=tuple(rule for rule in rules if rule is not None) if rules is not None else None,
        read_only=read_only,
        rate_per_second=rate,
        burst=1 if burst is None else burst,
        max_concurrent=max_concurrent,
    )


def _identity(table: _Reader, *, certificates: bool,
              ) -> tuple[bytes | None, bytes | None, str | None]:
    """How a client is known: its key's digest, its certificate's digest and subject. A key
    is required unless a certificate is named; a certificate needs the client CAs."""
    cert_sha256 = table.optional("cert_sha256", _cert_sha256)
    cert_subject = table.optional("cert_subject", _cert_subject)
    named = [key for key in _CERTIFICATE_KEYS if table.has(key)]
    if not named:
        return table.require("key_sha256", _sha256), None, None
    if not certificates:
        for key in named:
            if table.is_valid(key):
                table.problem("needs server.tls_client_ca: without it the proxy asks for no "
                              "client certificate", key)
    return table.optional("key_sha256", _sha256), cert_sha256, cert_subject


def _rule(table: _Reader) -> Rule | None:
    methods = table.require("methods", _array(_method, allow_empty=False))
    paths = table.require("paths", _array(_path_pattern, allow_empty=False))
    table.finish()
    if methods is None or paths is None:
        return None
    return Rule(methods=frozenset(methods), paths=paths)


def _admin(table: _Reader, keys: dict[bytes, str]) -> AdminAccess:
    digest = table.optional("key_sha256", _sha256)
    loopback = [str(network) for network in LOOPBACK]
    cidrs = table.get("cidrs", _array(_network, allow_empty=True), default=loopback)
    table.finish()
    if digest is not None and digest in keys:
        table.problem(f"the same key as {keys[digest]}: the admin key must be its own",
                      "key_sha256")
    return AdminAccess(key_sha256=digest, cidrs=cidrs)


def _audit(table: _Reader) -> AuditSettings:
    settings = AuditSettings(
        destination=table.get("destination", _audit_destination, default=AUDIT_OFF),
        include_query=table.get("include_query", _boolean, default=False),
    )
    table.finish()
    return settings
