"""The fake Nmbrs API: gateway key, rate limit, bearer token, scopes, pagination, data."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from yarl import URL

from proxy.sandbox import DEMO_CLIENT_ID, DEMO_SUBSCRIPTION_KEY, Sandbox, SandboxSettings
from tests.clock import FakeClock
from tests.sandbox.conftest import MakeFlow
from tests.sandbox.sandbox_helpers import Flow

SandboxFlow = tuple[Sandbox, Flow]
ALL_READ = ("company.info.read", "employee.info.read", "user.info.read")


def tokens_for(sandbox: Sandbox, flow: Flow, scopes: tuple[str, ...] = ALL_READ) -> str:
    issuer = str(flow.client.make_url("")).rstrip("/")
    return str(sandbox.issue_tokens_for_test(DEMO_CLIENT_ID, scopes, issuer=issuer)["access_token"])


async def first_company(sandbox: Sandbox, flow: Flow) -> str:
    answer = await flow.api("/api/companies", tokens_for(sandbox, flow))
    return str(answer.body["data"][0]["companyId"])


# -- gateway --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "Access denied due to missing subscription key."),
        ("wrong-key", "Access denied due to invalid subscription key."),
        ("", "Access denied due to invalid subscription key."),
    ],
)
async def test_subscription_key(sandbox_flow: SandboxFlow, key: str | None, message: str) -> None:
    sandbox, flow = sandbox_flow
    answer = await flow.api("/api/companies", tokens_for(sandbox, flow), key=key)
    assert answer.status == 401
    assert answer.body["statusCode"] == 401
    assert answer.body["message"].startswith(message)
    assert "WWW-Authenticate" not in answer.headers


async def test_subscription_key_is_checked_before_the_token(sandbox_flow: SandboxFlow) -> None:
    _, flow = sandbox_flow
    answer = await flow.api("/api/companies", None, key=None)
    assert answer.body["statusCode"] == 401
    assert "subscription key" in answer.body["message"]


async def test_rate_limit(make_flow: MakeFlow, clock: FakeClock) -> None:
    sandbox, flow = await make_flow(SandboxSettings(rate_limit=3, rate_window=10.0))
    token = tokens_for(sandbox, flow)
    for _ in range(3):
        assert (await flow.api("/api/companies", token)).status == 200
    clock.advance(2.5)
    answer = await flow.api("/api/companies", token)
    assert answer.status == 429
    assert answer.headers["Retry-After"] == "8"
    assert answer.body == {
        "statusCode": 429,
        "message": "Rate limit is exceeded. Try again in 8 seconds.",
    }
    # The limit is per key and checked before the token.
    assert (await flow.api("/api/companies", "garbage")).status == 429
    clock.advance(7.5)
    assert (await flow.api("/api/companies", token)).status == 200
    assert sandbox.stats.api_statuses == {200: 4, 429: 2}


async def test_retry_after_is_at_least_one_second(make_flow: MakeFlow, clock: FakeClock) -> None:
    sandbox, flow = await make_flow(SandboxSettings(rate_limit=1, rate_window=0.2))
    token = tokens_for(sandbox, flow)
    assert (await flow.api("/api/companies", token)).status == 200
    answer = await flow.api("/api/companies", token)
    assert answer.status == 429
    assert answer.headers["Retry-After"] == "1"
    clock.advance(0.2)
    assert (await flow.api("/api/companies", token)).status == 200


# -- maintenance, slowness, caching headers ---------------------------------------------------


@pytest.mark.parametrize(("retry_after", "header"), [(None, None), (30, "30")])
async def test_maintenance_answers_503_after_the_gateway(
    sandbox_flow: SandboxFlow, retry_after: int | None, header: str | None
) -> None:
    sandbox, flow = sandbox_flow
    token = tokens_for(sandbox, flow)
    sandbox.start_maintenance(retry_after=retry_after)
    answer = await flow.api("/api/companies", token)
    assert answer.status == 503
    assert answer.headers.get("Retry-After") == header
    assert answer.body == {
        "statusCode": 503,
        "message": "The service is temporarily unavailable for maintenance.",
    }
    # the gateway still checks the key first; a bad token is not even looked at
    assert (await flow.api("/api/companies", token, key="wrong-key")).status == 401
    assert (await flow.api("/api/companies", "garbage")).status == 503
    sandbox.end_maintenance()
    assert (await flow.api("/api/companies", token)).status == 200
    assert sandbox.stats.api_statuses == {503: 2, 401: 1, 200: 1}


async def test_maintenance_counts_against_the_rate_limit(make_flow: MakeFlow) -> None:
    sandbox, flow = await make_flow(SandboxSettings(rate_limit=1, rate_window=10.0))
    token = tokens_for(sandbox, flow)
    sandbox.start_maintenance()
    assert (await flow.api("/api/companies", token)).status == 503
    sandbox.end_maintenance()
    assert (await flow.api("/api/companies", token)).status == 429


async def test_api_delay_holds_answers_back(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    token = tokens_for(sandbox, flow)
    sandbox.api_delay = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await flow.api("/api/companies", token)).status == 200
    assert loop.time() - started >= 0.2


@pytest.mark.parametrize(
    ("setting", "path", "expected"),
    [
        (None, "/api/companies", None),
        ("private, max-age=60", "/api/companies", "private, max-age=60"),
        ("no-store", "/api/companies/nope/employees", None),  # only on a 200
    ],
)
async def test_api_cache_control(
    make_flow: MakeFlow, setting: str | None, path: str, expected: str | None
) -> None:
    sandbox, flow = await make_flow(SandboxSettings(api_cache_control=setting))
    answer = await flow.api(path, tokens_for(sandbox, flow))
    assert answer.headers.get("Cache-Control") == expected


async def test_arrival_times_are_recorded(make_flow: MakeFlow, clock: FakeClock) -> None:
    sandbox, flow = await make_flow()
    token = tokens_for(sandbox, flow)
    await flow.api("/api/companies", token)
    clock.advance(1.5)
    await flow.api("/api/companies", token, key=None)
    first, second = sandbox.stats.api_log
    assert first.at is not None
    assert second.at == first.at + 1.5


# -- bearer token ---------------------------------------------------------------------------


async def test_missing_bearer(sandbox_flow: SandboxFlow) -> None:
    _, flow = sandbox_flow
    answer = await flow.api("/api/companies", None)
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert answer.body["status"] == 401


@pytest.mark.parametrize(
    "spoil",
    [
        "garbage",
        "tampered",
        "expired",
        "revoked",
        "foreign-key",
        "other-issuer",
    ],
)
async def test_bad_bearer_is_invalid_token(
    make_flow: MakeFlow, clock: FakeClock, spoil: str
) -> None:
    sandbox, flow = await make_flow(SandboxSettings(access_token_lifetime=3.0))
    token = tokens_for(sandbox, flow)
    assert (await flow.api("/api/companies", token)).status == 200
    if spoil == "garbage":
        token = "not.a.jwt"
    elif spoil == "tampered":
        head, body, sig = token.split(".")
        token = f"{head}.{body}.{sig[:-4]}AAAA"
    elif spoil == "expired":
        clock.advance(3.0)
    elif spoil == "revoked":
        sandbox.revoke_access_tokens()
    elif spoil == "foreign-key":
        stranger = Sandbox(clock=clock)
        token = str(
            stranger.issue_tokens_for_test(DEMO_CLIENT_ID, ALL_READ, issuer="http://x")[
                "access_token"
            ]
        )
    elif spoil == "other-issuer":
        token = str(
            sandbox.issue_tokens_for_test(
                DEMO_CLIENT_ID, ALL_READ, issuer="https://identityservice.nmbrs.com"
            )["access_token"]
        )
        sandbox.grants.issuers.discard("https://identityservice.nmbrs.com")
    answer = await flow.api("/api/companies", token)
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    assert set(answer.body) == {"type", "title", "status", "detail", "code"}
    assert answer.body["status"] == 401


async def test_token_valid_until_just_before_exp(make_flow: MakeFlow, clock: FakeClock) -> None:
    sandbox, flow = await make_flow(SandboxSettings(access_token_lifetime=3.0))
    token = tokens_for(sandbox, flow)
    clock.advance(2.99)
    assert (await flow.api("/api/companies", token)).status == 200


async def test_revoke_access_tokens_spares_new_ones(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    old = tokens_for(sandbox, flow)
    sandbox.revoke_access_tokens()
    new = tokens_for(sandbox, flow)
    assert (await flow.api("/api/companies", old)).status == 401
    assert (await flow.api("/api/companies", new)).status == 200


# -- scopes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scopes", "path", "status"),
    [
        (("company.info.read",), "/api/companies", 200),
        (("company.info",), "/api/companies", 200),
        (("employee.info.read",), "/api/companies", 403),
        (("company.info.read",), "/api/debtors", 200),
        (("employee.info.read",), "/api/companies/{company}/employees", 200),
        (("employee.info",), "/api/companies/{company}/employees", 200),
        (("company.info.read",), "/api/companies/{company}/employees", 403),
        (("company.info.read",), "/api/companies/{company}/hourcodes", 200),
        (("employee.info.read",), "/api/companies/{company}/hourcodes", 403),
        (("company.info.read",), "/api/companies/{company}/runs?year=2024", 200),
        (("user.info.read",), "/api/user/info", 200),
        (("company.info",), "/api/user/info", 403),
    ],
)
async def test_scopes(
    sandbox_flow: SandboxFlow, scopes: tuple[str, ...], path: str, status: int
) -> None:
    sandbox, flow = sandbox_flow
    path = path.format(company=await first_company(sandbox, flow))
    answer = await flow.api(path, tokens_for(sandbox, flow, scopes))
    assert answer.status == status, answer.body
    if status == 403:
        assert answer.body["status"] == 403
        assert answer.body["code"] == "InsufficientScope"
        assert set(answer.body) == {"type", "title", "status", "detail", "code"}


async def test_writing_needs_the_write_scope(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    company = await first_company(sandbox, flow)
    employees = await flow.api(f"/api/companies/{company}/employees", tokens_for(sandbox, flow))
    employee = employees.body["data"][0]["employeeId"]
    path = f"/api/employees/{employee}/personalInfo"
    change = {"firstName": "Renée", "birthDate": "1990-01-01"}
    read_only = await flow.api(path, tokens_for(sandbox, flow), method="PUT", json=change)
    assert read_only.status == 403
    writer = tokens_for(sandbox, flow, ("employee.info",))
    answer = await flow.api(path, writer, method="PUT", json=change)
    assert answer.status == 200
    assert answer.body == {"employeeId": employee, **change}
    not_json = await flow.api(path, writer, method="PUT", json=[1, 2])
    assert not_json.status == 400


# -- pagination and data --------------------------------------------------------------------


async def test_pagination_wrapper(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    token = tokens_for(sandbox, flow)
    company = await first_company(sandbox, flow)
    path = f"/api/companies/{company}/employees"
    page1 = await flow.api(f"{path}?pageNumber=1&pageSize=20", token)
    assert page1.status == 200
    assert page1.headers["Content-Type"] == "application/json; charset=utf-8"
    pagination: dict[str, Any] = page1.body["pagination"]
    base = flow.client.make_url(path)
    assert pagination == {
        "pageNumber": 1,
        "pageSize": 20,
        "firstPage": str(base.with_query(pageNumber=1, pageSize=20)),
        "lastPage": str(base.with_query(pageNumber=2, pageSize=20)),
        "totalPages": 2,
        "totalRecords": 37,
        "nextPage": str(base.with_query(pageNumber=2, pageSize=20)),
        "previousPage": None,
    }
    assert len(page1.body["data"]) == 20
    row = page1.body["data"][0]
    assert set(row) == {"employeeId", "employeeBasicInfo"}
    assert set(row["employeeBasicInfo"]) == {
        "employeeNumber",
        "firstName",
        "lastName",
        "employeeType",
    }
    next_url = URL(pagination["nextPage"])
    page2 = await flow.api(str(next_url.relative()), token)
    assert page2.body["pagination"]["nextPage"] is None
    assert page2.body["pagination"]["previousPage"] == pagination["firstPage"]
    assert len(page2.body["data"]) == 17
    ids = {r["employeeId"] for r in page1.body["data"] + page2.body["data"]}
    assert len(ids) == 37


async def test_default_page_and_extra_query_kept(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    token = tokens_for(sandbox, flow)
    company = await first_company(sandbox, flow)
    runs = await flow.api(f"/api/companies/{company}/runs?year=2024&pageSize=5", token)
    assert runs.body["pagination"]["totalRecords"] == 12
    assert {run["year"] for run in runs.body["data"]} == {2024}
    next_page = URL(runs.body["pagination"]["nextPage"])
    assert next_page.query == {"year": "2024", "pageSize": "5", "pageNumber": "2"}
    hourcodes = await flow.api(f"/api/companies/{company}/hourcodes", token)
    assert hourcodes.body["pagination"]["pageSize"] == 100
    assert hourcodes.body["pagination"]["totalRecords"] == 25
    assert hourcodes.body["pagination"]["totalPages"] == 1
    assert hourcodes.body["pagination"]["nextPage"] is None


@pytest.mark.parametrize(
    "query",
    [
        "pageSize=0",
        "pageSize=101",
        "pageSize=abc",
        "pageNumber=0",
        "pageNumber=-1",
        "pageNumber=1.5",
    ],
)
async def test_bad_paging_is_400(sandbox_flow: SandboxFlow, query: str) -> None:
    sandbox, flow = sandbox_flow
    answer = await flow.api(f"/api/companies?{query}", tokens_for(sandbox, flow))
    assert answer.status == 400
    assert answer.body["status"] == 400


async def test_companies_and_debtors(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    token = tokens_for(sandbox, flow)
    companies = (await flow.api("/api/companies", token)).body["data"]
    debtors = (await flow.api("/api/debtors", token)).body["data"]
    assert len(companies) == 3
    assert len(debtors) == 2
    assert set(companies[0]) == {"companyId", "number", "name", "debtorId"}
    per_debtor = [
        (await flow.api(f"/api/debtors/{d['debtorId']}/companies", token)).body["data"]
        for d in debtors
    ]
    assert sorted(len(c) for c in per_debtor) == [1, 2]
    again = (await flow.api("/api/companies", token)).body["data"]
    assert again == companies  # deterministic


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/companies/00000000-0000-0000-0000-000000000000/employees", 404),
        ("/api/companies/not-a-guid/hourcodes", 404),
        ("/api/employees/00000000-0000-0000-0000-000000000000", 404),
        ("/api/debtors/00000000-0000-0000-0000-000000000000/companies", 404),
        ("/api/nothing/here", 404),
        ("/api", 404),
    ],
)
async def test_not_found(sandbox_flow: SandboxFlow, path: str, status: int) -> None:
    sandbox, flow = sandbox_flow
    answer = await flow.api(path, tokens_for(sandbox, flow, ALL_READ))
    assert answer.status == status
    assert answer.body["status"] == status
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"


async def test_wrong_method(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    answer = await flow.api("/api/companies", tokens_for(sandbox, flow), method="DELETE")
    assert answer.status == 405
    assert answer.headers["Allow"] == "GET"


async def test_employee_and_user_info(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    token = tokens_for(sandbox, flow)
    company = await first_company(sandbox, flow)
    rows = (await flow.api(f"/api/companies/{company}/employees", token)).body["data"]
    employee = await flow.api(f"/api/employees/{rows[3]['employeeId']}", token)
    assert employee.status == 200
    assert employee.body["employeeBasicInfo"] == rows[3]["employeeBasicInfo"]
    assert employee.body["companyId"] == company
    user = await flow.api("/api/user/info", token)
    assert user.body["sub"] == "test-user"
    assert user.body["clientId"] == DEMO_CLIENT_ID


async def test_requests_are_recorded_raw(sandbox_flow: SandboxFlow) -> None:
    sandbox, flow = sandbox_flow
    token = tokens_for(sandbox, flow)
    await flow.api("/api/companies?pageSize=2&x=a%20b", token)
    await flow.api("/api/companies", token, key=None)
    assert sandbox.stats.api_requests == 2
    first, second = sandbox.stats.api_log
    assert first.method == "GET"
    assert first.path_qs == "/api/companies?pageSize=2&x=a%20b"
    assert first.headers["Authorization"] == f"Bearer {token}"
    assert first.headers["X-Subscription-Key"] == DEMO_SUBSCRIPTION_KEY
    assert first.status == 200
    assert second.status == 401
    assert sandbox.stats.last_api_headers is second.headers
    assert "X-Subscription-Key" not in second.headers
