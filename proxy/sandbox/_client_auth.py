"""How the fakes read a token or revocation request, and how they refuse one.

A strict form body (UTF-8, no repeated parameter), client authentication by HTTP Basic or the
form, never both, with the Basic credentials decoded as RFC 6749 §2.3.1 says (base64, then each
part form-urldecoded), a constant-time secret check, and the RFC 6749 §5.2 error body. The Nmbrs
identity service and the client-credentials fake share these; the fake Nomba and Nitro only the
secret check.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import urllib.parse
from collections.abc import Mapping

from aiohttp import web

from ._grants import OAuthError
from ._settings import SandboxClient

FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def parse_form(body: bytes) -> dict[str, str]:
    """Strict x-www-form-urlencoded parsing: UTF-8, no repeated parameter; blank = omitted."""
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except ValueError as exc:  # UnicodeDecodeError included
        raise OAuthError("invalid_request", "The body is not valid UTF-8 form data.") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"Parameter {name!r} is repeated.")
        form[name] = value
    # RFC 6749 section 3.1: parameters sent without a value are treated as omitted.
    return {name: value for name, value in form.items() if value != ""}


def decode_basic(credentials: str) -> tuple[str, str]:
    """RFC 6749 section 2.3.1: base64, split at the first ':', then form-urldecode each part."""
    try:
        raw = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise OAuthError("invalid_client", "Malformed Basic credentials.", status=401) from exc
    if ":" not in raw:
        raise OAuthError("invalid_client", "Malformed Basic credentials.", status=401)
    raw_id, raw_secret = raw.split(":", 1)
    try:
        return (
            urllib.parse.unquote_plus(raw_id, errors="strict"),
            urllib.parse.unquote_plus(raw_secret, errors="strict"),
        )
    except UnicodeDecodeError as exc:
        raise OAuthError("invalid_client", "Malformed Basic credentials.", status=401) from exc


def client_credentials_of(request: web.Request, form: Mapping[str, str]) -> tuple[str, str, str]:
    """(client_id, secret, method) of a token or revocation request, RFC 6749 §2.3.1: HTTP
    Basic or the form body, never both; the method is client_secret_basic or _post."""
    header = request.headers.get("Authorization")
    if header is None:
        client_id = form.get("client_id", "")
        secret = form.get("client_secret", "")
        if not client_id or not secret:
            raise OAuthError("invalid_client", "No client authentication.", status=401)
        return client_id, secret, "client_secret_post"
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError("invalid_client", "Unsupported authentication scheme.", status=401)
    client_id, secret = decode_basic(credentials)
    if "client_secret" in form:
        raise OAuthError("invalid_request", "Use one client authentication method only.")
    if "client_id" in form and form["client_id"] != client_id:
        raise OAuthError("invalid_request", "client_id differs from the Basic credentials.")
    return client_id, secret, "client_secret_basic"


def secret_matches(expected: str | None, secret: str) -> bool:
    """Constant-time comparison, taking as long when the client is unknown (`expected` None)."""
    reference = expected if expected is not None else secrets.token_urlsafe(16)
    return hmac.compare_digest(secret.encode("utf-8"), reference.encode("utf-8"))


def authenticate(
    clients: Mapping[str, SandboxClient], request: web.Request, form: Mapping[str, str]
) -> SandboxClient:
    """The registered Nmbrs client a token or revocation request authenticates as (either
    method will do), else invalid_client (401)."""
    client_id, secret, _ = client_credentials_of(request, form)
    client = clients.get(client_id)
    if not secret_matches(client.client_secret if client is not None else None, secret):
        raise OAuthError("invalid_client", "Unknown client or wrong secret.", status=401)
    assert client is not None
    return client


def error_json(exc: OAuthError) -> web.Response:
    headers = dict(NO_STORE)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="nmbrs-sandbox"'
    return web.json_response(
        {"error": exc.error, "error_description": exc.description},
        status=exc.status,
        headers=headers,
    )
