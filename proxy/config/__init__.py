"""Configuration: the schema of the settings (schema.py), reading the TOML file and the
`env:NAME` / `file:PATH` references any string in it may be (loading.py, references.py),
validation that collects every problem with its dotted key rather than stopping at the first
(problems.py, reader.py, values.py), and the sections with the checks between them
(sections.py, connections.py, access.py). It is pure: no I/O but reading the file and its
`file:` references, nothing of aiohttp, Redis or the event loop. It imports only `proxy.core`,
`proxy.inbound` (the pure policy types a [[clients]] block compiles into) and `proxy.oauth`
constants; the layers above import its names from here.
"""

from proxy.config.loading import config_path, load, parse, reload_source
from proxy.config.problems import ConfigError
from proxy.config.schema import (
    AUDIT_OFF,
    AUDIT_STREAMS,
    IDEMPOTENT_METHODS,
    RETRY_STATUSES,
    AuditSettings,
    CacheSettings,
    ConnectionSettings,
    RetrySettings,
    ServerSettings,
    SessionSettings,
    Settings,
    StoreSettings,
)

__all__ = [
    "AUDIT_OFF",
    "AUDIT_STREAMS",
    "IDEMPOTENT_METHODS",
    "RETRY_STATUSES",
    "AuditSettings",
    "CacheSettings",
    "ConfigError",
    "ConnectionSettings",
    "RetrySettings",
    "ServerSettings",
    "SessionSettings",
    "Settings",
    "StoreSettings",
    "config_path",
    "load",
    "parse",
    "reload_source",
]
