"""Grant clients: the I/O half of talking to a token endpoint, one class per provider.

Each grant receives its HTTP session, clock and settings; the wire formats it speaks live in
`proxy.oauth` as pure functions (`protocol` for RFC 6749 and Nmbrs, `client_credentials`,
`nomba`, `nitro`), so these classes only send what those shape and hand back what they read.
How they reach an endpoint (discovery, the POST itself) is `proxy.tokens.endpoints`.

Every failure is a `GrantError`; its `fatal` flag tells the token manager whether asking again
can help.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import aiohttp

from proxy.core.secret import Secret
from proxy.oauth import client_credentials, nitro, nomba
from proxy.oauth.protocol import GrantError, parse_token_error, parse_token_response
from proxy.oauth.token_set import TokenSet
from proxy.tokens.endpoints import DIRECT_REACH, Clock, Discovery, Reach, Reply, post

__all__ = [
    "AuthorizationCodeGrant",
    "ClientCredentialsGrant",
    "Discovery",
    "Grant",
    "MachineGrant",
    "NitroGrant",
    "NombaGrant",
]

log = logging.getLogger(__name__)


class Grant(Protocol):
    """How a connection obtains a new token set from the one it has (None: it has none)."""

    # True when only a person can start the grant (consent); False for machine credentials.
    @property
    def interactive(self) -> bool: ...

    async def renew(self, current: TokenSet | None) -> TokenSet: ...

    async def revoke(self, current: TokenSet) -> None:
        """Have the provider revoke `current`; returns only once it confirmed."""
        ...


def _unsupported_revocation(why: str) -> GrantError:
    return GrantError("unsupported_revocation", why)


class AuthorizationCodeGrant:
    """Nmbrs-style: a person consents once, then single-use refresh tokens keep it alive."""

    interactive = True

    def __init__(
        self,
        session: aiohttp.ClientSession,
        discovery: Discovery,
        *,
        client_id: str,
        client_secret: Secret,
        redirect_uri: str,
        scopes: tuple[str, ...],
        timeout: aiohttp.ClientTimeout,
        clock: Clock,
        reach: Reach = DIRECT_REACH,
    ) -> None:
        self._session = session
        self._reach = reach
        self.discovery = discovery
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.scopes = scopes
        self._timeout = timeout
        self._clock = clock

    async def renew(self, current: TokenSet | None) -> TokenSet:
        if current is None or current.refresh_token is None:
            raise GrantError("invalid_grant", "no refresh token is stored: consent is needed")
        form = {"grant_type": "refresh_token", "refresh_token": current.refresh_token}
        return await self._token_request(form, previous=current)

    async def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str) -> TokenSet:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        return await self._token_request(form, previous=None)

    async def revoke(self, current: TokenSet) -> None:
        """RFC 7009 at the discovered revocation endpoint: the refresh token ends the grant."""
        endpoints = await self.discovery.endpoints()
        if endpoints.revocation is None:
            raise _unsupported_revocation("the discovery document names no revocation endpoint")
        token, hint = (
            (current.refresh_token, "refresh_token")
            if current.refresh_token is not None
            else (current.access_token, "access_token")
        )
        form = {"token": token, "token_type_hint": hint}
        reply = await self._post_form(endpoints.revocation, form, what="revocation endpoint")
        if reply.status != 200:
            raise parse_token_error(reply.status, reply.body)

    async def _post_form(
        self, url: str, form: dict[str, str], *, what: str = "token endpoint"
    ) -> Reply:
        """POST `form` with client_secret_basic, as the Nmbrs identity service wants it."""
        request = client_credentials.authenticated(
            form,
            client_id=self.client_id,
            client_secret=self._client_secret.reveal(),
            auth_method=client_credentials.CLIENT_SECRET_BASIC,
        )
        return await post(
            self._session, url, form=request.form, headers=request.headers,
            timeout=self._timeout, what=what, reach=self._reach,
        )  # fmt: skip

    async def _token_request(self, form: dict[str, str], *, previous: TokenSet | None) -> TokenSet:
        endpoints = await self.discovery.endpoints()
        requested_at = self._clock()
        try:
            reply = await self._post_form(endpoints.token, form)
        except GrantError:
            self.discovery.invalidate()  # the endpoint may have moved: read the document again
            raise
        if reply.status != 200:
            if reply.status == 404:
                self.discovery.invalidate()
            raise parse_token_error(reply.status, reply.body)
        return parse_token_response(
            reply.body, requested_at=requested_at, previous=previous, requested_scopes=self.scopes
        )


@dataclass(kw_only=True, eq=False)
class MachineGrant:
    """What the machine-credential grants share: no person is involved, and a token endpoint
    that takes the client's own credentials."""

    interactive: ClassVar[bool] = False

    session: aiohttp.ClientSession = field(repr=False)
    token_url: str
    client_id: str
    client_secret: Secret
    timeout: aiohttp.ClientTimeout = field(repr=False)
    clock: Clock = field(repr=False)
    reach: Reach = field(default=DIRECT_REACH, repr=False)

    async def _post(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        form: Mapping[str, str] | None = None,
        json_body: Mapping[str, str] | None = None,
        what: str = "token endpoint",
    ) -> Reply:
        return await post(
            self.session, url, headers=headers, timeout=self.timeout, form=form,
            json_body=json_body, what=what, reach=self.reach,
        )  # fmt: skip


