"""Configuration of the fake Nmbrs: registered clients, subscription keys, lifetimes."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Every scope the Nmbrs identity service knows (NMBRS.md), in its documented order.
NMBRS_SCOPES: tuple[str, ...] = (
    "offline_access",
    "company.info",
    "company.info.read",
    "company.payrollsettings.read",
    "company.leave.read",
    "employee.info",
    "employee.info.read",
    "employee.employment",
    "employee.employment.read",
    "employee.payment",
    "employee.payment.read",
    "employee.leave",
    "employee.leave.read",
    "employee.orgstructure",
    "employee.orgstructure.read",
    "employee.bankaccount",
    "employee.bankaccount.read",
    "employee.document",
    "employee.document.read",
    "employee.payrollsettings",
    "employee.payrollsettings.read",
    "user.info.read",
)

# A fake's credentials: printed by the CLI and used by the tests on purpose.
DEMO_CLIENT_ID = "PartnerApp_demo_*$1"
DEMO_CLIENT_SECRET = "s3cr:et%+demo"  # noqa: S105
DEMO_SUBSCRIPTION_KEY = "demo-subscription-key"
DEMO_REDIRECT_URI = "http://localhost:8080/_proxy/callback"


@dataclass(frozen=True)
class SandboxClient:
    """One registered (confidential) client of the fake identity service."""

    client_id: str
    client_secret: str = field(repr=False)
    redirect_uris: tuple[str, ...]
    allowed_scopes: frozenset[str]

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("client_id must not be empty")
        if not self.client_secret:
            raise ValueError("client_secret must not be empty")
        if isinstance(self.redirect_uris, str):
            raise TypeError("redirect_uris must be a tuple of strings, not one string")
        for uri in self.redirect_uris:
            if "#" in uri:
                raise ValueError(f"redirect URI must not contain a fragment: {uri!r}")


DEMO_CLIENT = SandboxClient(
    client_id=DEMO_CLIENT_ID,
    client_secret=DEMO_CLIENT_SECRET,
    redirect_uris=(DEMO_REDIRECT_URI,),
    allowed_scopes=frozenset(NMBRS_SCOPES),
)


@dataclass(frozen=True)
class SandboxSettings:
    """How the fake behaves. Lifetimes are seconds and may be fractional (fast tests)."""

    clients: tuple[SandboxClient, ...] = (DEMO_CLIENT,)
    subscription_keys: frozenset[str] = frozenset({DEMO_SUBSCRIPTION_KEY})
    access_token_lifetime: float = 3600.0
    refresh_token_lifetime: float = 30 * 86400.0
    code_lifetime: float = 300.0
    rate_limit: int | None = None
    rate_window: float = 1.0
    # Sent as Cache-Control on every 200 from the API (the real one's policy is not published).
    api_cache_control: str | None = None
    auto_consent: bool = True
    issuer: str | None = None

    def __post_init__(self) -> None:
        ids = [client.client_id for client in self.clients]
        if len(ids) != len(set(ids)):
            raise ValueError("client ids must be unique")
        for name in ("access_token_lifetime", "refresh_token_lifetime", "code_lifetime"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.rate_limit is not None and self.rate_limit < 1:
            raise ValueError("rate_limit must be at least 1 (or None for unlimited)")
        if not self.rate_window > 0:
            raise ValueError("rate_window must be positive")
        if self.issuer is not None and self.issuer.endswith("/"):
            raise ValueError("issuer must not end with '/'")
