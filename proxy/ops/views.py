"""A connection as JSON: the judgement readiness, the page and the admin API share.

`health` is what `/_proxy/readyz` says of each connection; `summary` and `detail` add what the
admin API lists. Times are RFC 3339 in UTC. No secret is ever in them: a subscription key is
described by where it comes from, never shown.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from proxy.forwarding.connection import Connection
from proxy.ops.pages import KeySource
from proxy.telemetry.metrics import ConnectionReport


def key_source(connection: Connection) -> KeySource | None:
    """Where the subscription key sent with the connection's requests comes from."""
    if connection.manager.subscription_key is not None:
        return KeySource.PAGE
    if connection.keys is not None:
        return KeySource.CONFIG
    if connection.requires_key:
        return KeySource.MISSING
    return None  # an API that takes no subscription key


def health(report: ConnectionReport) -> dict[str, Any]:
    status = report.status
    return {
        "ready": report.ready,
        "state": status.state.value,
        "link_state": report.assessment.state.value,
        "needs_consent": status.needs_consent,
        "last_error": status.last_error,
        "warnings": sorted(concern.value for concern in report.assessment.concerns),
    }


def summary(connection: Connection, now: float) -> dict[str, Any]:
    settings = connection.settings
    report = connection.report(now)
    return {
        "name": connection.name,
        "provider": settings.provider,
        "prefix": settings.prefix,
        "upstream": settings.upstream,
        "linked": report.status.linked,
        "interactive": connection.consent is not None,
        **health(report),
        "access_token_expires_at": moment(report.status.expires_at),
    }


def detail(connection: Connection, now: float) -> dict[str, Any]:
    settings = connection.settings
    report = connection.report(now)
    status = report.status
    source = key_source(connection)
    return {
        **summary(connection, now),
        "client_id": settings.client_id,
        "scopes_asked": list(settings.scopes),
        "scopes_granted": list(status.scopes),
        "obtained_at": moment(status.obtained_at),
        "last_refresh_at": moment(status.last_refresh_at),
        "refresh_token_issued_at": moment(status.refresh_issued_at),
        "refresh_token_expires_at": moment(report.assessment.refresh_token_expires_at),
        "failures": status.failures,
        "failing_since": moment(status.failing_since),
        "subscription_key": None if source is None else source.value,
        "quota": connection.quota_stats(),
    }


def moment(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
