"""The client-credentials grant and token revocation, as request shapes: pure, no I/O.

RFC 6749 §4.4.2: `grant_type=client_credentials`, an optional `scope`, and (a common extension,
e.g. Auth0 or RFC 8707-style servers) an `audience` and other form fields. The client
authenticates as RFC 6749 §2.3.1 allows: HTTP Basic (`client_secret_basic`, each part
form-urlencoded first) or the id and secret in the form body (`client_secret_post`), never both.

RFC 6749 §4.4.3: the answer SHOULD NOT hold a refresh token, so a client-credentials connection
simply asks again before its token expires. RFC 7009 revocation takes the same client auth.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from proxy.oauth.protocol import client_basic_auth

# RFC 7591 §2 names of the two methods; names, not passwords.
CLIENT_SECRET_BASIC: Final = "client_secret_basic"  # noqa: S105
CLIENT_SECRET_POST: Final = "client_secret_post"  # noqa: S105
AUTH_METHODS: Final = (CLIENT_SECRET_BASIC, CLIENT_SECRET_POST)


@dataclass(frozen=True)
class FormRequest:
    """A form POST to a token or revocation endpoint: its fields and its extra headers."""

    form: dict[str, str] = field(repr=False)
    headers: dict[str, str] = field(repr=False)


def authenticated(
    form: dict[str, str], *, client_id: str, client_secret: str, auth_method: str
) -> FormRequest:
    """`form` with the client's credentials added the way `auth_method` says (RFC 6749 §2.3.1)."""
    if auth_method == CLIENT_SECRET_BASIC:
        return FormRequest(form, {"Authorization": client_basic_auth(client_id, client_secret)})
    if auth_method == CLIENT_SECRET_POST:
        return FormRequest({**form, "client_id": client_id, "client_secret": client_secret}, {})
    raise ValueError(f"unknown client authentication method {auth_method!r}")


def token_request(
    *,
    client_id: str,
    client_secret: str,
    auth_method: str,
    scopes: tuple[str, ...] = (),
    audience: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> FormRequest:
    """RFC 6749 §4.4.2 access token request; `extra` fields come after the standard ones."""
    form = {"grant_type": "client_credentials"}
    if scopes:
        form["scope"] = " ".join(scopes)
    if audience is not None:
        form["audience"] = audience
    for name, value in extra:
        form.setdefault(name, value)  # the configuration refuses the standard names already
    return authenticated(
        form, client_id=client_id, client_secret=client_secret, auth_method=auth_method
    )


def revocation_request(
    token: str, *, hint: str, client_id: str, client_secret: str, auth_method: str
) -> FormRequest:
    """RFC 7009 §2.1: `token` and a `token_type_hint` ("access_token" or "refresh_token")."""
    return authenticated(
        {"token": token, "token_type_hint": hint},
        client_id=client_id,
        client_secret=client_secret,
        auth_method=auth_method,
    )
