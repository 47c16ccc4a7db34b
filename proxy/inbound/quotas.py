"""Per-client quotas: one legacy app must not starve another of the shared upstream quota.

A `[[clients]]` block may set `max_requests_per_second` (with a `burst`) and `max_concurrent`.
Over either, the request is refused with 429 and `Retry-After` before anything reaches the
upstream. Pure: the clock reading comes in as an argument, and a reload hands in the new
clients (`configure`): a client whose limits did not change keeps its bucket and its count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from proxy.core.errors import ClientQuotaExceeded
from proxy.core.rate import TokenBucket
from proxy.inbound.policy import Client

# When a client over its concurrency may try again: a request in flight usually ends by then.
CONCURRENCY_RETRY_SECONDS = 1.0

Limits = tuple[float | None, int, int | None]  # rate per second, burst, max concurrent


def _limits(client: Client) -> Limits:
    return client.rate_per_second, client.burst, client.max_concurrent


@dataclass
class _Quota:
    limits: Limits
    bucket: TokenBucket | None
    in_flight: int = 0


@dataclass
class ClientQuotas:
    """The quotas of the configured clients; `admit` before a request goes on."""

    # Told (client name, "rate" or "concurrency") for every request refused.
    on_refused: Callable[[str, str], None] = lambda _client, _limit: None
    _quotas: dict[str, _Quota] = field(default_factory=dict)

    def configure(self, clients: Iterable[Client]) -> None:
        quotas: dict[str, _Quota] = {}
        for client in clients:
            limits = _limits(client)
            if limits == (None, 1, None):
                continue
            kept = self._quotas.get(client.name)
            if kept is not None and kept.limits == limits:
                quotas[client.name] = kept
                continue
            rate = client.rate_per_second
            bucket = None if rate is None else TokenBucket(rate, client.burst)
            if kept is None:
                quotas[client.name] = _Quota(limits, bucket)
            else:  # the same object: requests in flight release into it
                kept.limits, kept.bucket = limits, bucket
                quotas[client.name] = kept
        self._quotas = quotas

    def admit(self, client: Client, now: float) -> Callable[[], None] | None:
        """None when `client` has no quota; else the release to call when its request ends.
        ClientQuotaExceeded (429, with Retry-After) when it is over one."""
        quota = self._quotas.get(client.name)
        if quota is None:
            return None
        _, _, most = quota.limits
        if most is not None and quota.in_flight >= most:
            self.on_refused(client.name, "concurrency")
            raise ClientQuotaExceeded(
                f"client {client.name!r} has {most} request(s) in flight, its max_concurrent",
                client=client.name, limit="concurrency", retry_after=CONCURRENCY_RETRY_SECONDS)
        bucket = quota.bucket
        if bucket is not None:
            wait = bucket.delay(now)
            if wait > 0:
                self.on_refused(client.name, "rate")
                raise ClientQuotaExceeded(
                    f"client {client.name!r} is over its max_requests_per_second "
                    f"({bucket.rate:g}, burst {bucket.burst})",
                    client=client.name, limit="rate", retry_after=wait)
            bucket.take(now)
        quota.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                quota.in_flight -= 1

        return release
