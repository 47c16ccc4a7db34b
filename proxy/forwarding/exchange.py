"""One client request's way upstream: shaped, credentialed, and tried again when it is worth it.

`exchange()` makes attempts until one gives an answer for the client:

    admit (shaping) → bearer token + subscription key → send
      401 with a bearer challenge  → one shared forced refresh, replay once (token refused)
      401 about the key            → next subscription key, replay once (credentials)
      429 / 503 with Retry-After   → the whole connection pauses (shaping)
      every status                 → the shaper, which learns a rate from the 429s
      429, 502, 503, 504, or no connection at all → retry per retry.py, else the answer

A replay or a retry needs the body again, so only a request whose body was kept (none, or small)
is ever sent twice. Each attempt holds a shaping permit; the one answered keeps it until the
response has been relayed, so `max_concurrent` counts upstream requests until they are done.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from proxy.core.errors import BadGateway, GatewayTimeout
from proxy.forwarding import upstream
from proxy.forwarding.connection import Connection
from proxy.forwarding.credentials import (
    KEY_COMPLAINT_MAX_BYTES,
    KeyRing,
    may_reject_key,
    rejects_key,
    rejects_token,
)
from proxy.forwarding.retry import decide, parse_retry_after, pause_after
from proxy.forwarding.shaping import Permit

log = logging.getLogger(__name__)

Send = Callable[[Mapping[str, str]], Awaitable[upstream.Response]]
Clock = Callable[[], float]


@dataclass
class Answer:
    """The upstream response for the client, and the shaping permit it holds until relayed."""

    response: upstream.Response
    permit: Permit
    head: bytes = b""  # the start of the body, already read (to tell a key refusal)

    def release(self) -> None:
        self.response.release()
        self.permit.release()


async def read_head(connection: Connection, answer: Answer, limit: int) -> tuple[bytes, bool]:
    """The answer's body if it is at most `limit` bytes (True), else what was read (False).

    What was read must be sent to the client before the rest of the stream.
    """
    response = answer.response
    length = response.headers.get("Content-Length", "")
    if length.isascii() and length.isdigit() and int(length) > limit:
        return b"", False
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.iter_chunks():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks), False
    except TimeoutError:
        raise GatewayTimeout(
            f"the upstream of connection {connection.name!r} stopped sending its answer",
            connection=connection.name,
        ) from None
    except upstream.UpstreamError as exc:
        raise BadGateway(
            f"the upstream of connection {connection.name!r} broke off its answer "
            f"({type(exc).__name__})",
            connection=connection.name,
        ) from None
    return b"".join(chunks), True


class _Attempts:
    """The state of one exchange between attempts."""

    def __init__(self, connection: Connection, method: str, *, replayable: bool,
                 clock: Clock, rand: Callable[[], float], started: float) -> None:
        self.connection = connection
        self.method = method
        self.replayable = replayable
        self.clock = clock
        self.rand = rand
        self.started = started  # time.monotonic() when the first attempt began
        self.retries = 0
        self.token_replayed = False
        self.key_switched = False

    def after_failure(self, error: BadGateway | GatewayTimeout) -> float | None:
        """No answer came: seconds to wait before trying again, or None to give up."""
        if not error.unsent:  # part of the request may have arrived: never send it twice
            return None
        return self._retry_delay(None, None)

    async def after_answer(self, answer: Answer, token: str, key: int | None) -> float | None:
        """None: this answer goes to the client. Else: seconds to wait before the next try."""
        status, headers = answer.response.status, answer.response.headers
        if status < 400:  # no refusal, nothing to retry (retried statuses are 429 and 5xx)
            return None
        if rejects_token(status, headers, gateway_keyed=self.connection.gateway_keyed):
            return await self._token_refused(answer, token)
        keys = self.connection.keys
        if keys is not None and key is not None and len(keys) > 1 and may_reject_key(
            status, headers
        ):
            return await self._key_refused(answer, keys, key)
        return self._maybe_retry(answer)

    async def _token_refused(self, answer: Answer, token: str) -> float | None:
        manager = self.connection.manager
        if not self.replayable:  # the body is gone: the client gets the 401, later ones not
            manager.refresh_after_rejection_soon(token)
            return None
        if self.token_replayed:
            return None
        self.token_replayed = True
        log.info("upstream rejected the token of %s; refreshing once", self.connection.name)
        answer.release()
        await manager.after_rejection(token)
        return 0.0

    async def _key_refused(self, answer: Answer, keys: KeyRing, key: int) -> float | None:
        response = answer.response
        answer.head, complete = await read_head(self.connection, answer, KEY_COMPLAINT_MAX_BYTES)
        if not (complete and rejects_key(response.status, response.headers, answer.head)):
            return None  # a 401 of another kind
        keys.rotate(key)
        if not self.replayable or self.key_switched:
            return None
        self.key_switched = True
        answer.release()
        return 0.0

    def _maybe_retry(self, answer: Answer) -> float | None:
        status, headers = answer.response.status, answer.response.headers
        if status == 429:
            self.connection.counters.upstream_429 += 1
        retry_after = parse_retry_after(headers.get("Retry-After"), self.clock())
        pause = pause_after(status, retry_after)
        if pause is not None:
            self.connection.shaper.pause(pause)
        delay = self._retry_delay(status, retry_after)
        if delay is not None:
            answer.release()
        return delay

    def _retry_delay(self, status: int | None, retry_after: float | None) -> float | None:
        policy = self.connection.settings.retries
        if status is not None and status not in policy.statuses:
            return None
        decision = decide(
            policy,
            method=self.method,
            status=status,
            attempt=self.retries,
            replayable=self.replayable,
            elapsed=time.monotonic() - self.started,
            retry_after=retry_after,
            rand=self.rand(),
        )
        what = "could not be reached" if status is None else f"answered {status}"
        if not decision.retry:
            log.info("connection %s: the upstream %s to %s; not retried: %s",
                     self.connection.name, what, self.method, decision.reason)
            return None
        self.retries += 1
        self.connection.counters.retries += 1
        log.info("connection %s: the upstream %s to %s; %s in %.2fs",
                 self.connection.name, what, self.method, decision.reason, decision.delay)
        return decision.delay


async def exchange(
    connection: Connection,
    method: str,
    send: Send,
    *,
    replayable: bool,
    clock: Clock = time.time,
    rand: Callable[[], float] = random.random,
) -> Answer:
    """Send until an answer is final for the client; `send` gets each attempt's credentials."""
    shaper, manager = connection.shaper, connection.manager
    started = time.monotonic()
    attempts: _Attempts | None = None  # made for a second thought: most requests need none
    while True:
        # The waits (shaping, a token) only when there is something to wait for.
        permit = shaper.free_permit() or await shaper.admit()
        try:
            token = manager.usable_token() or await manager.bearer()
            key = connection.key_index()  # None: the key entered on the page, never rotated
            response = await send(connection.credentials(token, key))
        except (BadGateway, GatewayTimeout) as error:
            permit.release()
            attempts = attempts or _Attempts(connection, method, replayable=replayable,
                                             clock=clock, rand=rand, started=started)
            delay = attempts.after_failure(error)
            if delay is None:
                raise
            await asyncio.sleep(delay)
            continue
        except BaseException:
            permit.release()
            raise
        answer = Answer(response, permit)
        try:
            shaper.answered(response.status)  # what the learned rate learns from
            if response.status < 400:  # nothing refused, nothing to retry: final
                return answer
            attempts = attempts or _Attempts(connection, method, replayable=replayable,
                                             clock=clock, rand=rand, started=started)
            delay = await attempts.after_answer(answer, token, key)
        except BaseException:
            answer.release()
            raise
        if delay is None:
            return answer
        await asyncio.sleep(delay)
