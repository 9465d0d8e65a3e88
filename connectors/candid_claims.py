"""What a Candid professional encounter (the claim, ``POST /api/encounters/v4``) must carry,
checked before anything is sent: a missing or malformed field refuses that patient's encounter
with the field's path, never a partial claim.

The models mirror Candid's ``EncounterCreate`` request schema (``type_encounters/v4:
EncounterCreate`` in Candid's published OpenAPI file, ``../shared/openapi/candidhealth-api.yaml``):
every property the schema lists in ``required`` is required here, at every level the connector
accepts (``tests/connectors/test_candid.py`` walks the vendor schema and proves each required
path is refused when absent), with the schema's enums as literals. The connector sets the two
identifiers itself: ``external_id`` (the Healthie object id the write is keyed by) and
``patient.external_id`` (the scope's patient id), so a plan can set neither.

Stricter than the schema, on purpose (each is a documented Candid rule the schema only states in
prose): ``subscriber_primary`` when ``responsible_party`` is ``INSURANCE_PAY`` (its
description); at least one service line, each pointing at diagnoses in bounds
(``service_line.diagnosis_pointers`` "must contain at least one entry which should be in
bounds of the diagnoses list"); NPIs of 10 digits and ZIP codes of 5 (+4) digits. Only the
properties modelled here may be sent (``extra="forbid"``): a field the connector does not know
is refused rather than forwarded unchecked.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.core.errors import PlanValidationError

State = Literal[
    "AA", "AE", "AP", "AL", "AK", "AS", "AZ", "AR", "CA", "CO", "CT", "DC", "DE", "FL", "FM",
    "GA", "GU", "HI", "ID", "IL", "IN", "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MH", "MI",
    "MN", "MP", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK",
    "OR", "PA", "PR", "PW", "RI", "SC", "SD", "TN", "TX", "UT", "VI", "VT", "VA", "WA", "WV",
    "WI", "WY",
]  # fmt: skip
Gender = Literal["male", "female", "other", "not_given", "unknown"]
FacilityTypeCode = Literal[
    "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12", "13", "14", "15",
    "16", "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "31", "32", "33", "34",
    "41", "42", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62",
    "65", "71", "72", "81", "99",
]  # fmt: skip
DiagnosisTypeCode = Literal["ABF", "ABJ", "ABK", "APR", "BF", "BJ", "BK", "PR", "DR", "LOI"]
Relationship = Literal[
    "01", "04", "05", "07", "10", "15", "17", "18", "19", "20", "21", "22", "23", "24", "29",
    "32", "33", "36", "39", "40", "41", "43", "53", "G8",
]  # fmt: skip
Text = Field(min_length=1, max_length=200)
NPI = Field(pattern=r"^\d{10}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShortZipAddress(_Strict):
    """``type_commons:StreetAddressShortZip``."""

    address1: str = Text
    address2: str | None = Field(default=None, min_length=1, max_length=200)
    city: str = Text
    state: State
    zip_code: str = Field(pattern=r"^\d{5}$")
    zip_plus_four_code: str | None = Field(default=None, pattern=r"^\d{4}$")


class LongZipAddress(ShortZipAddress):
    """``type_commons:StreetAddressLongZip`` (the +4 code required)."""

    zip_plus_four_code: str = Field(pattern=r"^\d{4}$")


class ClaimPatient(_Strict):
    """``type_individual:PatientCreate`` (``external_id`` is set by the connector)."""

    first_name: str = Text
    last_name: str = Text
    gender: Gender
    date_of_birth: date
    address: ShortZipAddress


class BillingProvider(_Strict):
    """``type_encounter-providers/v2:BillingProvider``."""

    address: LongZipAddress
    tax_id: str = Field(pattern=r"^\d{9}$")
    npi: str = NPI
    taxonomy_code: str | None = Field(default=None, pattern=r"^[0-9A-Z]{10}$")
    organization_name: str | None = Field(default=None, min_length=1, max_length=200)
    first_name: str | None = Field(default=None, min_length=1, max_length=200)
    last_name: str | None = Field(default=None, min_length=1, max_length=200)


class RenderingProvider(_Strict):
    """``type_encounter-providers/v2:RenderingProvider``."""

    npi: str = NPI
    first_name: str | None = Field(default=None, min_length=1, max_length=200)
    last_name: str | None = Field(default=None, min_length=1, max_length=200)
    organization_name: str | None = Field(default=None, min_length=1, max_length=200)
    taxonomy_code: str | None = Field(default=None, pattern=r"^[0-9A-Z]{10}$")


class Diagnosis(_Strict):
    """``type_diagnoses:DiagnosisCreate``."""

    code_type: DiagnosisTypeCode
    code: str = Field(min_length=1, max_length=30)
    name: str | None = Field(default=None, min_length=1, max_length=200)


class ServiceLine(_Strict):
    """``type_service-lines/v2:ServiceLineCreate``."""

    procedure_code: str = Field(pattern=r"^[A-Z0-9]{5}$")
    quantity: str = Field(pattern=r"^\d+(\.\d+)?$")  # type_commons:Decimal is a string
    units: Literal["MJ", "UN"]
    diagnosis_pointers: list[int] = Field(min_length=1, max_length=4)
    charge_amount_cents: int | None = Field(default=None, ge=0)
    date_of_service: date | None = None
    modifiers: list[str] | None = Field(default=None, max_length=4)


class InsuranceCard(_Strict):
    """``type_insurance-cards/v2:InsuranceCardCreate``."""

    member_id: str = Field(min_length=1, max_length=80)
    payer_name: str = Text
    payer_id: str = Field(min_length=1, max_length=80)
    group_number: str | None = Field(default=None, min_length=1, max_length=50)
    plan_name: str | None = Field(default=None, min_length=1, max_length=200)


class Subscriber(_Strict):
    """``type_individual:SubscriberCreate``."""

    first_name: str = Text
    last_name: str = Text
    gender: Gender
    patient_relationship_to_subscriber_code: Relationship
    insurance_card: InsuranceCard
    date_of_birth: date | None = None
    address: ShortZipAddress | None = None


class EncounterClaim(_Strict):
    """The plan's encounter: ``EncounterCreate`` less the two identifiers the connector sets."""

    patient_authorized_release: bool
    benefits_assigned_to_provider: bool
    provider_accepts_assignment: bool
    billable_status: Literal["BILLABLE", "NOT_BILLABLE"]
    responsible_party: Literal["INSURANCE_PAY", "SELF_PAY", "UNKNOWN"]
    patient: ClaimPatient
    billing_provider: BillingProvider
    rendering_provider: RenderingProvider
    diagnoses: list[Diagnosis] = Field(min_length=1, max_length=12)
    place_of_service_code: FacilityTypeCode
    service_lines: list[ServiceLine] = Field(min_length=1, max_length=50)
    date_of_service: date | None = None
    end_date_of_service: date | None = None
    subscriber_primary: Subscriber | None = None
    subscriber_secondary: Subscriber | None = None
    prior_authorization_number: str | None = Field(default=None, min_length=1, max_length=50)
    appointment_type: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _candid_rules(self) -> EncounterClaim:
        if self.responsible_party == "INSURANCE_PAY" and self.subscriber_primary is None:
            raise ValueError("subscriber_primary: required when responsible_party is INSURANCE_PAY")
        for n, line in enumerate(self.service_lines):
            if any(not 0 <= p < len(self.diagnoses) for p in line.diagnosis_pointers):
                raise ValueError(f"service_lines.{n}.diagnosis_pointers: out of the diagnoses")
        if self.end_date_of_service and self.date_of_service:
            if self.end_date_of_service < self.date_of_service:
                raise ValueError("end_date_of_service: before date_of_service")
        return self


