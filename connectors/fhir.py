"""FHIR R4 (a Medplum project or any FHIR R4 server): Patient, Practitioner, Coverage and
Appointment resources written by conditional update on an identifier holding the Healthie id,
one transaction bundle per chunk of writes.

::

    execute_batch(writes)                     POST <base_url>  Bundle {type: transaction,
      sorted: practitioners, patients,          entry: [{resource, request: {method: PUT,
        coverages, appointments (referenced      url: "Patient?identifier=<system>|<id>"}}]}
        before referencing)                    (fhir_resources: building, identifier systems
      chunks of ``bundle_size`` (50)            per integration, conditional references, the
      per write: build + structural check       structural check)
        (a failure fails that write only,      answer: a response Bundle, one entry per request,
        nothing is sent for it)                  in order: entry.response.status per write
      two writes for one resource: one entry

Conditional update (FHIR R4 http.html#cond-update; Medplum ``create-fhir-data`` "Upsert"): the
server searches ``identifier=system|value``; no match creates the resource (201), one match
updates it (200), several refuse it (412 Precondition Failed). A retried entry therefore finds
what its first attempt created and updates it: no duplicate. The update replaces the resource's
content, so these resources belong to the integration (edits made on the FHIR side to elements
the connector writes are overwritten on the next sync of that patient).

**Not atomic.** Medplum processes a ``transaction`` bundle like a ``batch``, entry by entry, and
does not roll back ("Batch vs Transaction",
https://www.medplum.com/docs/fhir-datastore/fhir-batch-requests; see also
``../shared/openapi/SOURCES.md``). Every entry is therefore complete on its own and idempotent:
a conditional update with conditional references (never a ``urn:uuid`` that only another entry
of the same bundle can resolve), so an entry may succeed alone, fail alone and be retried alone.
Each answer entry becomes its write's result: 2xx succeeded; otherwise the status maps through
``app.resilience.status`` (412: several resources hold the identifier, TargetRejected; 429 and
5xx retriable; other 4xx fatal) with the OperationOutcome's issue codes (``invalid``,
``not-found`` ...), never its ``diagnostics``, ``details`` or ``expression`` text, which can
quote the resource. A server that runs transactions atomically (HAPI) refuses the whole bundle
instead; the platform then bisects the chunk until the bad write is alone, so one bad resource
still fails only its own patient. ``bundle_type = "batch"`` sends batch bundles instead.

Medplum's published limits (https://www.medplum.com/docs/rate-limits): 6,000 requests per IP per
minute on the free tier (60,000 paid), hence ``rate_limit`` 100/s; ``/oauth2/*`` 160 per IP per
minute; and a separate "FHIR interaction load" limit per user and project per minute in which a
create or an update costs 100 points and a search 20 (the page's quota figures were not
available to this connector's authors; the example ``RateLimit`` header it shows,
``"fhirInteractions";r=49894;t=60``, suggests 50,000 points per minute, that is some 400 to 500
resource writes a minute). Both limits answer 429; the wait comes from Retry-After or the
``RateLimit`` header's ``t`` (seconds until the window resets) of an exhausted bucket. Bundles
over 5 MB need Medplum's asynchronous mode and requests time out after one minute, so
``bundle_size`` stays small (50 resources of a few KB each); other FHIR servers publish their
own limits: set ``bundle_size`` and expect 429 handling to do the rest.

Authentication (``connectors.fhir_auth``): OAuth 2.0 client credentials against ``token_url``
(Medplum: ``<origin>/oauth2/token``, the default) or a bearer token from the secrets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx2
from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import (
    ConfigurationError,
    FatalError,
    HealthieSyncError,
    InvalidResponse,
    TargetRejected,
    UpstreamUnavailable,
)
from app.resilience.status import ErrorClass, error_for_status
from connectors import http
from connectors.base import Connector, OperationSpec, Write, WriteResult
from connectors.fhir_args import (
    UpsertAppointment,
    UpsertCoverage,
    UpsertPatient,
    UpsertPractitioner,
)
from connectors.fhir_auth import TokenSource
from connectors.fhir_resources import RANK, Resource, build

FHIR_JSON = "application/fhir+json"
URL = r"^https?://[^\s?#]+$"
#: the whole bundle: a wrong base URL is configuration, not data
BUNDLE_STATUS: Mapping[int, ErrorClass] = {404: ConfigurationError, 405: ConfigurationError}
#: one entry: several resources hold the identifier (a person must merge them)
ENTRY_STATUS: Mapping[int, ErrorClass] = {412: TargetRejected}
_ISSUE_CODE = re.compile(r"^[a-z][a-z-]{1,40}$")
_RATELIMIT = re.compile(r'"?([A-Za-z]+)"?\s*;\s*r=(\d+)\s*;\s*t=(\d+)')


class FhirOptions(BaseModel):
    """Where the FHIR server is, how to authenticate, and how identifiers are scoped."""

    model_config = ConfigDict(extra="forbid")

    #: the FHIR R4 base (Medplum: https://api.medplum.com/fhir/R4)
    base_url: str = Field(default="https://api.medplum.com/fhir/R4", pattern=URL)
    auth: Literal["client_credentials", "bearer"] = "client_credentials"
    #: the OAuth token endpoint (default: <origin of base_url>/oauth2/token, Medplum's)
    token_url: str | None = Field(default=None, pattern=URL)
    #: identifier systems are <identifier_base>/<integration>/<kind> (see fhir_resources)
    identifier_base: str = Field(
        default="https://gethealthie.com/fhir/identifier", pattern=r"^https?://[^\s?#|,$]+$"
    )
    bundle_type: Literal["transaction", "batch"] = "transaction"
    #: resources per bundle (one request)
    bundle_size: int = Field(default=50, ge=1, le=500)


def _spec(name: str, model: type[BaseModel], key: str = "key") -> OperationSpec:
    return OperationSpec(name, model, model.__doc__ or "", key_field=key)


class FhirConnector(Connector):
    """FHIR R4 resources by conditional update in transaction bundles (see the module
    docstring)."""

    kind: ClassVar[str] = "fhir"
    description: ClassVar[str] = (
        "FHIR R4 server (Medplum or any): Patient, Practitioner, Coverage and Appointment by "
        "conditional update on the Healthie id, one transaction bundle per chunk."
    )
    operations: ClassVar[dict[str, OperationSpec]] = {
        "upsert_patient": _spec("upsert_patient", UpsertPatient, "patient_id"),
        "upsert_practitioner": _spec("upsert_practitioner", UpsertPractitioner),
        "upsert_coverage": _spec("upsert_coverage", UpsertCoverage),
        "upsert_appointment": _spec("upsert_appointment", UpsertAppointment),
    }
    options_model: ClassVar[type[BaseModel]] = FhirOptions
    credential_names: ClassVar[tuple[str, ...]] = ("client_id", "client_secret", "token")
    max_batch: ClassVar[int] = 50
    rate_limit: ClassVar[float | None] = 100.0  # Medplum free tier: 6,000 requests/min per IP

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        #: the HTTP client; None: built on first use (tests may set one)
        self.client: httpx2.Client | None = None
        #: HTTP requests sent, token requests included
        self.http_requests = 0
        self._tokens: TokenSource | None = None

    @property
    def fhir(self) -> FhirOptions:
        """The options, typed."""
        assert isinstance(self.options, FhirOptions)
        return self.options

    @property
    def base_url(self) -> str:
        """The FHIR base URL, without a trailing slash."""
        return self.fhir.base_url.rstrip("/")

    @classmethod
    def required_credentials(cls, options: BaseModel) -> tuple[str, ...]:
        """A bearer token, or a client id and secret for client credentials."""
        assert isinstance(options, FhirOptions)
        return ("token",) if options.auth == "bearer" else ("client_id", "client_secret")

    # -- writing ------------------------------------------------------------------------
    def execute_batch(self, writes: Sequence[Write]) -> list[WriteResult]:
        """All operations share bundles: sorted so referenced resources come first, in chunks
        of ``bundle_size``, each chunk one bundle through the platform's retry, pacing and
        bisection. One result per write, in the order given."""
        order = sorted(range(len(writes)), key=lambda i: RANK.get(writes[i].operation, len(RANK)))
        results: list[WriteResult | None] = [None] * len(writes)
        size = self.fhir.bundle_size
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            self._run_chunk(writes[chunk[0]].operation, chunk, writes, results)
        return [
            r if r is not None else self._failed(w, UpstreamUnavailable("fhir: no result"))
            for r, w in zip(results, writes, strict=True)
        ]

    def write_upsert_patient(self, batch: Sequence[Write]) -> list[WriteResult]:
        """A bundle of ``batch`` (any operations: see :meth:`execute_batch`)."""
        return self._bundle(batch)

    def write_upsert_practitioner(self, batch: Sequence[Write]) -> list[WriteResult]:
        """A bundle of ``batch``."""
        return self._bundle(batch)

    def write_upsert_coverage(self, batch: Sequence[Write]) -> list[WriteResult]:
        """A bundle of ``batch``."""
        return self._bundle(batch)

    def write_upsert_appointment(self, batch: Sequence[Write]) -> list[WriteResult]:
        """A bundle of ``batch``."""
        return self._bundle(batch)

    def _bundle(self, batch: Sequence[Write]) -> list[WriteResult]:
        results: list[WriteResult | None] = [None] * len(batch)
        entries: list[Resource] = []
        members: list[list[int]] = []
        slot: dict[str, int] = {}
        for i, write in enumerate(batch):
            try:
                resource = build(write, self.fhir.identifier_base)
            except FatalError as exc:  # the structural check: this write only, nothing sent
                results[i] = self._failed(write, exc)
                continue
            j = slot.get(resource.url)
            if j is None:  # one entry per resource (a transaction may name it only once)
                slot[resource.url] = len(entries)
                entries.append(resource)
                members.append([i])
            else:
                entries[j] = resource
                members[j].append(i)
        if entries:
            for j, error in enumerate(self._post(entries)):
                for i in members[j]:
                    results[i] = (
                        self.ok(batch[i]) if error is None else self._failed(batch[i], error)
                    )
        return [r for r in results if r is not None]

    def _post(self, entries: list[Resource]) -> list[HealthieSyncError | None]:
        bundle = {
            "resourceType": "Bundle",
            "type": self.fhir.bundle_type,
            "entry": [
                {"resource": e.body, "request": {"method": "PUT", "url": e.url}} for e in entries
            ],
        }
        response = self._request("POST", self.base_url, bundle, "POST [base] (Bundle)")
        return _answers(response, entries)

    # -- HTTP ---------------------------------------------------------------------------
    def _request(self, method: str, url: str, body: Any, what: str) -> httpx2.Response:
        client = self._http()
        tokens = self._token_source()
        content = json.dumps(body, ensure_ascii=False).encode() if body is not None else None
        for attempt in (1, 2):
            headers = {"authorization": tokens.header(), "accept": FHIR_JSON}
            if content is not None:
                headers["content-type"] = FHIR_JSON
            self.http_requests += 1
            try:
                response = client.request(method, url, content=content, headers=headers)
            except httpx2.TimeoutException:
                raise UpstreamUnavailable(f"fhir {what}: timed out") from None
            except httpx2.TransportError as exc:
                raise UpstreamUnavailable(f"fhir {what}: {type(exc).__name__}") from None
            if response.status_code == 401 and attempt == 1 and tokens.refreshable:
                tokens.drop()  # expired or revoked early: one new token, one more try
                continue
            if response.status_code >= 400:
                wait = _wait(response) if response.status_code in (429, 503) else None
                raise error_for_status(
                    response.status_code,
                    f"fhir {what}: HTTP {response.status_code}",
                    retry_after=wait,
                    overrides=BUNDLE_STATUS,
                )
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _http(self) -> httpx2.Client:
        if self.client is None:
            self.client = http.client()
        return self.client

    def _token_source(self) -> TokenSource:
        if self._tokens is None:
            secret = {k: v.get_secret_value() for k, v in self.credentials.items()}
            origin = urlsplit(self.fhir.base_url)
            token_url = self.fhir.token_url or f"{origin.scheme}://{origin.netloc}/oauth2/token"

            def count() -> None:
                self.http_requests += 1

            self._tokens = TokenSource(
                self._http,
                token_url,
                client_id=secret.get("client_id"),
                client_secret=secret.get("client_secret"),
                bearer=secret.get("token") if self.fhir.auth == "bearer" else None,
                count=count,
            )
        return self._tokens

    def probe(self) -> str:
        """Read the server's CapabilityStatement (``GET [base]/metadata``): reachable, the
        credentials accepted, FHIR R4."""
        response = self._request("GET", f"{self.base_url}/metadata", None, "GET [base]/metadata")
        try:
            version = str(response.json().get("fhirVersion", ""))
        except (ValueError, AttributeError):
            raise InvalidResponse("fhir GET [base]/metadata: not a CapabilityStatement") from None
        if not version.startswith("4.0"):
            raise ConfigurationError(f"target {self.name!r}: the server is not FHIR R4")
        return f"FHIR server at the base URL answers (fhirVersion {version})"

    def close(self) -> None:
        """Close the HTTP client."""
        if self.client is not None:
            self.client.close()
            self.client = None
        self._tokens = None


def _answers(response: httpx2.Response, entries: list[Resource]) -> list[HealthieSyncError | None]:
    """Per request entry: None when it succeeded, else its error (see the module docstring)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    answered = body.get("entry") if isinstance(body, dict) else None
    if (
        not isinstance(body, dict)
        or body.get("resourceType") != "Bundle"
        or not isinstance(answered, list)
        or len(answered) != len(entries)
    ):
        raise InvalidResponse(
            "fhir POST [base] (Bundle): the answer is not a response bundle with one entry "
            "per request"
        )
    out: list[HealthieSyncError | None] = []
    for resource, entry in zip(entries, answered, strict=True):
        answer = entry.get("response") if isinstance(entry, dict) else None
        status = _status(answer.get("status") if isinstance(answer, dict) else None)
        where = f"fhir {resource.type} entry"
        if status is None:
            out.append(InvalidResponse(f"{where}: no response status"))
        elif status < 300:
            out.append(None)
        else:
            assert isinstance(answer, dict)
            codes = _issue_codes(answer.get("outcome"))
            note = f" ({', '.join(codes)})" if codes else ""
            out.append(
                error_for_status(status, f"{where}: HTTP {status}{note}", overrides=ENTRY_STATUS)
            )
    return out


def _status(value: Any) -> int | None:
    """``"201 Created"`` -> 201 (FHIR: the status code, optionally followed by its text)."""
    if not isinstance(value, str):
        return None
    head = value.strip().split(" ", 1)[0]
    return int(head) if head.isdigit() and 100 <= int(head) <= 599 else None


def _issue_codes(outcome: Any) -> list[str]:
    """The OperationOutcome's issue codes (a closed FHIR value set), nothing else of it."""
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    if not isinstance(issues, list):
        return []
    codes = [i.get("code") for i in issues if isinstance(i, dict)]
    return sorted({c for c in codes if isinstance(c, str) and _ISSUE_CODE.match(c)})[:5]


def _wait(response: httpx2.Response) -> float | None:
    """Retry-After, else the reset time of an exhausted bucket of Medplum's ``RateLimit``
    header (``"requests";r=0;t=42``)."""
    waited = http.retry_after(response.headers)
    if waited is not None:
        return waited
    resets = [
        float(t)
        for _, r, t in _RATELIMIT.findall(response.headers.get("ratelimit", ""))
        if r == "0"
    ]
    return max(resets) if resets else None
