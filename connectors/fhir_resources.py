"""FHIR R4 resources from the FHIR connector's arguments, and the structural check every one
passes before it is sent.

::

    build(write, identifier_base)  ->  Resource(type, url, body)
      identifier   {system: <base>/<integration>/<kind>, value: <Healthie id>}
      url          "<Type>?identifier=<system>|<value>"   (the conditional update's search)
      references   "Patient?identifier=<system>|<value>"  (conditional references, resolved by
                                                            the server when the entry runs)
    check(resource)                     the pydantic model of the subset written (below)

**Validation, plainly.** The official FHIR R4 JSON schema
(``../shared/openapi/fhir-r4.schema.json``) is vendor data the engine may not copy into the
project, and ``../shared`` does not exist where the engine runs. So at run time every resource
passes the pydantic models below: the subset of FHIR R4 elements this connector writes, with
FHIR's element names (``extra="forbid"``: a wrong name is refused), cardinalities and primitive
patterns (``code``, ``date``, ``instant``, ``positiveInt``, non-empty ``string``) taken from
that schema. The tests validate every resource the connector sends against the official schema
itself (``tests/servers/fhir.py``), and check that these models name only elements the schema
defines, so the models cannot drift from FHIR unnoticed. A failed check fails that write (field
paths only, never a value) and nothing is sent for it.

**Identifier systems, per integration.** The system is ``<identifier_base>/<integration>/<kind>``
(``kind`` the Healthie object: ``user``, ``provider``, ``policy``, ``appointment``). Two clinics
writing to one FHIR server (one Medplum project holding several clinics, or a clinic that moved
between Healthie accounts) therefore never match each other's resources, even with the same
Healthie id, and a reference from one integration's Appointment can only resolve to that
integration's Patient. The base defaults to ``https://gethealthie.com/fhir/identifier``: a
namespace of this engine's choosing, not one Healthie publishes; set ``identifier_base`` to one
the clinic owns when it has a convention.

**Keys and the patient boundary.** A Patient's identifier value is the scope's patient id; a
Practitioner's is the Healthie provider id (a provider is the clinic's, written from any of its
patients' work); a Coverage's and an Appointment's is ``<patient id>:<Healthie id>``, the
scope's patient first, so a plan for patient A naming patient B's policy or appointment id
writes a resource of A's and can never overwrite B's (the platform's boundary: records are keyed
by the scope). A Healthie group appointment therefore becomes one Appointment per attendee,
each with its own patient as participant.

**References.** By conditional reference (``Patient?identifier=system|value``), not by a
``urn:uuid`` ``fullUrl``: Medplum documents both for bundles (``fhir-batch-requests``, "Internal
References" and "External (Conditional) References"), but Medplum runs a transaction bundle like
a batch, entry by entry and not atomically, so a ``urn:uuid`` reference only resolves when the
entry it names is in the same bundle and succeeded first. A conditional reference means the same
thing in any bundle, alone or retried: the resource holding that identifier now. It must match
exactly one resource, so an Appointment whose Patient does not exist yet fails (that write only)
and succeeds when retried after the Patient is written; the connector sends Practitioners and
Patients before the Coverages and Appointments that reference them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.core.errors import FatalError
from connectors.base import Write
from connectors.fhir_args import (
    UpsertAppointment,
    UpsertCoverage,
    UpsertPatient,
    UpsertPractitioner,
)

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
RELATIONSHIP_SYSTEM = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
CLASS_SYSTEM = "http://terminology.hl7.org/CodeSystem/coverage-class"
#: (FHIR type, Healthie kind) per operation; the order is the order entries are sent in
OPERATIONS: dict[str, tuple[str, str]] = {
    "upsert_practitioner": ("Practitioner", "provider"),
    "upsert_patient": ("Patient", "user"),
    "upsert_coverage": ("Coverage", "policy"),
    "upsert_appointment": ("Appointment", "appointment"),
}
RANK = {name: i for i, name in enumerate(OPERATIONS)}


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource to write by conditional update."""

    type: str
    url: str
    body: dict[str, Any]


def system(base: str, integration_id: str, kind: str) -> str:
    """The identifier system of ``kind`` objects of one integration."""
    return f"{base.rstrip('/')}/{quote(integration_id, safe='')}/{kind}"


def conditional(resource_type: str, id_system: str, value: str) -> str:
    """``Type?identifier=system|value``: a conditional update's URL or a conditional reference
    (values are ``fhir_args.ID`` strings, which need no escaping)."""
    return f"{resource_type}?identifier={quote(id_system, safe=':/')}|{quote(value, safe='')}"


