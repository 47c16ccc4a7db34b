"""The fake Nmbrs REST API (api.nmbrsapp.com shape) behind a fake API-management gateway.

Per request under /api: subscription key, then rate limit, then maintenance (503), then bearer
token, then route, then scope. Every request is recorded in the sandbox stats, with the time it
arrived.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from aiohttp import web
from multidict import CIMultiDict

from . import _data
from ._stats import RecordedRequest

if TYPE_CHECKING:
    from ._server import Sandbox

MAX_PAGE_SIZE = 100
_CLOCK_SKEW = 1.0  # seconds of leeway on nbf/iat only; exp is exact
_DIGITS = re.compile(r"[0-9]{1,9}")
_PROBLEM_TYPES = {
    400: "https://tools.ietf.org/html/rfc9110#section-15.5.1",
    401: "https://tools.ietf.org/html/rfc9110#section-15.5.2",
    403: "https://tools.ietf.org/html/rfc9110#section-15.5.4",
    404: "https://tools.ietf.org/html/rfc9110#section-15.5.5",
    405: "https://tools.ietf.org/html/rfc9110#section-15.5.6",
    415: "https://tools.ietf.org/html/rfc9110#section-15.5.16",
}
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    415: "Unsupported Media Type",
}

COMPANY_READ = frozenset({"company.info.read", "company.info"})
EMPLOYEE_READ = frozenset({"employee.info.read", "employee.info"})
EMPLOYEE_WRITE = frozenset({"employee.info"})
USER_READ = frozenset({"user.info.read"})


class ApiProblem(Exception):
    """An application error answered as a problem-details-like JSON body."""

    def __init__(
        self, status: int, detail: str, code: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response(
            {
                "type": _PROBLEM_TYPES.get(self.status, "about:blank"),
                "title": _TITLES.get(self.status, "Error"),
                "status": self.status,
                "detail": self.detail,
                "code": self.code,
            },
            status=self.status,
            headers=self.headers,
        )


def _gateway_error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"statusCode": status, "message": message}, status=status, headers=headers
    )


def _invalid_token(description: str) -> ApiProblem:
    challenge = f'Bearer error="invalid_token", error_description="{description}"'
    return ApiProblem(401, description, "InvalidToken", headers={"WWW-Authenticate": challenge})


@dataclass(frozen=True)
class Maintenance:
    """A maintenance window: every API call gets 503, with `Retry-After` when one is given."""

    retry_after: int | None = None

    def response(self) -> web.Response:
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        return _gateway_error(
            503, "The service is temporarily unavailable for maintenance.", headers
        )


@dataclass(frozen=True)
class AccessClaims:
    sub: str
    client_id: str
    scopes: frozenset[str]
    jti: str


Params = dict[str, str]
Handler = Callable[[web.Request, AccessClaims, Params], Awaitable[web.Response]]


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    scopes: frozenset[str]  # any one of them suffices
    handler: Handler


def _pattern(template: str) -> re.Pattern[str]:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    return re.compile(regex, re.IGNORECASE)  # ASP.NET routes ignore case


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    values = request.query.getall(name, [])
    if not values:
        return default
    if len(values) > 1 or not _DIGITS.fullmatch(values[0]):
        raise ApiProblem(400, f"The value of '{name}' is not a valid number.", "InvalidParameter")
    return int(values[0])


def paginate(request: web.Request, rows: Sequence[dict[str, Any]]) -> web.Response:
    number = _int_param(request, "pageNumber", 1)
    size = _int_param(request, "pageSize", MAX_PAGE_SIZE)
    assert number is not None
    assert size is not None
    if number < 1:
        raise ApiProblem(400, "pageNumber must be 1 or more.", "InvalidParameter")
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise ApiProblem(
            400, f"pageSize must be between 1 and {MAX_PAGE_SIZE}.", "InvalidParameter"
        )
    total = len(rows)
    pages = math.ceil(total / size)

    def page_url(page: int) -> str:
        return str(request.url.update_query({"pageNumber": page, "pageSize": size}))

    return web.json_response(
        {
            "pagination": {
                "pageNumber": number,
                "pageSize": size,
                "firstPage": page_url(1),
                "lastPage": page_url(max(pages, 1)),
                "totalPages": pages,
                "totalRecords": total,
                "nextPage": page_url(number + 1) if number < pages else None,
                "previousPage": page_url(min(number - 1, max(pages, 1))) if number > 1 else None,
            },
            "data": list(rows[(number - 1) * size : number * size]),
        }
    )


class NmbrsApi:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._windows: dict[str, deque[float]] = {}
        get, put = "GET", "PUT"
        self._routes = [
            self._route(get, "/api/debtors", COMPANY_READ, self.debtors),
            self._route(
                get, "/api/debtors/{debtorId}/companies", COMPANY_READ, self.debtor_companies
            ),
            self._route(get, "/api/companies", COMPANY_READ, self.companies),
            self._route(get, "/api/companies/{companyId}/employees", EMPLOYEE_READ, self.employees),
            self._route(get, "/api/companies/{companyId}/hourcodes", COMPANY_READ, self.hourcodes),
            self._route(get, "/api/companies/{companyId}/runs", COMPANY_READ, self.runs),
            self._route(get, "/api/employees/{employeeId}", EMPLOYEE_READ, self.employee),
            self._route(
                put, "/api/employees/{employeeId}/personalInfo", EMPLOYEE_WRITE, self.personal_info
            ),
            self._route(get, "/api/user/info", USER_READ, self.user_info),
        ]

    @staticmethod
    def _route(method: str, template: str, scopes: frozenset[str], handler: Handler) -> _Route:
        return _Route(method, _pattern(template), scopes, handler)

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_route("*", "/api", self.dispatch)
        router.add_route("*", "/api/{tail:.*}", self.dispatch)

    async def dispatch(self, request: web.Request) -> web.Response:
        stats = self.sandbox.stats
        stats.api_requests += 1
        record = RecordedRequest(
            request.method, request.raw_path, CIMultiDict(request.headers), at=self.sandbox.clock()
        )
        stats.api_log.append(record)
        try:
            response = await self._handle(request)
        except ApiProblem as problem:
            response = problem.response()
        cache_control = self.sandbox.settings.api_cache_control
        if cache_control is not None and response.status == 200:
            response.headers["Cache-Control"] = cache_control
        record.status = response.status
        stats.api_statuses[response.status] += 1
        return response

    async def _handle(self, request: web.Request) -> web.Response:
        rejected = self._gateway(request)
        if rejected is not None:
            return rejected
        if self.sandbox.maintenance is not None:
            return self.sandbox.maintenance.response()
        if self.sandbox.api_delay:
            await asyncio.sleep(self.sandbox.api_delay)
        claims = self._authenticate(request)
        allowed: list[str] = []
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match is None:
                continue
            if route.method != request.method:
                allowed.append(route.method)
                continue
            if not route.scopes & claims.scopes:
                needed = " ".join(sorted(route.scopes))
                raise ApiProblem(
                    403,
                    f"The access token lacks a scope needed here (one of: {needed}).",
                    "InsufficientScope",
                    headers={
                        "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'
                    },
                )
            return await route.handler(request, claims, match.groupdict())
        if allowed:
            raise ApiProblem(
                405,
                "Method not allowed.",
                "MethodNotAllowed",
                headers={"Allow": ", ".join(allowed)},
            )
        raise ApiProblem(404, "No such resource.", "NotFound")

    # -- gateway: subscription key and rate limit ----------------------------------------

    def _gateway(self, request: web.Request) -> web.Response | None:
        settings = self.sandbox.settings
        key = request.headers.get("X-Subscription-Key")
        if key is None:
            return _gateway_error(
                401,
                "Access denied due to missing subscription key. Make sure to include "
                "subscription key when making requests to an API.",
            )
        if key not in settings.subscription_keys:
            return _gateway_error(
                401,
                "Access denied due to invalid subscription key. Make sure to provide a valid "
                "key for an active subscription.",
            )
        if settings.rate_limit is None:
            return None
        now = self.sandbox.clock()
        window = self._windows.setdefault(key, deque())
        while window and window[0] <= now - settings.rate_window:
            window.popleft()
        if len(window) >= settings.rate_limit:
            wait = max(1, math.ceil(window[0] + settings.rate_window - now))
            return _gateway_error(
                429,
                f"Rate limit is exceeded. Try again in {wait} seconds.",
                headers={"Retry-After": str(wait)},
            )
        window.append(now)
        return None

    # -- bearer token --------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> AccessClaims:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiProblem(
                401, "No bearer token.", "Unauthorized", headers={"WWW-Authenticate": "Bearer"}
            )
        sandbox = self.sandbox
        try:
            claims = sandbox.signing_key.verify_signature(token)
        except jwt.InvalidTokenError as exc:
            raise _invalid_token("The token is not valid") from exc
        issuer = claims["iss"]
        expected = sandbox.settings.issuer
        if (expected is not None and issuer != expected) or issuer not in sandbox.grants.issuers:
            raise _invalid_token("The issuer is invalid")
        times = [claims[name] for name in ("exp", "nbf", "iat")]
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in times):
            raise _invalid_token("The token lifetime is invalid")
        exp, nbf, iat = (float(t) for t in times)
        now = sandbox.clock()
        if now >= exp:
            raise _invalid_token("The token is expired")
        if nbf > now + _CLOCK_SKEW or iat > now + _CLOCK_SKEW:
            raise _invalid_token("The token is not valid yet")
        jti = str(claims["jti"])
        why = sandbox.grants.access_token_problem(jti)
        if why is not None:
            raise _invalid_token(why.rstrip("."))
        scope = claims["scope"]
        scopes = frozenset(scope.split() if isinstance(scope, str) else map(str, scope))
        return AccessClaims(str(claims["sub"]), str(claims["client_id"]), scopes, jti)

    # -- endpoints -----------------------------------------------------------------------

    async def debtors(self, request: web.Request, _c: AccessClaims, _p: Params) -> web.Response:
        return paginate(request, _data.DEBTORS)

    async def debtor_companies(
        self, request: web.Request, _c: AccessClaims, params: Params
    ) -> web.Response:
        debtor_id = _normalise_id(params["debtorId"])
        if not any(debtor["debtorId"] == debtor_id for debtor in _data.DEBTORS):
            raise ApiProblem(404, "Debtor not found.", "DebtorNotFound")
        rows = [company for company in _data.COMPANIES if company["debtorId"] == debtor_id]
        return paginate(request, rows)

    async def companies(self, request: web.Request, _c: AccessClaims, _p: Params) -> web.Response:
        return paginate(request, _data.COMPANIES)

    async def employees(
        self, request: web.Request, _c: AccessClaims, params: Params
    ) -> web.Response:
        rows = _data.EMPLOYEES_BY_COMPANY.get(_company_id(params))
        assert rows is not None
        return paginate(request, [_data.list_row(row) for row in rows])

    async def hourcodes(
        self, request: web.Request, _c: AccessClaims, params: Params
    ) -> web.Response:
        _company_id(params)
        return paginate(request, _data.HOURCODES)

    async def runs(self, request: web.Request, _c: AccessClaims, params: Params) -> web.Response:
        company_id = _company_id(params)
        year = _int_param(request, "year", None)
        return paginate(request, _data.runs(company_id, year))

    async def employee(self, _r: web.Request, _c: AccessClaims, params: Params) -> web.Response:
        return web.json_response(_employee(params))

    async def personal_info(
        self, request: web.Request, _c: AccessClaims, params: Params
    ) -> web.Response:
        employee = _employee(params)
        if request.content_type != "application/json":
            raise ApiProblem(415, "Content-Type must be application/json.", "UnsupportedMediaType")
        try:
            body = json.loads(await request.read())
        except ValueError as exc:
            raise ApiProblem(400, "The body is not valid JSON.", "InvalidBody") from exc
        if not isinstance(body, dict):
            raise ApiProblem(400, "The body must be a JSON object.", "InvalidBody")
        return web.json_response({"employeeId": employee["employeeId"], **body})

    async def user_info(self, _r: web.Request, claims: AccessClaims, _p: Params) -> web.Response:
        return web.json_response(
            {
                "userId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"nmbrs-sandbox:{claims.sub}")),
                "sub": claims.sub,
                "clientId": claims.client_id,
                "username": f"{claims.sub}@sandbox.invalid",
                "debtorIds": [debtor["debtorId"] for debtor in _data.DEBTORS],
            }
        )


def _normalise_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return raw


def _company_id(params: Params) -> str:
    company_id = _normalise_id(params["companyId"])
    if company_id not in _data.COMPANY_IDS:
        raise ApiProblem(404, "Company not found.", "CompanyNotFound")
    return company_id


def _employee(params: Params) -> dict[str, Any]:
    employee = _data.EMPLOYEES.get(_normalise_id(params["employeeId"]))
    if employee is None:
        raise ApiProblem(404, "Employee not found.", "EmployeeNotFound")
    return employee
