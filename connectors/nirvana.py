"""Nirvana (meetnirvana) real-time insurance eligibility and benefits: one check per write,
from the patient's demographics and policy, returning the same typed summary as Stedi's
checks (``connectors.stedi_eligibility.EligibilitySummary``). **Experimental.**

::

    check_eligibility   POST {api_url}/estimate  (or /discover, ``options.endpoint``)
                        header ``apikey: <key>``, JSON body: payer_id, provider_npi,
                        member_id, member_dob, member_first_name, member_last_name and,
                        for /estimate, provider_session_cost (cents)
    answer              EligibilityResult with the summary (write-back: see
                        connectors.stedi_eligibility; refused until the pipeline routes it)

Nirvana publishes **no machine-readable contract** (``../shared/openapi/SOURCES.md``: none
found; the only OpenAPI file is API Evangelist's own, not the vendor's). Everything here is
built from Nirvana's public documentation pages:

* verified there (https://nirvana-docs.readme.io/docs, "Overview"): the endpoints POST
  /estimate, /discover, /scan, /medicaid; the ``apikey`` request header (the page also says
  "Authorization header" but every example sends ``apikey``); JSON in and out; the host
  ``coverage-api.meetnirvana.com``;
* verified there ("Best Practices", https://nirvana-docs.readme.io/docs/best-practices, June
  2025): the request fields ``payer_id``, ``provider_npi``, ``member_first_name``,
  ``member_last_name`` (optional), ``member_id``, ``member_dob``, ``provider_session_cost``
  (cents); the answer's ``copayment``, ``coinsurance``, ``remaining_deductible``,
  ``remaining_oop_max``, ``member_obligation``; the rate limit, **50 checks per minute**, and a
  429 for every later check in that 60-second window; 400 for credentialing (NPI) problems.

**Unverified** (assumed, and the first things to check against a real Nirvana account):
the ``/v1`` path prefix (seen only in third-party collections); ``member_dob`` as YYYY-MM-DD;
which field says whether coverage is active (read from ``coverage_status`` or
``plan_status``, "active"/"inactive", else the summary's ``active`` is None); that amounts
are integer cents like ``provider_session_cost`` and ``coinsurance`` a percentage; error body
shapes (only the status is used); Retry-After on a 429 (absent: the documented 60 s window is
waited); plan dates (not read: no documented field). The tests' fake
(``tests/servers/nirvana.py``) follows these same documented shapes and assumptions, so it
cannot prove them.

Pacing: ``rate_limit`` 49 per minute (the documented 50, one short for clock skew between
Nirvana's window and ours), one request per write (``max_batch`` 1: a check is billed, so a
retried chunk must never resend a check that succeeded). A 429 pauses the credential's bucket
for the window and is raised as RateLimited(retry_after=60): the worker backs off instead of
spending the window's remaining checks on certain refusals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import httpx2
from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import (
    HealthieSyncError,
    InvalidResponse,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)
from connectors import http
from connectors.base import Connector, OperationSpec, Write, WriteResult
from connectors.stedi_eligibility import (
    CheckEligibility,
    EligibilityResult,
    EligibilitySummary,
    RoutesEligibility,
)

API_URL = "https://coverage-api.meetnirvana.com/v1"
WINDOW = 60.0  # seconds of Nirvana's rate-limit window (Best Practices)
PER_WINDOW = 50


class NirvanaOptions(BaseModel):
    """The provider checks are made for, which endpoint, and where Nirvana is."""

    model_config = ConfigDict(extra="forbid")

    provider_npi: str = Field(pattern=r"^\d{10}$")
    #: /estimate (benefits and the patient's cost for a session) or /discover (coverage and
    #: plan-level details)
    endpoint: Literal["estimate", "discover"] = "estimate"
    #: the session's allowable rate in cents, sent to /estimate (Nirvana's docs suggest a
    #: typical 10000-50000 when allowables are unknown)
    session_cost_cents: int | None = Field(default=None, ge=0, le=10_000_000)
    #: another base URL than Nirvana's (tests)
    api_url: str = Field(default=API_URL, pattern=r"^https?://[^\s]+$")


class NirvanaConnector(RoutesEligibility, Connector):
    """Nirvana coverage checks (experimental; see the module docstring)."""

    kind: ClassVar[str] = "nirvana"
    description: ClassVar[str] = (
        "Experimental: Nirvana real-time eligibility and benefits (/estimate or /discover) "
        "returning a typed coverage summary; built from Nirvana's documentation pages, no "
        "published contract (the module docstring lists what is unverified)."
    )
    operations: ClassVar[dict[str, OperationSpec]] = {
        "check_eligibility": OperationSpec(
            "check_eligibility", CheckEligibility, CheckEligibility.__doc__ or ""
        ),
    }
    options_model: ClassVar[type[BaseModel]] = NirvanaOptions
    credential_names: ClassVar[tuple[str, ...]] = ("api_key",)
    max_batch: ClassVar[int] = 1
    rate_limit: ClassVar[float | None] = (PER_WINDOW - 1) / WINDOW

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        #: the HTTP client; None: built on first use (tests may set one)
        self.client: httpx2.Client | None = None

    @property
    def nirvana(self) -> NirvanaOptions:
        """The options, typed."""
        assert isinstance(self.options, NirvanaOptions)
        return self.options

    @classmethod
    def check_args(cls, options: BaseModel, operation: str, args: BaseModel) -> BaseModel:
        """The check's arguments (``write_back`` is routed by the pipeline: follow_ups)."""
        assert isinstance(args, CheckEligibility)
        return args

    def request_body(self, args: CheckEligibility) -> dict[str, Any]:
        """The documented request fields for one check (see the module docstring)."""
        body: dict[str, Any] = {
            "payer_id": args.payer_id,
            "provider_npi": self.nirvana.provider_npi,
            "member_id": args.member_id,
            "member_dob": args.date_of_birth.isoformat(),
            "member_first_name": args.first_name,
            "member_last_name": args.last_name,
        }
        if self.nirvana.endpoint == "estimate" and self.nirvana.session_cost_cents is not None:
            body["provider_session_cost"] = self.nirvana.session_cost_cents
        return body

    def write_check_eligibility(self, batch: Sequence[Write]) -> list[WriteResult]:
        """One check per write (``max_batch`` is 1)."""
        out: list[WriteResult] = []
        for write in batch:
            assert isinstance(write.args, CheckEligibility)
            answer = self._post(self.request_body(write.args))
            out.append(
                EligibilityResult(
                    self.name, write.operation, self.key_of(write), summary=summarize(answer)
                )
            )
        return out

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        what = f"POST /{self.nirvana.endpoint}"
        url = f"{self.nirvana.api_url.rstrip('/')}/{self.nirvana.endpoint}"
        try:
            response = self._http().post(url, json=body)
        except httpx2.TimeoutException:
            raise UpstreamUnavailable(f"Nirvana {what}: timed out") from None
        except httpx2.TransportError as exc:
            raise UpstreamUnavailable(f"Nirvana {what}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise self._failure(response, what)
        try:
            answer = response.json()
        except ValueError:
            raise InvalidResponse(
                f"Nirvana {what}: HTTP {response.status_code}, not JSON"
            ) from None
        if not isinstance(answer, dict):
            raise InvalidResponse(f"Nirvana {what}: HTTP {response.status_code}, not an object")
        return answer

    def _failure(self, response: httpx2.Response, what: str) -> HealthieSyncError:
        status = response.status_code
        if status == 429:
            wait = http.retry_after(response.headers) or WINDOW
            if self.guard.bucket is not None:
                self.guard.bucket.throttle(wait)  # every caller of this key waits it out
            return RateLimited(f"Nirvana {what}: HTTP 429", retry_after=wait)
        if status == 400:  # credentialing or payer refusal: the same request fails again
            return TargetRejected(f"Nirvana {what}: HTTP 400")
        return http.failure(response, vendor="Nirvana", what=what)

    def _http(self) -> httpx2.Client:
        if self.client is None:
            key = self.credentials["api_key"].get_secret_value()
            self.client = http.client(headers={"apikey": key, "Accept": "application/json"})
        return self.client

    def close(self) -> None:
        """Close the HTTP client."""
        if self.client is not None:
            self.client.close()
            self.client = None


def _status(answer: dict[str, Any]) -> bool | None:
    for name in ("coverage_status", "plan_status"):  # unverified names (module docstring)
        value = answer.get(name)
        if isinstance(value, str) and value.strip().lower() in ("active", "inactive"):
            return value.strip().lower() == "active"
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(round(value))


def summarize(answer: dict[str, Any]) -> EligibilitySummary:
    """The summary of one Nirvana answer (documented names; see the module docstring)."""
    coinsurance = answer.get("coinsurance")
    percent = (
        float(coinsurance)
        if isinstance(coinsurance, int | float) and not isinstance(coinsurance, bool)
        else None
    )
    return EligibilitySummary(
        source="nirvana",
        active=_status(answer),
        copay_cents=_int(answer.get("copayment")),
        coinsurance_percent=percent,
        deductible_remaining_cents=_int(answer.get("remaining_deductible")),
        out_of_pocket_remaining_cents=_int(answer.get("remaining_oop_max")),
    )
