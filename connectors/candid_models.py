"""The arguments and options of the Candid Health connector (``connectors.candid``): what a
plan may ask of each operation, typed, and how a target says which Candid it writes to.
Field shapes follow Candid's pre-encounter schemas (``type_pre-encounter/common:Address``,
``ContactPoint``, ``HumanName``; ``type_pre-encounter/coverages/v1:MutableCoverage``)."""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

HOSTS = {
    "production": ("https://api.joincandidhealth.com", "https://pre-api.joincandidhealth.com"),
    "staging": (
        "https://api-staging.joincandidhealth.com",
        "https://pre-api-staging.joincandidhealth.com",
    ),
}
MRN_MAX = 20  # POST /patients/v1/with_mrn: "BadRequestError is returned when the MRN is > 20"
#: Patient / Coverage properties the server owns (not in MutablePatient / MutableCoverage)
SERVER_OWNED = {"id", "version", "mrn", "organization_id", "deactivated", "updating_user_id"}
SERVER_OWNED |= {"updated_at"}
Sex = Literal["FEMALE", "MALE", "UNKNOWN", "REFUSED"]
Name = Field(min_length=1, max_length=200)


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Address(_Args):
    """A pre-encounter address (``type_pre-encounter/common:Address``)."""

    line: list[str] = Field(min_length=1, max_length=3)
    city: str = Name
    state: str = Field(pattern=r"^[A-Z]{2}$")
    postal_code: str = Field(pattern=r"^\d{5}(-\d{4})?$")
    country: str = Field(default="US", pattern=r"^[A-Z]{2}$")
    use: Literal["HOME", "WORK", "TEMP", "OLD", "BILLING"] = "HOME"


class Phone(_Args):
    """A pre-encounter contact point (``type_pre-encounter/common:ContactPoint``)."""

    value: str = Field(pattern=r"^\+?[0-9 ()-]{7,20}$")
    use: Literal["HOME", "WORK", "TEMP", "OLD", "MOBILE"] = "MOBILE"


class UpsertPatient(_Args):
    """Create or update the patient's Candid pre-encounter patient (MRN and external id: the
    Healthie patient id). Optional fields left out keep Candid's values."""

    patient_id: str = Field(min_length=1, max_length=20, pattern=r"^[A-Za-z0-9-]+$")
    first_name: str = Name
    middle_name: str | None = Field(default=None, min_length=1, max_length=200)
    last_name: str = Name
    birth_date: date
    biological_sex: Sex
    address: Address
    gender: (
        Literal[
            "MAN", "WOMAN", "NON_BINARY", "TWO_SPIRIT", "FEMALE_TO_MALE", "MALE_TO_FEMALE",
            "OTHER", "UNKNOWN", "REFUSED",
        ]
        | None
    ) = None  # fmt: skip
    email: str | None = Field(default=None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    phone: Phone | None = None


class CoverageSubscriber(_Args):
    """The policy holder, when it is not the patient."""

    first_name: str = Name
    last_name: str = Name
    biological_sex: Sex
    birth_date: date | None = None
    address: Address | None = None


class UpsertCoverage(_Args):
    """Create or update the patient's Candid coverage for one insurance policy (``key``: the
    Healthie policy id; found in Candid by payer id and member id). The patient must already be
    in Candid (``upsert_patient`` first). ``subscriber`` is required unless the relationship is
    SELF (then the patient's own name, birth date, sex and address are used)."""

    patient_id: str = Field(min_length=1, max_length=20, pattern=r"^[A-Za-z0-9-]+$")
    key: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    member_id: str = Field(min_length=1, max_length=80)
    payer_id: str = Field(min_length=1, max_length=80)
    payer_name: str = Name
    group_number: str | None = Field(default=None, min_length=1, max_length=50)
    plan_name: str | None = Field(default=None, min_length=1, max_length=200)
    relationship: Literal["SELF", "SPOUSE", "CHILD", "COMMON_LAW_SPOUSE", "OTHER"] = "SELF"
    subscriber: CoverageSubscriber | None = None
    status: Literal["ACTIVE", "CANCELLED"] = "ACTIVE"
    start_date: date | None = None
    end_date: date | None = None


class CreateEncounter(_Args):
    """Create a professional encounter (the claim) for the Healthie object ``key`` (an
    appointment or billing item id), once: ``encounter`` is Candid's EncounterCreate without
    ``external_id`` and ``patient.external_id`` (see ``connectors.candid_claims``)."""

    patient_id: str = Field(min_length=1, max_length=20, pattern=r"^[A-Za-z0-9-]+$")
    key: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    encounter: dict[str, Any]


class CandidOptions(BaseModel):
    """Which Candid environment, and how Healthie ids become Candid identifiers."""

    model_config = ConfigDict(extra="forbid")

    environment: Literal["production", "staging"] = "production"
    #: another API host than the environment's (tests point it at a local fake)
    api_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(:\d+)?/?$")
    #: another pre-encounter host (default: ``api_url`` when set, else the environment's)
    pre_api_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(:\d+)?/?$")
    #: put before the Healthie id in the MRN (e.g. when two Healthie organisations share one
    #: Candid organisation); the MRN must stay within 20 characters
    mrn_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9-]{0,8}$")
    system_name: str = Field(default="Healthie", min_length=1, max_length=50)
    #: whether plans may create encounters (claims) on this target
    encounters: bool = False
    encounter_id_prefix: str = Field(default="healthie-", pattern=r"^[A-Za-z0-9_-]{0,16}$")
    #: append a new coverage to the patient's filing order
    filing_order: bool = True
