"""What a plan may ask the FHIR connector to write: one argument model per operation, checked
before any I/O (the plan validator's boundary, ``connectors.base.TargetSchema.validate``).

The models take the Healthie side's words (``first_name``, ``member_id``, ``practitioner_id``)
and the FHIR value sets where FHIR has one (gender, statuses); ``connectors.fhir_resources``
turns them into FHIR R4 resources. An empty string means "absent" (Healthie answers ``""`` for
an unset field, and FHIR JSON forbids ``""``), so a required one (``payer_name``) is refused as
missing. Every other field is refused in FHIR's own terms before I/O: a date that is not a
FHIR ``date``, a time without a zone (FHIR ``instant`` needs one), an appointment whose start and
end break FHIR's invariants app-2 and app-3.

Healthie ids become identifier values and search parameters (``identifier=system|value``), so
they are held to ``ID``: letters, digits, ``.``, ``_`` and ``-`` (FHIR's search syntax gives
``|``, ``,`` and ``$`` meaning, and an id never needs them).
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

#: a Healthie object id as an identifier value (see the module docstring)
ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
EMAIL = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,63}$"
PHONE = r"^[0-9+(). -]{3,32}$"
NPI = r"^[0-9]{10}$"
#: US state or other region code, a postal code, an ISO country code: short, no newlines
SHORT = r"^[^\r\n\t]{1,64}$"
#: FHIR ``string`` (at least one character); long text may span lines
TEXT_MAX = 10_000
NAME_MAX = 200

Gender = Literal["male", "female", "other", "unknown"]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", str_min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_absent(cls, data: Any) -> Any:
        # Healthie answers "" for an unset field and FHIR JSON forbids "": both mean "absent"
        if isinstance(data, dict):
            return {k: (None if v == "" else v) for k, v in data.items()}
        return data


class Address(_Args):
    """A postal address (FHIR ``Address``)."""

    line1: str | None = Field(default=None, max_length=NAME_MAX, pattern=SHORT)
    line2: str | None = Field(default=None, max_length=NAME_MAX, pattern=SHORT)
    city: str | None = Field(default=None, max_length=NAME_MAX, pattern=SHORT)
    state: str | None = Field(default=None, pattern=SHORT)
    postal_code: str | None = Field(default=None, pattern=SHORT)
    country: str | None = Field(default=None, pattern=SHORT)


class UpsertPatient(_Args):
    """Create or update the entry's patient as a FHIR Patient, found by the identifier holding
    its Healthie id. Names, telecom, gender, birth date and address are replaced by these values
    (a conditional update replaces the whole resource); None leaves an element out."""

    patient_id: str = Field(pattern=ID)
    first_name: str | None = Field(default=None, max_length=TEXT_MAX)
    last_name: str | None = Field(default=None, max_length=NAME_MAX)
    gender: Gender | None = None
    birth_date: date | None = None
    email: str | None = Field(default=None, max_length=254, pattern=EMAIL)
    phone: str | None = Field(default=None, pattern=PHONE)
    address: Address | None = None
    active: bool | None = None


class UpsertPractitioner(_Args):
    """Create or update the Healthie provider ``key`` (a provider's user id) as a FHIR
    Practitioner, written in the patient's work (the provider who sees them)."""

    patient_id: str = Field(pattern=ID)
    key: str = Field(pattern=ID)
    first_name: str | None = Field(default=None, max_length=NAME_MAX)
    last_name: str | None = Field(default=None, max_length=NAME_MAX)
    npi: str | None = Field(default=None, pattern=NPI)
    email: str | None = Field(default=None, max_length=254, pattern=EMAIL)
    phone: str | None = Field(default=None, pattern=PHONE)
    active: bool | None = None


Relationship = Literal["self", "spouse", "child", "parent", "common", "other", "injured"]


class UpsertCoverage(_Args):
    """Create or update the patient's insurance policy ``key`` (the Healthie policy id) as a
    FHIR Coverage whose beneficiary is the patient; ``payer_name`` is required (FHIR requires a
    payor)."""

    patient_id: str = Field(pattern=ID)
    key: str = Field(pattern=ID)
    status: Literal["active", "cancelled", "draft", "entered-in-error"] = "active"
    payer_name: str = Field(max_length=NAME_MAX)
    payer_id: str | None = Field(default=None, max_length=64, pattern=SHORT)
    member_id: str | None = Field(default=None, max_length=64, pattern=SHORT)
    group_number: str | None = Field(default=None, max_length=64, pattern=SHORT)
    relationship: Relationship | None = None
    #: 1 = primary, 2 = secondary, ... (FHIR ``Coverage.order``)
    priority: int | None = Field(default=None, ge=1, le=99)
    start_date: date | None = None
    end_date: date | None = None

    @model_validator(mode="after")
    def _period(self) -> Self:
        if self.start_date and self.end_date and self.end_date < self.start_date:
            raise ValueError("end_date is before start_date")
        return self


AppointmentStatus = Literal[
    "proposed",
    "pending",
    "booked",
    "arrived",
    "fulfilled",
    "cancelled",
    "noshow",
    "entered-in-error",
    "checked-in",
    "waitlist",
]


class UpsertAppointment(_Args):
    """Create or update the Healthie appointment ``key`` as a FHIR Appointment with the patient
    (and ``practitioner_id``, a Healthie provider id, when given) as participants, referenced by
    their identifiers; ``start`` and ``end`` carry a time zone."""

    patient_id: str = Field(pattern=ID)
    key: str = Field(pattern=ID)
    status: AppointmentStatus
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    minutes_duration: int | None = Field(default=None, ge=1, le=1440)
    appointment_type: str | None = Field(default=None, max_length=NAME_MAX)
    description: str | None = Field(default=None, max_length=TEXT_MAX)
    comment: str | None = Field(default=None, max_length=TEXT_MAX)
    practitioner_id: str | None = Field(default=None, pattern=ID)

    @model_validator(mode="after")
    def _times(self) -> Self:
        # app-2: start and end together or neither; app-3: only proposed, cancelled and
        # waitlisted appointments may lack them (FHIR R4 Appointment invariants)
        if (self.start is None) != (self.end is None):
            raise ValueError("start and end go together")
        if self.start is None and self.status not in ("proposed", "cancelled", "waitlist"):
            raise ValueError("start and end are required for this status")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError("end is before start")
        return self