_WHY = {
    "missing": "missing (Candid requires it)",
    "extra_forbidden": "not a field the connector sends (unknown, or set by the connector)",
    "literal_error": "not one of Candid's codes",
    "string_pattern_mismatch": "not in Candid's format",
    "string_too_short": "empty",
    "string_too_long": "too long",
    "too_short": "too few items",
    "too_long": "too many items",
}


def refusal(where: str, exc: ValidationError) -> PlanValidationError:
    """One refusal naming every bad field path and why, never a value (pydantic's own
    messages can quote the input)."""
    problems = []
    for e in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "value_error":
            # Our own rule messages: "<relative path>: <why>", with no values in them.
            problems.append(f"{where}{'.' + path if path else ''}." + e["msg"].split(", ", 1)[-1])
            continue
        why = _WHY.get(e["type"], e["type"].replace("_", " "))
        problems.append(f"{where}.{path}: {why}")
    return PlanValidationError("; ".join(problems))


def claim_of(where: str, encounter: dict[str, Any]) -> EncounterClaim:
    """The plan's encounter as a complete claim, or PlanValidationError naming the fields."""
    try:
        return EncounterClaim.model_validate(encounter)
    except ValidationError as exc:
        raise refusal(where, exc) from None


def encounter_body(
    claim: EncounterClaim, external_id: str, patient_external_id: str
) -> dict[str, Any]:
    """The ``EncounterCreate`` request body."""
    body = claim.model_dump(mode="json", exclude_none=True)
    body["external_id"] = external_id
    body["patient"]["external_id"] = patient_external_id
    return body
