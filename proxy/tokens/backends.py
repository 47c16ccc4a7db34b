"""The token store the configuration asks for: `[store] backend = "file" | "redis"`."""

from __future__ import annotations

from proxy.config import StoreSettings
from proxy.tokens.seal import Sealer
from proxy.tokens.store import FileStore, TokenStore


def open_store(settings: StoreSettings) -> TokenStore:
    """A store for `settings`; it connects lazily, so this never blocks or fails on I/O."""
    sealer = Sealer(settings.encryption_key)
    if settings.backend == "redis":
        # Imported only for a Redis store: the client library is 10 MB of a process's memory.
        from proxy.tokens.redis_store import RedisStore  # noqa: PLC0415

        assert settings.url is not None  # the configuration requires it
        return RedisStore.from_url(
            settings.url,
            password=settings.password,
            sealer=sealer,
            prefix=settings.key_prefix,
            lease_seconds=settings.lease_seconds,
            timeout_seconds=settings.timeout_seconds,
        )
    return FileStore(settings.path, sealer=sealer)


def describe_store(settings: StoreSettings) -> str:
    """Where tokens are kept, for logs and readiness (no secrets: URLs carry no password)."""
    if settings.backend == "redis":
        return f"redis {settings.url}"
    return f"file {settings.path}"