def build(write: Write, base: str) -> Resource:
    """The resource ``write`` asks for, structurally checked (FatalError naming field paths)."""
    resource_type, kind = OPERATIONS[write.operation]
    integration = write.scope.integration_id
    args = write.args
    patient = write.scope.patient_id
    if isinstance(args, UpsertPatient):
        key = patient  # the patient's own resource is keyed by the scope, never by the plan
    elif isinstance(args, UpsertPractitioner):
        key = args.key  # a provider is the clinic's, not one patient's
    else:
        # a patient's object: the scope's patient is part of the key (see the docstring)
        key = f"{patient}:{getattr(args, 'key')}"  # noqa: B009
    own = {"system": system(base, integration, kind), "value": key}

    def ref(kind_of: str, value: str) -> dict[str, str]:
        target = "Patient" if kind_of == "user" else "Practitioner"
        return {"reference": conditional(target, system(base, integration, kind_of), value)}

    body: dict[str, Any]
    if isinstance(args, UpsertPatient):
        body = _person("Patient", own, args.first_name, args.last_name, args.email, args.phone)
        body |= _some(active=args.active, gender=args.gender, birthDate=_date(args.birth_date))
        if args.address is not None:
            a = args.address
            address = _some(
                line=[x for x in (a.line1, a.line2) if x] or None,
                city=a.city,
                state=a.state,
                postalCode=a.postal_code,
                country=a.country,
            )
            if address:
                body["address"] = [address]
    elif isinstance(args, UpsertPractitioner):
        body = _person("Practitioner", own, args.first_name, args.last_name, args.email, args.phone)
        if args.npi:
            body["identifier"].append({"system": NPI_SYSTEM, "value": args.npi})
        body |= _some(active=args.active)
    elif isinstance(args, UpsertCoverage):
        payor: dict[str, Any] = {"display": args.payer_name}
        if args.payer_id:
            payor["identifier"] = {"value": args.payer_id}
        body = {
            "resourceType": "Coverage",
            "identifier": [own],
            "status": args.status,
            "beneficiary": ref("user", write.scope.patient_id),
            "payor": [payor],
        }
        body |= _some(subscriberId=args.member_id, order=args.priority)
        if args.relationship:
            body["relationship"] = {
                "coding": [{"system": RELATIONSHIP_SYSTEM, "code": args.relationship}]
            }
        period = _some(start=_date(args.start_date), end=_date(args.end_date))
        if period:
            body["period"] = period
        if args.group_number:
            kind_class = {"coding": [{"system": CLASS_SYSTEM, "code": "group"}]}
            body["class"] = [{"type": kind_class, "value": args.group_number}]
    elif isinstance(args, UpsertAppointment):
        participants = [{"actor": ref("user", write.scope.patient_id), "status": "accepted"}]
        if args.practitioner_id:
            participants.append(
                {"actor": ref("provider", args.practitioner_id), "status": "accepted"}
            )
        body = {"resourceType": "Appointment", "identifier": [own], "status": args.status}
        body |= _some(
            start=_instant(args.start),
            end=_instant(args.end),
            minutesDuration=args.minutes_duration,
            description=args.description,
            comment=args.comment,
        )
        if args.appointment_type:
            body["appointmentType"] = {"text": args.appointment_type}
        body["participant"] = participants
    else:  # pragma: no cover - the operations table and the models are declared together
        raise FatalError(f"fhir: no resource for operation {write.operation!r}")
    check(body)
    return Resource(resource_type, conditional(resource_type, own["system"], key), body)


