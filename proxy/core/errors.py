"""The errors the proxy answers with, each mapped to one HTTP status in one place.

ProxyError
├── BadRequest            400  the request cannot be forwarded as sent (refused target, header)
├── Unauthorized          401  no key, or a key the proxy does not know
├── Forbidden             403  the caller is known but may not do this
├── NoConnection          404  no connection serves this path
├── TooManyRequests       429  the connection's request limit is reached (with Retry-After)
├── HeadersTooLarge       431  more header bytes or fields than the proxy accepts
├── ConsentRequired       503  the grant is gone: a person must link the account again
├── CredentialsRefused    503  the provider refuses the machine credentials: fix the config
├── TokenUnavailable      503  no usable token right now (identity service unreachable, ...)
├── SubscriptionKeyRequired 503  no subscription key configured or entered on the page
├── BadGateway            502  the upstream could not be reached or broke the exchange
└── GatewayTimeout        504  the upstream did not answer in time

Bodies are RFC 9457 `application/problem+json`; `type` is stable, `detail` never holds a secret
(it is passed through the redaction rules as well, in case a message quoted one).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

from proxy.core.redact import redact

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ProxyError(Exception):
    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal proxy error"

    def __init__(
        self,
        detail: str,
        *,
        connection: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.connection = connection
        # Response headers that belong with this answer (a 401's WWW-Authenticate).
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def type_uri(self) -> str:
        return f"urn:nmbrs-proxy:problem:{self.slug}"

    def problem(self) -> dict[str, object]:
        body: dict[str, object] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": redact(self.detail),
        }
        if self.connection is not None:
            body["connection"] = self.connection
        return body


class BadRequest(ProxyError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class Unauthorized(ProxyError):
    status = 401
    slug = "unauthorized"
    title = "A valid proxy key is required"


class Forbidden(ProxyError):
    status = 403
    slug = "forbidden"
    title = "Not allowed"


class NoConnection(ProxyError):
    status = 404
    slug = "no-connection"
    title = "No connection serves this path"


class TooManyRequests(ProxyError):
    """RFC 6585 §4; `Retry-After` (RFC 9110 §10.2.3) says when a retry should get through."""

    status = 429
    slug = "too-many-requests"
    title = "Too many requests for this connection"

    def __init__(self, detail: str, *, connection: str | None = None, retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            detail, connection=connection, headers={"Retry-After": str(self.retry_after)}
        )


class ClientQuotaExceeded(TooManyRequests):
    """A client sent more than its `[[clients]]` quota allows; nothing went upstream."""

    slug = "client-quota-exceeded"
    title = "Too many requests from this client"

    def __init__(self, detail: str, *, client: str, limit: str, retry_after: float) -> None:
        self.client = client
        self.limit = limit  # "rate" or "concurrency"
        super().__init__(detail, retry_after=retry_after)


class HeadersTooLarge(ProxyError):
    status = 431
    slug = "headers-too-large"
    title = "Request header fields too large"


class ConsentRequired(ProxyError):
    status = 503
    slug = "consent-required"
    title = "The account must be linked again"


class CredentialsRefused(ProxyError):
    status = 503
    slug = "credentials-refused"
    title = "The provider refuses the connection's credentials"


class TokenUnavailable(ProxyError):
    status = 503
    slug = "token-unavailable"
    title = "No usable access token"


class SubscriptionKeyRequired(ProxyError):
    status = 503
    slug = "subscription-key-required"
    title = "The connection has no subscription key"


class BadGateway(ProxyError, ConnectionError):
    status = 502
    slug = "bad-gateway"
    title = "The upstream could not be reached"

    def __init__(self, detail: str, *, connection: str | None = None, unsent: bool = False) -> None:
        super().__init__(detail, connection=connection)
        self.unsent = unsent  # True: no byte of the request left, so it may be sent again


class GatewayTimeout(ProxyError, TimeoutError):
    status = 504
    slug = "gateway-timeout"
    title = "The upstream did not answer in time"

    def __init__(self, detail: str, *, connection: str | None = None, unsent: bool = False) -> None:
        super().__init__(detail, connection=connection)
        self.unsent = unsent  # True: the connection was never opened
