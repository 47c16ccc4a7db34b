"""Deterministic fake payroll data: the same ids and names on every run."""

from __future__ import annotations

import uuid
from typing import Any

_NAMESPACE = uuid.UUID("2d0f5e0c-6b1e-4c57-9a1b-6e6d62727300")
EMPLOYEES_PER_COMPANY = 37
RUN_YEARS = (2024, 2025)

_FIRST = (
    "Anna", "Bram", "Cor", "Daan", "Eva", "Femke", "Gijs", "Hanna", "Ilse", "Joris",
    "Kees", "Lotte", "Maud", "Noah", "Olga", "Pim", "Quinten", "Roos", "Sem", "Tess",
)  # fmt: skip
_LAST = (
    "de Vries", "Jansen", "Bakker", "Visser", "Smit", "Meijer", "de Boer", "Mulder",
    "de Groot", "Bos", "Vos", "Peters", "Hendriks", "van Leeuwen", "Dekker",
)  # fmt: skip
_HOURCODES = (
    "Gewerkte uren", "Overwerk 125%", "Overwerk 150%", "Overwerk 200%", "Nachtdienst",
    "Weekenddienst", "Feestdaguren", "Ziekte", "Vakantie", "Bijzonder verlof",
    "Ouderschapsverlof", "Zwangerschapsverlof", "Kort verzuim", "Dokterbezoek", "Opleiding",
    "Reisuren", "Consignatie", "Stand-by", "Thuiswerken", "Onbetaald verlof",
    "Compensatie-uren", "ADV", "Calamiteitenverlof", "Zorgverlof", "Vrijwilligerswerk",
)  # fmt: skip


def _uid(name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, name))


DEBTORS: list[dict[str, Any]] = [
    {"debtorId": _uid("debtor-1"), "number": 1001, "name": "Demo Accountants B.V."},
    {"debtorId": _uid("debtor-2"), "number": 1002, "name": "Sandbox Holding N.V."},
]

COMPANIES: list[dict[str, Any]] = [
    {"companyId": _uid("company-1"), "number": 1, "name": "Acme Payroll B.V.",
     "debtorId": DEBTORS[0]["debtorId"]},
    {"companyId": _uid("company-2"), "number": 2, "name": "Acme Logistics B.V.",
     "debtorId": DEBTORS[0]["debtorId"]},
    {"companyId": _uid("company-3"), "number": 3, "name": "Bakkerij de Vries B.V.",
     "debtorId": DEBTORS[1]["debtorId"]},
]  # fmt: skip


def _employees(company_index: int, company_id: str) -> list[dict[str, Any]]:
    rows = []
    for number in range(1, EMPLOYEES_PER_COMPANY + 1):
        seed = company_index * 100 + number
        rows.append(
            {
                "employeeId": _uid(f"employee-{company_index}-{number}"),
                "companyId": company_id,
                "employeeBasicInfo": {
                    "employeeNumber": number,
                    "firstName": _FIRST[seed % len(_FIRST)],
                    "lastName": _LAST[(seed * 7) % len(_LAST)],
                    "employeeType": "external" if number % 10 == 0 else "payroll",
                },
            }
        )
    return rows


EMPLOYEES_BY_COMPANY: dict[str, list[dict[str, Any]]] = {
    company["companyId"]: _employees(index, company["companyId"])
    for index, company in enumerate(COMPANIES, start=1)
}
EMPLOYEES: dict[str, dict[str, Any]] = {
    row["employeeId"]: row for rows in EMPLOYEES_BY_COMPANY.values() for row in rows
}
COMPANY_IDS = frozenset(company["companyId"] for company in COMPANIES)

HOURCODES: list[dict[str, Any]] = [
    {"hourCode": 100 + index, "description": description}
    for index, description in enumerate(_HOURCODES, start=1)
]


def runs(company_id: str, year: int | None) -> list[dict[str, Any]]:
    years = RUN_YEARS if year is None else (year,) if year in RUN_YEARS else ()
    return [
        {
            "runId": _uid(f"run-{company_id}-{y}-{period}"),
            "number": period,
            "year": y,
            "periodStart": period,
            "periodEnd": period,
            "description": f"Run {period} {y}",
        }
        for y in years
        for period in range(1, 13)
    ]


def list_row(employee: dict[str, Any]) -> dict[str, Any]:
    """An employee as it appears in a company's employee list."""
    return {
        "employeeId": employee["employeeId"],
        "employeeBasicInfo": employee["employeeBasicInfo"],
    }