def _person(
    resource_type: str,
    own: dict[str, str],
    first: str | None,
    last: str | None,
    email: str | None,
    phone: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": resource_type, "identifier": [own]}
    name = _some(use="official", family=last, given=[first] if first else None)
    if len(name) > 1:
        body["name"] = [name]
    telecom = [
        {"system": s, "value": v} for s, v in (("email", email), ("phone", phone)) if v is not None
    ]
    if telecom:
        body["telecom"] = telecom
    return body


def _some(**values: Any) -> dict[str, Any]:
    """The elements that have a value (FHIR JSON has no nulls and no empty strings)."""
    return {k: v for k, v in values.items() if v is not None and v != ""}


def _date(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _instant(value: datetime | None) -> str | None:
    # FHIR instant: seconds required, a zone required ("+00:00" rather than Python's "Z"-less
    # naive form; AwareDatetime guarantees the zone)
    return value.isoformat(timespec="seconds") if value is not None else None


# -- the structural check: the subset of FHIR R4 the connector writes ---------------------------
# Patterns are the official schema's for these primitive types (definitions.code, .date, ...).
CODE = r"^[^\s]+(\s[^\s]+)*$"
DATE = (
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
    r"(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$"
)
INSTANT = (
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|"
    r"3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):"
    r"[0-5][0-9]|14:00))$"
)
STRING = r"^[ \r\n\t\S]+$"


class _Element(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Coding(_Element):
    system: str = Field(pattern=r"^\S*$")
    code: str = Field(pattern=CODE)


class CodeableConcept(_Element):
    coding: list[Coding] | None = Field(default=None, min_length=1)
    text: str | None = Field(default=None, pattern=STRING)


class Identifier(_Element):
    system: str | None = Field(default=None, pattern=r"^\S*$")
    value: str = Field(pattern=STRING)


class Reference(_Element):
    reference: str | None = Field(default=None, pattern=STRING)
    identifier: Identifier | None = None
    display: str | None = Field(default=None, pattern=STRING)


class HumanName(_Element):
    use: Literal["usual", "official", "temp", "nickname", "anonymous", "old", "maiden"]
    family: str | None = Field(default=None, pattern=STRING)
    given: list[str] | None = Field(default=None, min_length=1)


class ContactPoint(_Element):
    system: Literal["phone", "fax", "email", "pager", "url", "sms", "other"]
    value: str = Field(pattern=STRING)


class Address(_Element):
    line: list[str] | None = Field(default=None, min_length=1)
    city: str | None = Field(default=None, pattern=STRING)
    state: str | None = Field(default=None, pattern=STRING)
    postalCode: str | None = Field(default=None, pattern=STRING)
    country: str | None = Field(default=None, pattern=STRING)


class Period(_Element):
    start: str | None = Field(default=None, pattern=DATE)
    end: str | None = Field(default=None, pattern=DATE)


class _Resource(_Element):
    identifier: list[Identifier] = Field(min_length=1)


class Patient(_Resource):
    resourceType: Literal["Patient"]
    active: bool | None = None
    name: list[HumanName] | None = Field(default=None, min_length=1)
    telecom: list[ContactPoint] | None = Field(default=None, min_length=1)
    gender: Literal["male", "female", "other", "unknown"] | None = None
    birthDate: str | None = Field(default=None, pattern=DATE)
    address: list[Address] | None = Field(default=None, min_length=1)


class Practitioner(_Resource):
    resourceType: Literal["Practitioner"]
    active: bool | None = None
    name: list[HumanName] | None = Field(default=None, min_length=1)
    telecom: list[ContactPoint] | None = Field(default=None, min_length=1)


class CoverageClass(_Element):
    type: CodeableConcept
    value: str = Field(pattern=STRING)


class Coverage(_Resource):
    resourceType: Literal["Coverage"]
    status: Literal["active", "cancelled", "draft", "entered-in-error"]
    subscriberId: str | None = Field(default=None, pattern=STRING)
    beneficiary: Reference
    relationship: CodeableConcept | None = None
    period: Period | None = None
    payor: list[Reference] = Field(min_length=1)
    # "class" is a Python keyword: the element keeps its FHIR name through the alias
    class_: list[CoverageClass] | None = Field(default=None, alias="class", min_length=1)
    order: int | None = Field(default=None, ge=1)


class Participant(_Element):
    actor: Reference
    status: Literal["accepted", "declined", "tentative", "needs-action"]


class Appointment(_Resource):
    resourceType: Literal["Appointment"]
    status: Literal[
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
    appointmentType: CodeableConcept | None = None
    description: str | None = Field(default=None, pattern=STRING)
    start: str | None = Field(default=None, pattern=INSTANT)
    end: str | None = Field(default=None, pattern=INSTANT)
    minutesDuration: int | None = Field(default=None, ge=1)
    comment: str | None = Field(default=None, pattern=STRING)
    participant: list[Participant] = Field(min_length=1)


MODELS: dict[str, type[_Resource]] = {
    "Patient": Patient,
    "Practitioner": Practitioner,
    "Coverage": Coverage,
    "Appointment": Appointment,
}


def check(body: dict[str, Any]) -> None:
    """Raise FatalError naming the failing element paths when ``body`` is not a resource of the
    subset this connector writes (never a value: pydantic's messages can quote the input)."""
    model = MODELS.get(str(body.get("resourceType")))
    if model is None:
        raise FatalError("fhir: the connector does not write this resource type")
    try:
        model.model_validate(body)
    except ValidationError as exc:
        paths = ", ".join(".".join(str(p) for p in e["loc"]) or "(root)" for e in exc.errors())
        raise FatalError(f"fhir {model.__name__}: fails the structural check at {paths}") from None
