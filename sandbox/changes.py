"""Validate and apply changes to the organization, returning the webhook events they cause.

These functions are the single code path behind both the GraphQL mutations and the direct
Python calls on :class:`sandbox.core.Sandbox`. They validate first and mutate only when every
check passes, raising :class:`ValidationFailed` with Healthie-style field messages otherwise
(the GraphQL layer returns those as ``messages``, HTTP 200, like Healthie).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sandbox.models import Address, AppliedTag, Appointment
from sandbox.org import Organization
from sandbox.webhooks import Event

PM_STATUSES = ("Occurred", "No-Show", "Re-Scheduled", "Cancelled")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CLIENT_FIELDS = frozenset(
    "first_name last_name legal_name pronouns email phone_number dob gender sex timezone "
    "active metadata record_identifier additional_record_identifier user_group_id "
    "dietitian_id other_provider_ids location".split()
)
APPOINTMENT_FIELDS = frozenset(
    "pm_status date contact_type appointment_type_id location appointment_location_id "
    "provider_id".split()
)


@dataclass(frozen=True, slots=True)
class FieldMessage:
    """A validation failure, served as ``FieldError { field message }``."""

    field: str | None
    message: str


class ValidationFailed(Exception):  # noqa: N818 - named for what the caller sees
    """The change was refused; nothing was modified."""

    def __init__(self, messages: list[FieldMessage]) -> None:
        super().__init__("; ".join(m.message for m in messages))
        self.messages = messages


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _fail(field: str | None, message: str) -> ValidationFailed:
    return ValidationFailed([FieldMessage(field, message)])


def update_client(
    org: Organization, user_id: str, fields: dict[str, Any], stamp: str
) -> list[Event]:
    """Apply ``updateClient`` fields to a patient; return ``patient.updated`` (and location)."""
    unknown = set(fields) - CLIENT_FIELDS
    if unknown:
        raise TypeError(f"update_client got unsupported fields: {sorted(unknown)}")
    patient = org.patient(user_id)
    if patient is None:
        raise _fail("id", "User not found")
    errors: list[FieldMessage] = []
    if "first_name" in fields and not (fields["first_name"] or "").strip():
        errors.append(FieldMessage("first_name", "First name can't be blank"))
    if fields.get("email") is not None and not _EMAIL.match(fields["email"]):
        errors.append(FieldMessage("email", "Email is invalid"))
    if fields.get("dob") is not None and not _DATE.match(fields["dob"]):
        errors.append(FieldMessage("dob", "Dob is not a valid date (YYYY-MM-DD)"))
    phone = fields.get("phone_number")
    if phone and len(re.sub(r"\D", "", phone)) < 10:
        errors.append(FieldMessage("phone_number", "Phone number is invalid"))
    if fields.get("metadata") is not None:
        if not _is_json_object(fields["metadata"]):
            errors.append(FieldMessage("metadata", "Metadata must be a JSON object"))
    if fields.get("user_group_id") not in (None, "", *org.user_groups):
        errors.append(FieldMessage("user_group_id", "User group not found"))
    if fields.get("dietitian_id") not in (None, *org.providers):
        errors.append(FieldMessage("dietitian_id", "Provider not found"))
    for pid in fields.get("other_provider_ids") or ():
        if pid not in org.providers:
            errors.append(FieldMessage("other_provider_ids", f"Provider {pid} not found"))
    if errors:
        raise ValidationFailed(errors)

    changed: list[str] = []
    events: list[Event] = []
    for name, value in fields.items():
        if name == "location":
            events.extend(_update_location(org, patient.id, value or {}, stamp))
            continue
        attr = {"other_provider_ids": "provider_ids"}.get(name, name)
        if name == "user_group_id" and value == "":
            value = None
        if getattr(patient, attr) != value:
            setattr(patient, attr, list(value) if isinstance(value, list) else value)
            changed.append(name)
            if name == "active":
                patient.archived_at = None if value else stamp
    if changed:
        org.touch_patient(patient, stamp)  # never in changed_fields, as at Healthie
        events.insert(0, Event("patient.updated", patient.id, "User", tuple(changed)))
    return events


def _update_location(
    org: Organization, user_id: str, values: dict[str, Any], stamp: str
) -> list[Event]:
    patient = org.patient(user_id)
    assert patient is not None
    keys = ("line1", "line2", "city", "state", "zip", "country")
    if patient.location is None:
        patient.location = Address(org.new_id(), "", None, "", "", "", "US")
        for key in keys:
            if values.get(key) is not None:
                setattr(patient.location, key, values[key])
        return [
            Event("location.created", patient.location.id, "Location", (), (("user_id", user_id),))
        ]
    changed = [k for k in keys if k in values and getattr(patient.location, k) != values[k]]
    for key in changed:
        setattr(patient.location, key, values[key])
    if not changed:
        return []
    return [
        Event(
            "location.updated",
            patient.location.id,
            "Location",
            tuple(changed),
            (("user_id", user_id),),
        )
    ]


def apply_tag(org: Organization, user_id: str, tag_id: str, stamp: str) -> list[Event]:
    """Apply a tag at ``stamp``; ``applied_tag.created`` unless it was already applied."""
    patient = org.patient(user_id)
    if patient is None:
        raise _fail("taggable_user_id", "User not found")
    if tag_id not in org.tags:
        raise _fail("ids", f"Tag {tag_id} not found")
    if tag_id in patient.applied_tags:
        return []
    applied = org.new_id()
    patient.applied_tags[tag_id] = applied
    org.applied[applied] = AppliedTag(applied, tag_id, patient.id, stamp, stamp)
    return [
        Event(
            "applied_tag.created",
            applied,
            "AppliedTag",
            (),
            (("tag_id", tag_id), ("user_id", user_id)),
        )
    ]


def remove_applied_tag(org: Organization, user_id: str, tag_id: str) -> list[Event]:
    """Remove a tag from a patient; ``applied_tag.deleted``."""
    patient = org.patient(user_id)
    if patient is None:
        raise _fail("taggable_user_id", "User not found")
    applied = patient.applied_tags.pop(tag_id, None)
    if applied is None:
        raise _fail("id", "Tag is not applied to this user")
    org.applied.pop(applied, None)
    return [
        Event(
            "applied_tag.deleted",
            applied,
            "AppliedTag",
            (),
            (("tag_id", tag_id), ("user_id", user_id)),
        )
    ]


def _appointment_event(
    org: Organization, kind: str, appt: Appointment, changed: tuple[str, ...]
) -> Event:
    extra: tuple[tuple[str, str], ...] = ()
    if kind != "appointment.deleted":
        extra = (("resource_organization_id", org.organization_id),)
    return Event(
        kind,
        appt.id,
        "Appointment",
        changed,
        extra,
        recurring=appt.recurring_appointment is not None,
    )


def update_appointment(
    org: Organization, appointment_id: str, fields: dict[str, Any], stamp: str
) -> list[Event]:
    """Update an appointment (status changes included); ``appointment.updated``."""
    unknown = set(fields) - APPOINTMENT_FIELDS
    if unknown:
        raise TypeError(f"update_appointment got unsupported fields: {sorted(unknown)}")
    appt = org.appointment(appointment_id)
    if appt is None or appt.deleted_at is not None:
        raise _fail("id", "Appointment not found")
    if "pm_status" in fields and fields["pm_status"] not in (None, "", *PM_STATUSES):
        raise _fail("pm_status", f"Pm status must be one of {', '.join(PM_STATUSES)}")
    if fields.get("appointment_type_id") not in (None, *org.appointment_types):
        raise _fail("appointment_type_id", "Appointment type not found")
    if fields.get("provider_id") not in (None, *org.providers):
        raise _fail("provider_id", "Provider not found")
    changed = [k for k, v in fields.items() if getattr(appt, k) != (v or None)]
    for key in changed:
        setattr(appt, key, fields[key] or None)
    if not changed:
        return []
    if "pm_status" in changed:
        changed.append("pm_status_last_changed_by_id")  # Healthie records who changed it
    changed.append("last_updated_by_id")
    appt.updated_at = stamp
    org.touch_appointment(appt)
    return [_appointment_event(org, "appointment.updated", appt, tuple(changed))]


def create_appointment(
    org: Organization, user_id: str, fields: dict[str, Any], stamp: str
) -> tuple[Appointment, list[Event]]:
    """Book a one-time appointment for a patient; ``appointment.created``."""
    patient = org.patient(user_id)
    if patient is None:
        raise _fail("user_id", "User not found")
    type_id = fields.get("appointment_type_id") or next(iter(org.appointment_types))
    if type_id not in org.appointment_types:
        raise _fail("appointment_type_id", "Appointment type not found")
    provider = fields.get("provider_id") or patient.dietitian_id or next(iter(org.providers))
    if provider not in org.providers:
        raise _fail("providers", "Provider not found")
    if not fields.get("date"):
        raise _fail("date", "Date can't be blank")
    contact = fields.get("contact_type") or "Healthie Video Call"
    if contact == "In Person" and not fields.get("appointment_location_id"):
        raise _fail("appointment_location_id", "Appointment location is required for in-person")
    appt = Appointment(
        id=org.new_id(),
        date=fields["date"],
        length=org.appointment_types[type_id].length,
        contact_type=contact,
        pm_status=None,
        created_at=stamp,
        updated_at=stamp,
        appointment_type_id=type_id,
        provider_id=provider,
        user_id=patient.id,
        attendee_ids=[patient.id],
        location=fields.get("location"),
        appointment_location_id=fields.get("appointment_location_id"),
    )
    org.appointments[appt.id] = appt
    org.touch_appointment(appt)
    patient.appointment_ids.append(appt.id)
    return appt, [_appointment_event(org, "appointment.created", appt, ())]


def delete_appointment(org: Organization, appointment_id: str, stamp: str) -> list[Event]:
    """Soft-delete an appointment (``deleted_at``); ``appointment.deleted``."""
    appt = org.appointment(appointment_id)
    if appt is None or appt.deleted_at is not None:
        raise _fail("id", "Appointment not found")
    appt.deleted_at = stamp
    appt.updated_at = stamp
    org.touch_appointment(appt)
    return [_appointment_event(org, "appointment.deleted", appt, ())]