@dataclass(kw_only=True, eq=False)
class ClientCredentialsGrant(MachineGrant):
    """RFC 6749 §4.4: machine credentials; no refresh token, a new token is simply asked for."""

    auth_method: str
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    revocation_url: str | None = None

    async def renew(self, current: TokenSet | None) -> TokenSet:  # noqa: ARG002 - never needed
        request = client_credentials.token_request(
            client_id=self.client_id,
            client_secret=self.client_secret.reveal(),
            auth_method=self.auth_method,
            scopes=self.scopes,
            audience=self.audience,
            extra=self.extra,
        )
        requested_at = self.clock()
        reply = await self._post(self.token_url, form=request.form, headers=request.headers)
        if reply.status != 200:
            raise parse_token_error(reply.status, reply.body)
        return parse_token_response(
            reply.body, requested_at=requested_at, previous=None, requested_scopes=self.scopes
        )

    async def revoke(self, current: TokenSet) -> None:
        if self.revocation_url is None:
            raise _unsupported_revocation("the connection has no revocation_url")
        request = client_credentials.revocation_request(
            current.access_token,
            hint="access_token",
            client_id=self.client_id,
            client_secret=self.client_secret.reveal(),
            auth_method=self.auth_method,
        )
        reply = await self._post(
            self.revocation_url,
            form=request.form,
            headers=request.headers,
            what="revocation endpoint",
        )
        if reply.status != 200:
            raise parse_token_error(reply.status, reply.body)


@dataclass(kw_only=True, eq=False)
class NombaGrant(MachineGrant):
    """Nomba: client credentials issue a token pair; the refresh token renews it while the
    access token still works, and a refused refresh falls back to a new issue."""

    account_id: str

    async def renew(self, current: TokenSet | None) -> TokenSet:
        # The refresh needs the current bearer, so only while it is still accepted.
        if current is not None and current.refresh_token and self.clock() < current.unusable_at:
            try:
                return await self._refresh(current, current.refresh_token)
            except GrantError as exc:
                if not exc.fatal:
                    raise  # transient: the current token serves, the refresher tries again
                log.info("Nomba refused the refresh (%s); issuing a new token", exc.error)
        return await self._issue()

    async def _issue(self) -> TokenSet:
        body = nomba.issue_body(self.client_id, self.client_secret.reveal())
        return await self._token_call(nomba.ISSUE, body, nomba.headers(self.account_id), None)

    async def _refresh(self, current: TokenSet, refresh_token: str) -> TokenSet:
        headers = nomba.headers(self.account_id, current.access_token)
        body = nomba.refresh_body(refresh_token)
        return await self._token_call(nomba.REFRESH, body, headers, current)

    async def _token_call(
        self, step: str, body: dict[str, str], headers: dict[str, str], current: TokenSet | None
    ) -> TokenSet:
        requested_at = self.clock()
        reply = await self._post(
            nomba.endpoint(self.token_url, step), json_body=body, headers=headers
        )
        return nomba.parse_token_answer(
            reply.status,
            reply.body,
            step=step,
            requested_at=requested_at,
            server_date=reply.date,
            previous=current,
        )

    async def revoke(self, current: TokenSet) -> None:
        reply = await self._post(
            nomba.endpoint(self.token_url, nomba.REVOKE),
            json_body=nomba.revoke_body(self.client_id, current.access_token),
            headers=nomba.headers(self.account_id),
            what="revocation endpoint",
        )
        nomba.check_revoke_answer(reply.status, reply.body)


@dataclass(kw_only=True, eq=False)
class NitroGrant(MachineGrant):
    """Nitro: JSON client credentials for a token; no refresh token and no revocation."""

    async def renew(self, current: TokenSet | None) -> TokenSet:  # noqa: ARG002 - never needed
        requested_at = self.clock()
        reply = await self._post(
            self.token_url,
            json_body=nitro.token_body(self.client_id, self.client_secret.reveal()),
            headers={},
        )
        return nitro.parse_token_answer(reply.status, reply.body, requested_at=requested_at)

    async def revoke(self, current: TokenSet) -> None:  # noqa: ARG002 - the protocol's shape
        raise _unsupported_revocation(
            "Nitro has no token revocation endpoint; its tokens end when they expire"
        )
