"""The fake Nmbrs API's resources: the route table, the handlers over `_data`, and paging.

Each route is a method, a path template (matched ignoring case, as ASP.NET does) and the scopes
of which any one suffices. `answer()` picks the route for a request whose bearer token has
already been checked: 404 for no such path, 405 (with `Allow`) for a known path and another
method, 403 `insufficient_scope` when the token has none of the route's scopes. Errors are
problem-details-like JSON bodies (`ApiProblem`).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import _data

MAX_PAGE_SIZE = 100
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


def _route(method: str, template: str, scopes: frozenset[str], handler: Handler) -> _Route:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
    pattern = re.compile(regex, re.IGNORECASE)  # ASP.NET routes ignore case
    return _Route(method, pattern, scopes, handler)


async def answer(request: web.Request, claims: AccessClaims) -> web.Response:
    """The answer of the route `request` is for; raises ApiProblem (403, 404, 405, or the
    route's own)."""
    allowed: list[str] = []
    for route in _ROUTES:
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


# -- paging and parameters -------------------------------------------------------------------


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


# -- the resources ---------------------------------------------------------------------------


async def debtors(request: web.Request, _c: AccessClaims, _p: Params) -> web.Response:
    return paginate(request, _data.DEBTORS)


async def debtor_companies(request: web.Request, _c: AccessClaims, params: Params) -> web.Response:
    debtor_id = _normalise_id(params["debtorId"])
    if not any(debtor["debtorId"] == debtor_id for debtor in _data.DEBTORS):
        raise ApiProblem(404, "Debtor not found.", "DebtorNotFound")
    rows = [company for company in _data.COMPANIES if company["debtorId"] == debtor_id]
    return paginate(request, rows)


async def companies(request: web.Request, _c: AccessClaims, _p: Params) -> web.Response:
    return paginate(request, _data.COMPANIES)


async def employees(request: web.Request, _c: AccessClaims, params: Params) -> web.Response:
    rows = _data.EMPLOYEES_BY_COMPANY.get(_company_id(params))
    assert rows is not None
    return paginate(request, [_data.list_row(row) for row in rows])


async def hourcodes(request: web.Request, _c: AccessClaims, params: Params) -> web.Response:
    _company_id(params)
    return paginate(request, _data.HOURCODES)


async def runs(request: web.Request, _c: AccessClaims, params: Params) -> web.Response:
    company_id = _company_id(params)
    year = _int_param(request, "year", None)
    return paginate(request, _data.runs(company_id, year))


async def employee(_r: web.Request, _c: AccessClaims, params: Params) -> web.Response:
    return web.json_response(_employee(params))


async def personal_info(request: web.Request, _c: AccessClaims, params: Params) -> web.Response:
    found = _employee(params)
    if request.content_type != "application/json":
        raise ApiProblem(415, "Content-Type must be application/json.", "UnsupportedMediaType")
    try:
        body = json.loads(await request.read())
    except ValueError as exc:
        raise ApiProblem(400, "The body is not valid JSON.", "InvalidBody") from exc
    if not isinstance(body, dict):
        raise ApiProblem(400, "The body must be a JSON object.", "InvalidBody")
    return web.json_response({"employeeId": found["employeeId"], **body})


async def user_info(_r: web.Request, claims: AccessClaims, _p: Params) -> web.Response:
    return web.json_response(
        {
            "userId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"nmbrs-sandbox:{claims.sub}")),
            "sub": claims.sub,
            "clientId": claims.client_id,
            "username": f"{claims.sub}@sandbox.invalid",
            "debtorIds": [debtor["debtorId"] for debtor in _data.DEBTORS],
        }
    )


_GET, _PUT = "GET", "PUT"
_ROUTES = (
    _route(_GET, "/api/debtors", COMPANY_READ, debtors),
    _route(_GET, "/api/debtors/{debtorId}/companies", COMPANY_READ, debtor_companies),
    _route(_GET, "/api/companies", COMPANY_READ, companies),
    _route(_GET, "/api/companies/{companyId}/employees", EMPLOYEE_READ, employees),
    _route(_GET, "/api/companies/{companyId}/hourcodes", COMPANY_READ, hourcodes),
    _route(_GET, "/api/companies/{companyId}/runs", COMPANY_READ, runs),
    _route(_GET, "/api/employees/{employeeId}", EMPLOYEE_READ, employee),
    _route(_PUT, "/api/employees/{employeeId}/personalInfo", EMPLOYEE_WRITE, personal_info),
    _route(_GET, "/api/user/info", USER_READ, user_info),
)
