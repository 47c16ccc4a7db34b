"""Which changes of the configuration file a reload applies, and which need a restart."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from proxy.config import AuditSettings, ServerSettings, Settings, StoreSettings
from proxy.config.changes import applied, changes, same_identity
from proxy.config.schema import LogSettings
from proxy.core.listener_tls import ListenerTls
from proxy.core.secret import Secret
from proxy.inbound.policy import AdminAccess, Client
from tests.conftest import connection_settings

CONNECTION = connection_settings(upstream="http://127.0.0.1:1")
OTHER = connection_settings("other", upstream="http://127.0.0.1:2", prefix="/other/")
CLIENT = Client(name="app", key_sha256=b"\x01" * 32)
BASE = Settings(connections=(CONNECTION, OTHER), clients=(CLIENT,))


def _with(**fields: Any) -> Settings:
    return dataclasses.replace(BASE, **fields)


@pytest.mark.parametrize(
    ("new", "live", "restart"),
    [
        (BASE, (), ()),
        (_with(clients=()), ("clients",), ()),
        (_with(clients=(CLIENT, Client(name="b", key_sha256=b"\x02" * 32))), ("clients",), ()),
        (_with(admin=AdminAccess(key_sha256=b"\x03" * 32)), ("admin",), ()),
        (_with(audit=AuditSettings(destination="stdout")), ("audit.destination",), ()),
        (_with(audit=AuditSettings(include_query=True)), ("audit.include_query",), ()),
        (_with(server=ServerSettings(allow_anonymous=True)), ("server.allow_anonymous",), ()),
        (_with(server=ServerSettings(port=9999)), (), ("server.port",)),
        (_with(server=ServerSettings(host="0.0.0.0", ops_port=9090)), (),
         ("server.host", "server.ops_port")),
        (_with(store=StoreSettings(path=Path("elsewhere.json"))), (), ("store.path",)),
        (_with(session=dataclasses.replace(BASE.session, secret=Secret("x" * 20))), (),
         ("session.secret",)),
        (_with(connections=(CONNECTION,)), ("connections.other",), ()),
        (_with(connections=(CONNECTION, dataclasses.replace(OTHER, refresh_margin_seconds=1))),
         ("connections.other",), ()),
        (_with(connections=(OTHER, CONNECTION)), ("connections",), ()),
        (_with(clients=(), server=ServerSettings(port=1)), ("clients",), ("server.port",)),
        (_with(logs=LogSettings(level="debug")), ("logs.level",), ()),
    ],
    ids=["nothing", "clients-removed", "client-added", "admin", "audit-destination",
         "audit-query", "anonymous", "port", "listeners", "store", "session",
         "connection-removed", "connection-changed", "connections-reordered", "both",
         "log-level"],
)
def test_what_a_reload_applies(new: Settings, live: tuple[str, ...],
                               restart: tuple[str, ...]) -> None:
    found = changes(BASE, new)
    assert (found.live, found.restart) == (live, restart)
    assert found.any is bool(live or restart)


@pytest.mark.parametrize(
    ("changed", "same"),
    [
        ({}, True),
        ({"upstream": "http://elsewhere:1"}, True),
        ({"prefix": "/moved/"}, True),
        ({"headers": (("X-A", "1"),)}, True),
        ({"rate_per_second": 5.0}, True),
        ({"subscription_key": Secret("another")}, True),
        ({"client_id": "another"}, False),
        ({"client_secret": Secret("another")}, False),
        ({"scopes": ("offline_access", "more")}, False),
        ({"issuer": "http://127.0.0.1:10"}, False),
        ({"refresh_margin_seconds": 60.0}, False),
        ({"read_timeout_seconds": 5.0}, False),
        ({"name": "renamed"}, False),
    ],
)
def test_which_changes_keep_the_token_manager(changed: dict[str, Any], same: bool) -> None:
    assert same_identity(CONNECTION, dataclasses.replace(CONNECTION, **changed)) is same


def test_a_reload_runs_with_the_live_sections_of_the_file_and_the_rest_as_started() -> None:
    new = _with(clients=(), admin=AdminAccess(key_sha256=b"\x03" * 32),
                audit=AuditSettings(destination="stdout"),
                server=ServerSettings(port=1, allow_anonymous=True),
                store=StoreSettings(path=Path("elsewhere.json")), connections=())
    running = applied(BASE, new)
    assert (running.clients, running.admin, running.audit) == (new.clients, new.admin, new.audit)
    assert running.server.allow_anonymous is True
    assert running.server.port == BASE.server.port
    assert running.store == BASE.store
    assert running.connections == ()  # connections are live too
    assert changes(running, new).live == ()
    kept = applied(BASE, new, connections=(CONNECTION,))
    assert kept.connections == (CONNECTION,)


# --- the listener's TLS ---------------------------------------------------------------------

_CERT, _KEY, _CA = Path("/tls/proxy.pem"), Path("/tls/proxy.key"), Path("/tls/ca.pem")
_READ = (("tls_cert", "c1"), ("tls_key", "k1"))
TLS = ListenerTls(_CERT, _KEY, contents=_READ)
MTLS = ListenerTls(_CERT, _KEY, _CA, "required", contents=(*_READ, ("tls_client_ca", "a1")))


def _tls(tls: ListenerTls | None, **fields: Any) -> Settings:
    server = dataclasses.replace(BASE.server, tls=tls, **fields)
    return dataclasses.replace(BASE, server=server)


@pytest.mark.parametrize(("old", "new", "live", "restart"), [
    pytest.param(TLS, TLS, (), (), id="same"),
    pytest.param(TLS, dataclasses.replace(TLS, contents=(("tls_cert", "c2"), ("tls_key", "k2"))),
                 ("server.tls_cert", "server.tls_key"), (), id="renewed-in-place"),
    pytest.param(TLS, dataclasses.replace(TLS, cert=Path("/tls/new.pem")),
                 ("server.tls_cert",), (), id="another-path"),
    pytest.param(MTLS, dataclasses.replace(MTLS, contents=(*_READ, ("tls_client_ca", "a2"))),
                 ("server.tls_client_ca",), (), id="new-client-cas"),
    pytest.param(None, TLS, (), ("server.tls_cert", "server.tls_key"), id="tls-turned-on"),
    pytest.param(TLS, None, (), ("server.tls_cert", "server.tls_key"), id="tls-turned-off"),
    pytest.param(TLS, MTLS, (), ("server.tls_client_ca",), id="client-certificates-asked"),
    pytest.param(MTLS, dataclasses.replace(MTLS, client_auth="optional",
                                           contents=(("tls_cert", "c2"), *_READ[1:],
                                                     ("tls_client_ca", "a1"))),
                 (), ("server.tls_cert", "server.tls_client_auth"), id="mode-and-certificate"),
])
def test_what_a_reload_applies_of_the_listeners_tls(
    old: ListenerTls | None, new: ListenerTls | None, live: tuple[str, ...],
    restart: tuple[str, ...],
) -> None:
    found = changes(_tls(old), _tls(new))
    assert (found.live, found.restart) == (live, restart)
    running = applied(_tls(old), _tls(new))
    assert running.server.tls == (new if live else old)  # all of it, or none of it
    assert changes(running, _tls(new)).restart == restart


def test_ops_tls_waits_for_a_restart() -> None:
    found = changes(_tls(TLS), _tls(TLS, ops_tls=True))
    assert (found.live, found.restart) == ((), ("server.ops_tls",))
