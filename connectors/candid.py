"""Candid Health: the patient and coverage data Candid needs before an encounter (its
pre-encounter patients and coverages), keyed by the Healthie patient id, and professional
encounters (the claims) only from complete data.

::

    operation          requests (pre-encounter host unless marked)      identity in Candid
    ─────────────────  ─────────────────────────────────────────────    ──────────────────────
    upsert_patient     GET /patients/v1/mrn/{mrn}                       MRN = mrn_prefix +
                         404 -> POST /patients/v1/with_mrn                Healthie id, and
                         200 -> PUT /patients/v1/{id}/{version + 1}       external_provenance
                                (only when something changed)             {external_id: Healthie
                                                                          id, system_name}
    upsert_coverage    GET /patients/v1/mrn/{mrn}, GET /coverages/v1     (patient, payer_id,
                         ?patient_id=, then POST /coverages/v1 or PUT     member_id)
                         /coverages/v1/{id}/{version + 1}; a coverage
                         missing from the patient's filing order is
                         appended (PUT /patients/v1/{id}/{version + 1})
    create_encounter   GET /api/encounters/v4?external_id= (api host)   external_id =
                         none -> POST /api/encounters/v4                  encounter_id_prefix +
                         found -> nothing (a claim is never sent twice)   the Healthie object id

How a patient is found, not duplicated: Candid's pre-encounter patient carries the upstream id
in ``external_provenance.external_id`` and refuses a second patient with the same external id
(``POST /patients/v1``: "VersionConflictError is returned when the patient's external ID is
already in use"), but offers no lookup by it. It does offer one by MRN (``GET
/patients/v1/mrn/{mrn}``), and ``POST /patients/v1/with_mrn`` sets a pre-existing MRN (at most
20 characters, not editable afterwards). So the connector sets both to the Healthie id: the MRN
to find the patient, the external id so that a concurrent second create is refused by Candid
(409), after which the patient is looked up again and updated. Updates are optimistic: the path
names the next version; a 409 there (someone else wrote first) is a ConflictingWrite, retried
from the lookup. A PUT replaces the whole record, so the connector sends Candid's current record
with its own fields laid over it (contacts, filing order, other identifiers stay as they were);
optional fields the plan leaves out keep Candid's values.

Encounters go only to a target with ``encounters = true`` and only when the plan's encounter is
a complete claim by Candid's ``EncounterCreate`` schema (``connectors.candid_claims``): a missing
field refuses that patient's encounter before any request, naming the field's path.

Hosts (Candid's SDKs, ``CandidEnvironment``): production ``https://api.joincandidhealth.com``
and ``https://pre-api.joincandidhealth.com``; staging ``https://api-staging.joincandidhealth.com``
and ``https://pre-api-staging.joincandidhealth.com``. ``api_url`` (and ``pre_api_url``, which
defaults to ``api_url``) point elsewhere (tests). OAuth client credentials: ``client_id`` and
``client_secret`` (``connectors.candid_auth``).

Candid's published numbers (https://docs.joincandidhealth.com/introduction/getting-started, as
quoted by API Evangelist's candid-health rate-limits file; the page itself was not reachable
here): 1,000 requests per 10-second rolling window per IP address, for every endpoint, with no
rate-limit headers and no Retry-After; bearer tokens last 5 hours and minting them too often is
answered 429. Hence ``rate_limit`` 100 requests/s (shared by every credential behind one egress
IP: lower it if several integrations share one). There is no batch endpoint for patients,
coverages or encounters, so ``max_batch`` is 1: each write is its own chunk, retried and
isolated alone. Candid documents no idempotency keys; idempotency here is lookup-before-create.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

import httpx2
from pydantic import BaseModel

from app.core.errors import ConflictingWrite, FatalError, PlanValidationError, TargetRejected
from connectors import http
from connectors.base import Connector, OperationSpec, Write, WriteResult
from connectors.candid_auth import CandidSession, body_of
from connectors.candid_claims import claim_of, encounter_body
from connectors.candid_models import (
    HOSTS,
    MRN_MAX,
    SERVER_OWNED,
    CandidOptions,
    CreateEncounter,
    UpsertCoverage,
    UpsertPatient,
)

__all__ = ["CandidConnector", "CandidOptions", "CreateEncounter", "UpsertCoverage", "UpsertPatient"]


class CandidConnector(Connector):
    """Candid Health pre-encounter patients and coverages, and encounters (see the module
    docstring)."""

    kind: ClassVar[str] = "candid"
    description: ClassVar[str] = (
        "Candid Health: pre-encounter patients and coverages keyed by the Healthie patient id, "
        "and professional encounters (claims) only from complete data."
    )
    operations: ClassVar[dict[str, OperationSpec]] = {
        "upsert_patient": OperationSpec(
            "upsert_patient", UpsertPatient, UpsertPatient.__doc__ or "", key_field="patient_id"
        ),
        "upsert_coverage": OperationSpec(
            "upsert_coverage", UpsertCoverage, UpsertCoverage.__doc__ or ""
        ),
        "create_encounter": OperationSpec(
            "create_encounter", CreateEncounter, CreateEncounter.__doc__ or ""
        ),
    }
    options_model: ClassVar[type[BaseModel]] = CandidOptions
    credential_names: ClassVar[tuple[str, ...]] = ("client_id", "client_secret")
    max_batch: ClassVar[int] = 1
    rate_limit: ClassVar[float | None] = 100.0  # 1,000 per 10 s per IP (see the docstring)

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        #: the HTTP client; None: built on first use (tests may set one)
        self.client: httpx2.Client | None = None
        self._session: CandidSession | None = None

    @property
    def opts(self) -> CandidOptions:
        """The options, typed."""
        assert isinstance(self.options, CandidOptions)
        return self.options

    @property
    def api_url(self) -> str:
        """The API host (auth, encounters)."""
        return (self.opts.api_url or HOSTS[self.opts.environment][0]).rstrip("/")

    @property
    def pre_api_url(self) -> str:
        """The pre-encounter host (patients, coverages)."""
        chosen = self.opts.pre_api_url or self.opts.api_url or HOSTS[self.opts.environment][1]
        return chosen.rstrip("/")

    @property
    def http_requests(self) -> int:
        """HTTP requests sent, token requests included."""
        return self._session.sent if self._session is not None else 0

    @classmethod
    def check_args(cls, options: BaseModel, operation: str, args: BaseModel) -> BaseModel:
        """The MRN fits Candid's 20 characters; an encounter is allowed here and complete."""
        assert isinstance(options, CandidOptions)
        if len(options.mrn_prefix) + len(getattr(args, "patient_id", "")) > MRN_MAX:
            raise PlanValidationError(f"{operation}.patient_id: the MRN would exceed {MRN_MAX}")
        if isinstance(args, UpsertCoverage) and args.relationship != "SELF" and not args.subscriber:
            raise PlanValidationError(
                f"{operation}.subscriber: missing (required unless relationship is SELF)"
            )
        if isinstance(args, CreateEncounter):
            if not options.encounters:
                raise PlanValidationError(
                    f"{operation}: this target does not create encounters (options.encounters)"
                )
            claim = claim_of(f"{operation}.encounter", args.encounter)
            return args.model_copy(update={"encounter": claim.model_dump(mode="json")})
        return args

    # -- plumbing -------------------------------------------------------------------------
    def session(self) -> CandidSession:
        """The connector's Candid session (built on first use)."""
        if self._session is None:
            if self.client is None:
                self.client = http.client(headers={"accept": "application/json"})
            self._session = CandidSession(
                self.client,
                self.api_url,
                self.credentials["client_id"].get_secret_value(),
                self.credentials["client_secret"].get_secret_value(),
            )
        self._session.bucket = self.guard.bucket
        return self._session

    def _each(self, batch: Sequence[Write], one: Callable[[Write], bool]) -> list[WriteResult]:
        out = []
        for write in batch:
            self.session().begin_chunk()
            try:
                changed = one(write)
            except FatalError as exc:
                if len(batch) == 1:
                    raise  # the base records it as this write's failure
                out.append(WriteResult(self.name, write.operation, self.key_of(write), False, exc))
                continue
            out.append(self.ok(write, changed=changed))
        return out

    def mrn(self, patient_id: str) -> str:
        """The patient's Candid MRN."""
        return self.opts.mrn_prefix + patient_id

    def find_patient(self, patient_id: str) -> dict[str, Any] | None:
        """Candid's patient with the patient's MRN, or None."""
        what = "GET /patients/v1/mrn/{mrn}"
        url = f"{self.pre_api_url}/patients/v1/mrn/{quote(self.mrn(patient_id), safe='')}"
        response = self.session().request("GET", url, what, passes=(404,))
        if response.status_code == 404:
            return None
        found = body_of(response, what)
        if not isinstance(found, dict) or "id" not in found or "version" not in found:
            raise TargetRejected(f"Candid {what}: the answer is not a patient")
        return found

    def _put(self, kind: str, current: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """PUT ``body`` as the next version of ``current`` (a patient or a coverage)."""
        what = f"PUT /{kind}/v1/{{id}}/{{version}}"
        url = (
            f"{self.pre_api_url}/{kind}/v1/{quote(str(current['id']), safe='')}/"
            f"{int(current['version']) + 1}"
        )
        response = self.session().request("PUT", url, what, json=body, passes=(409,))
        if response.status_code == 409:
            raise ConflictingWrite(f"Candid {what}: HTTP 409: another writer updated it first")
        updated = body_of(response, what)
        return updated if isinstance(updated, dict) else {}

    # -- patients -------------------------------------------------------------------------
    def write_upsert_patient(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Create or update each patient (see the module docstring)."""
        return self._each(batch, self._upsert_patient)

    def _patient_fields(self, args: UpsertPatient) -> dict[str, Any]:
        given = [args.first_name] + ([args.middle_name] if args.middle_name else [])
        fields: dict[str, Any] = {
            "name": {"family": args.last_name, "given": given, "use": "USUAL"},
            "birth_date": args.birth_date.isoformat(),
            "biological_sex": args.biological_sex,
            "primary_address": args.address.model_dump(),
            "external_provenance": {
                "external_id": args.patient_id,
                "system_name": self.opts.system_name,
            },
        }
        if args.gender is not None:
            fields["gender"] = args.gender
        if args.email is not None:
            fields["email"] = args.email
        if args.phone is not None:
            fields["primary_telecom"] = args.phone.model_dump()
        return fields

    def _upsert_patient(self, write: Write) -> bool:
        args = write.args
        assert isinstance(args, UpsertPatient)
        fields = self._patient_fields(args)
        current = self.find_patient(args.patient_id)
        if current is None:
            created = self._create_patient(args, fields)
            if created:
                return True
            current = self.find_patient(args.patient_id)
            if current is None:
                raise TargetRejected(
                    "Candid POST /patients/v1/with_mrn: HTTP 409: the external id is in use by "
                    "a patient with another MRN"
                )
        mutable = {k: v for k, v in current.items() if k not in SERVER_OWNED}
        merged = {**mutable, **fields}
        if merged == mutable:
            return False
        self._put("patients", current, merged)
        return True

    def _create_patient(self, args: UpsertPatient, fields: dict[str, Any]) -> bool:
        """POST the new patient; False when Candid says its external id is already in use."""
        body = {
            "other_names": [],
            "other_addresses": [],
            "other_telecoms": [],
            "contacts": [],
            "general_practitioners": [],
            "filing_order": {"coverages": []},
            **fields,
            "mrn": self.mrn(args.patient_id),
        }
        what = "POST /patients/v1/with_mrn"
        url = f"{self.pre_api_url}/patients/v1/with_mrn"
        response = self.session().request("POST", url, what, json=body, passes=(409,))
        return response.status_code != 409

    # -- coverages ------------------------------------------------------------------------
    def write_upsert_coverage(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Create or update each coverage (see the module docstring)."""
        return self._each(batch, self._upsert_coverage)

    def _coverage_fields(self, args: UpsertCoverage, patient: dict[str, Any]) -> dict[str, Any]:
        if args.subscriber is not None:
            s = args.subscriber
            subscriber: dict[str, Any] = {
                "name": {"family": s.last_name, "given": [s.first_name], "use": "USUAL"},
                "biological_sex": s.biological_sex,
            }
            if s.birth_date is not None:
                subscriber["date_of_birth"] = s.birth_date.isoformat()
            if s.address is not None:
                subscriber["address"] = s.address.model_dump()
        else:  # SELF: the patient as Candid holds them
            subscriber = {
                "name": patient["name"],
                "biological_sex": patient["biological_sex"],
                "date_of_birth": patient["birth_date"],
            }
            if patient.get("primary_address"):
                subscriber["address"] = patient["primary_address"]
        plan: dict[str, Any] = {
            "member_id": args.member_id,
            "payer_id": args.payer_id,
            "payer_name": args.payer_name,
        }
        if args.group_number is not None:
            plan["group_number"] = args.group_number
        if args.plan_name is not None:
            plan["name"] = args.plan_name
        period = {"start": args.start_date, "end": args.end_date}
        if any(period.values()):
            plan["period"] = {k: v.isoformat() for k, v in period.items() if v is not None}
        return {
            "status": args.status,
            "subscriber": subscriber,
            "relationship": args.relationship,
            "patient": patient["id"],
            "insurance_plan": plan,
        }

    def _upsert_coverage(self, write: Write) -> bool:
        args = write.args
        assert isinstance(args, UpsertCoverage)
        patient = self.find_patient(args.patient_id)
        if patient is None:
            raise TargetRejected(
                "upsert_coverage: the patient is not in Candid yet (write upsert_patient first)"
            )
        fields = self._coverage_fields(args, patient)
        current = self._find_coverage(patient, args)
        if current is None:
            what = "POST /coverages/v1"
            url = f"{self.pre_api_url}/coverages/v1"
            response = self.session().request("POST", url, what, json={**fields, "verified": False})
            saved, changed = body_of(response, what), True
        else:
            mutable = {k: v for k, v in current.items() if k not in SERVER_OWNED}
            # A plan's policy sets no "verified": a person's verification in Candid stays.
            merged = {**mutable, **fields, "insurance_plan": {
                **mutable.get("insurance_plan", {}), **fields["insurance_plan"]
            }}  # fmt: skip
            changed = merged != mutable
            saved = self._put("coverages", current, merged) if changed else current
        if self.opts.filing_order and args.status == "ACTIVE" and isinstance(saved, dict):
            changed = self._file(patient, str(saved.get("id", ""))) or changed
        return changed

    def _find_coverage(
        self, patient: dict[str, Any], args: UpsertCoverage
    ) -> dict[str, Any] | None:
        what = "GET /coverages/v1"
        response = self.session().request(
            "GET", f"{self.pre_api_url}/coverages/v1", what, params={"patient_id": patient["id"]}
        )
        found = body_of(response, what)
        for coverage in found if isinstance(found, list) else []:
            plan = coverage.get("insurance_plan") or {}
            if (
                not coverage.get("deactivated")
                and plan.get("payer_id") == args.payer_id
                and plan.get("member_id") == args.member_id
            ):
                return dict(coverage)
        return None

    def _file(self, patient: dict[str, Any], coverage_id: str) -> bool:
        """Append the coverage to the patient's filing order when it is not in it."""
        order = (patient.get("filing_order") or {}).get("coverages") or []
        if not coverage_id or coverage_id in order:
            return False
        mutable = {k: v for k, v in patient.items() if k not in SERVER_OWNED}
        self._put(
            "patients", patient, {**mutable, "filing_order": {"coverages": [*order, coverage_id]}}
        )
        return True

    # -- encounters -----------------------------------------------------------------------
    def write_create_encounter(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Create each encounter once (see the module docstring)."""
        return self._each(batch, self._create_encounter)

    def _create_encounter(self, write: Write) -> bool:
        args = write.args
        assert isinstance(args, CreateEncounter)
        external_id = self.opts.encounter_id_prefix + args.key
        what = "GET /api/encounters/v4"
        response = self.session().request(
            "GET",
            f"{self.api_url}/api/encounters/v4",
            what,
            params={"external_id": external_id, "limit": "1"},
        )
        page = body_of(response, what)
        if isinstance(page, dict) and page.get("items"):
            return False  # already created: a claim is never sent twice
        claim = claim_of(f"{write.operation}.encounter", args.encounter)
        body = encounter_body(claim, external_id, write.scope.patient_id)
        what = "POST /api/encounters/v4"
        self.session().request("POST", f"{self.api_url}/api/encounters/v4", what, json=body)
        return True

    def probe(self) -> str | None:
        """Mint (or reuse) a bearer token: proves the host and the credentials."""
        self.session().begin_chunk()
        self.session().token()
        return f"POST {self.api_url}/api/auth/v2/token"

    def close(self) -> None:
        """Close the HTTP client."""
        if self.client is not None:
            self.client.close()
            self.client = None
        self._session = None
