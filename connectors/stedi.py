"""Stedi (healthcare clearinghouse): real-time eligibility checks (270/271 as JSON) and
professional claims (837P as JSON), each request one write.

::

    check_eligibility   POST {api_url}/change/medicalnetwork/eligibility/v3
                        body: connectors.stedi_eligibility.eligibility_request (the patient as
                        subscriber, the provider from the options, externalPatientId = the
                        scope's patient id); answer: a typed EligibilitySummary inside the
                        result (EligibilityResult), see that module for write-back
    submit_claim        POST {api_url}/change/medicalnetwork/professionalclaims/v3/submission
                        only after the claim validated against Stedi's request schema
                        (connectors.stedi_claims); Idempotency-Key per (integration,
                        patient, key)

Authentication: ``Authorization: <api key>``. Stedi dropped the ``Key`` prefix in February
2024 (changelog "Authorization Header update", https://www.stedi.com/changelog/authorization-
header-update: the prefixed form is still accepted for backward compatibility); the published
OpenAPI file declares the header as a plain apiKey.

Limits, as Stedi publishes them: real-time checks count against the account's *concurrency*
limit, not a request rate ("your Stedi account's concurrency limit", monthly refresh guide
https://www.stedi.com/docs/healthcare/monthly-refresh-eligibility-checks, and the Batch
Eligibility API announcement, https://www.stedi.com/blog/introducing-stedi-s-batch-
eligibility-check-api: background checks should leave that budget to front-desk checks). The
number is per account and was not found in the public pages searched, so the connector does
not assume one: it sends one request at a time per connector (``max_batch`` 1, no request
rate: ``rate_limit`` None) and honours 429 with Retry-After through the resilience layer.
Payers throttle bursts for the same provider too (same guide). Claim submission:
Idempotency-Key up to 255 characters, honoured for 24 hours; a reused key while the first
request runs answers 409 with Retry-After (API reference, "Idempotency keys",
https://www.stedi.com/docs/api-reference/index): retried here as RateLimited.

Errors are mapped at this edge (``app.resilience.status``): 429 RateLimited (Retry-After),
5xx/504 UpstreamUnavailable, 401/403 ConfigurationError, 400 TargetRejected with the payer's
AAA codes (e.g. ``72``) and nothing else from the body, 409 (claims) retriable, 422 and other
4xx fatal. No message carries a body, a header or a URL with a value in it.

Why one write per request: a check or a claim is one billed transaction, so the base's retry
of a chunk must never resend a transaction that already succeeded (``max_batch = 1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import httpx2
from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import (
    ConfigurationError,
    HealthieSyncError,
    InvalidResponse,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)
from connectors import http
from connectors.base import Connector, OperationSpec, Write, WriteResult
from connectors.stedi_claims import ClaimContract, SubmitClaim, idempotency_key
from connectors.stedi_eligibility import (
    CheckEligibility,
    EligibilityResult,
    RoutesEligibility,
    eligibility_request,
    rejection_codes,
    summarize_271,
)

API_URL = "https://healthcare.us.stedi.com/2024-04-01"
ELIGIBILITY = "/change/medicalnetwork/eligibility/v3"
CLAIMS = "/change/medicalnetwork/professionalclaims/v3/submission"


class StediOptions(BaseModel):
    """The provider checks are made for, and where Stedi is."""

    model_config = ConfigDict(extra="forbid")

    #: the provider's NPI and organization name (Stedi's request ``provider`` object)
    provider_npi: str = Field(pattern=r"^\d{10}$")
    provider_organization_name: str = Field(min_length=1, max_length=60)
    #: another base URL (with its version path) than Stedi's production one (tests)
    api_url: str = Field(default=API_URL, pattern=r"^https?://[^\s]+$")
    #: Stedi's published OpenAPI file (healthcare.json): claims are validated against it
    #: before they are sent; without it submit_claim refuses
    claim_contract: str | None = None


class StediConnector(RoutesEligibility, Connector):
    """Stedi eligibility checks and professional claims (see the module docstring)."""

    kind: ClassVar[str] = "stedi"
    description: ClassVar[str] = (
        "Stedi clearinghouse: real-time eligibility checks (270/271 JSON) returning a typed "
        "coverage summary, and professional claims (837P JSON) validated against Stedi's "
        "request schema before they are sent."
    )
    operations: ClassVar[dict[str, OperationSpec]] = {
        "check_eligibility": OperationSpec(
            "check_eligibility", CheckEligibility, CheckEligibility.__doc__ or ""
        ),
        "submit_claim": OperationSpec("submit_claim", SubmitClaim, SubmitClaim.__doc__ or ""),
    }
    options_model: ClassVar[type[BaseModel]] = StediOptions
    credential_names: ClassVar[tuple[str, ...]] = ("api_key",)
    max_batch: ClassVar[int] = 1
    rate_limit: ClassVar[float | None] = None

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        #: the HTTP client; None: built on first use (tests may set one)
        self.client: httpx2.Client | None = None

    @property
    def stedi(self) -> StediOptions:
        """The options, typed."""
        assert isinstance(self.options, StediOptions)
        return self.options

    @classmethod
    def check_args(cls, options: BaseModel, operation: str, args: BaseModel) -> BaseModel:
        """Refuse what cannot be done honestly: a claim without the contract to check it, a
        claim that breaks the contract."""
        assert isinstance(options, StediOptions)
        if isinstance(args, CheckEligibility):
            return args  # write_back is routed by the pipeline (follow_ups)
        assert isinstance(args, SubmitClaim)
        if options.claim_contract is None:
            raise ConfigurationError(
                f"stedi.{operation} needs options.claim_contract (the path of Stedi's "
                "published OpenAPI file, healthcare.json) to validate each claim before it "
                "is sent"
            )
        ClaimContract.load(options.claim_contract).check(operation, args.claim)
        return args

    # -- writing ------------------------------------------------------------------------
    def write_check_eligibility(self, batch: Sequence[Write]) -> list[WriteResult]:
        """One real-time check per write (``max_batch`` is 1)."""
        out: list[WriteResult] = []
        for write in batch:
            args = write.args
            assert isinstance(args, CheckEligibility)
            provider = {
                "npi": self.stedi.provider_npi,
                "organizationName": self.stedi.provider_organization_name,
            }
            body = eligibility_request(write.scope, args, provider)
            answer = self._post(ELIGIBILITY, "POST eligibility/v3", body)
            summary = summarize_271(answer, args.service_type_codes)
            out.append(
                EligibilityResult(self.name, write.operation, self.key_of(write), summary=summary)
            )
        return out

    def write_submit_claim(self, batch: Sequence[Write]) -> list[WriteResult]:
        """One claim submission per write, with its idempotency key."""
        out: list[WriteResult] = []
        for write in batch:
            args = write.args
            assert isinstance(args, SubmitClaim)
            # validated again here: a write built without the pipeline must not skip it
            self.check_args(self.options, write.operation, args)
            scope = write.scope
            header = {
                "Idempotency-Key": idempotency_key(scope.integration_id, scope.patient_id, args.key)
            }
            self._post(CLAIMS, "POST professionalclaims/v3/submission", args.claim, header)
            out.append(self.ok(write))
        return out

    # -- the edge -----------------------------------------------------------------------
    def _post(
        self, path: str, what: str, body: Any, headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """POST ``body``; the JSON answer, or the engine error for Stedi's answer."""
        try:
            response = self._http().post(
                self.stedi.api_url.rstrip("/") + path, json=body, headers=dict(headers or {})
            )
        except httpx2.TimeoutException:
            raise UpstreamUnavailable(f"Stedi {what}: timed out") from None
        except httpx2.TransportError as exc:
            raise UpstreamUnavailable(f"Stedi {what}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise _failure(response, what)
        try:
            answer = response.json()
        except ValueError:
            raise InvalidResponse(f"Stedi {what}: HTTP {response.status_code}, not JSON") from None
        if not isinstance(answer, dict):
            raise InvalidResponse(f"Stedi {what}: HTTP {response.status_code}, not an object")
        return answer

    def _http(self) -> httpx2.Client:
        if self.client is None:
            key = self.credentials["api_key"].get_secret_value()
            self.client = http.client(headers={"Authorization": key, "Accept": "application/json"})
        return self.client

    def close(self) -> None:
        """Close the HTTP client."""
        if self.client is not None:
            self.client.close()
            self.client = None


def _failure(response: httpx2.Response, what: str) -> HealthieSyncError:
    """Stedi's error answer as an engine error: the status, and for a payer's refusal (400)
    its AAA codes, never a description (they can echo the request)."""
    status = response.status_code
    if status == 400:
        codes = _aaa_codes(response)
        suffix = f", payer codes {','.join(codes)}" if codes else ""
        return TargetRejected(f"Stedi {what}: HTTP 400{suffix}")
    if status == 409:  # the same idempotency key is still being processed
        wait = http.retry_after(response.headers)
        return RateLimited(f"Stedi {what}: HTTP 409 (in progress)", retry_after=wait)
    return http.failure(response, vendor="Stedi", what=what)


def _aaa_codes(response: httpx2.Response) -> list[str]:
    try:
        body = response.json()
    except ValueError:
        return []
    return list(rejection_codes(body)) if isinstance(body, dict) else []
