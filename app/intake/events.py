"""Which patients a Healthie webhook event affects: event -> dirty marks.

Pure functions, no I/O: the webhook path never calls Healthie. Appointment and applied-tag events
that do not name a patient become marks on the appointment or tag, resolved at flush time (an
appointment to the patients Healthie lists on it and those whose recorded entries held it, so
``appointment.patient_removed`` and ``appointment.deleted`` reach the patients who lost it).
``patient.merged`` marks its destination (re-synced with the merged entry) and its source,
carrying the destination (``merged_into``): ``workers.pipeline.gone`` handles a source Healthie
no longer has.
Session-note and clinical-documentation events never mark anything: the engine does not sync them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.models import DirtyMark, SubjectKind

PATIENT_EVENTS = frozenset({"patient.created", "patient.updated"})
APPOINTMENT_EVENTS = frozenset(
    {
        "appointment.created",
        "appointment.updated",
        "appointment.deleted",
        "appointment.patient_added",
        "appointment.patient_removed",
    }
)
APPLIED_TAG_EVENTS = frozenset({"applied_tag.created", "applied_tag.deleted"})
#: Patient-scoped events whose resource belongs to a patient named in the payload or resolvable
#: later; accepted by default because the entry contains their data.
DEFAULT_PATIENT_SCOPED = frozenset(
    {
        "policy.created",
        "policy.updated",
        "policy.deleted",
        "billing_item.created",
        "billing_item.updated",
        "requested_payment.created",
        "requested_payment.updated",
    }
)
#: Never synced: session notes, clinical documentation, chat.
EXCLUDED_PREFIXES = (
    "form_answer_group.",
    "charting_note_addendum.",
    "message.",
    "comment.",
    "document.",
    "note.",
    "conversation",
)


class WebhookPayload(BaseModel):
    """Healthie's thin webhook body; unknown extra keys are kept for the rules below."""

    model_config = ConfigDict(extra="allow")

    resource_id: str = Field(min_length=1, max_length=64)
    resource_id_type: str = Field(default="", max_length=64)
    event_type: str = Field(min_length=3, max_length=128, pattern=r"^[a-z_]+\.[a-z_.]+$")
    changed_fields: list[str] = Field(default_factory=list)

    @field_validator("resource_id", mode="before")
    @classmethod
    def _id_as_string(cls, value: Any) -> Any:
        # Healthie sends ids as numbers in some events and strings in others.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    def extra_id(self, key: str) -> str | None:
        """An extra payload field (``user_id``, ``source_user_id``...) as a string id."""
        value = (self.model_extra or {}).get(key)
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, int | str) and str(value).strip():
            return str(value).strip()
        return None


def resolve_event(
    integration_id: str,
    payload: WebhookPayload,
    received_at: datetime,
    extra_events: frozenset[str] = frozenset(),
) -> list[DirtyMark] | None:
    """The dirty marks an event produces; ``None`` when the event type is not handled."""
    event = payload.event_type

    def mark(kind: SubjectKind, subject: str, merged_into: str | None = None) -> DirtyMark:
        return DirtyMark(
            integration_id=integration_id,
            subject_kind=kind,
            subject_id=subject,
            reason=event,
            received_at=received_at,
            merged_into=merged_into,
        )

    if event.startswith(EXCLUDED_PREFIXES):
        return []
    if event in PATIENT_EVENTS:
        return [mark(SubjectKind.PATIENT, payload.resource_id)]
    if event == "patient.merged":
        destination = payload.extra_id("destination_user_id") or payload.resource_id
        marks = [mark(SubjectKind.PATIENT, destination)]
        source = payload.extra_id("source_user_id")
        if source and source != destination:
            marks.append(mark(SubjectKind.PATIENT, source, merged_into=destination))
        return marks
    if event in APPLIED_TAG_EVENTS:
        user_id = payload.extra_id("user_id")
        if user_id:
            return [mark(SubjectKind.PATIENT, user_id)]
        return [mark(SubjectKind.APPLIED_TAG, payload.resource_id)]
    if event in APPOINTMENT_EVENTS:
        return [mark(SubjectKind.APPOINTMENT, payload.resource_id)]
    if event in DEFAULT_PATIENT_SCOPED or event in extra_events:
        user_id = payload.extra_id("user_id") or payload.extra_id("patient_id")
        if user_id:
            return [mark(SubjectKind.PATIENT, user_id)]
        if payload.resource_id_type == "User":
            return [mark(SubjectKind.PATIENT, payload.resource_id)]
        return None  # cannot tell whose it is without calling Healthie; counted as unhandled
    return None


def read_event(
    integration_id: str,
    body: bytes,
    received_at: datetime,
    extra_events: frozenset[str] = frozenset(),
) -> tuple[WebhookPayload, list[DirtyMark] | None]:
    """A verified body's payload and the marks it produces (see :func:`resolve_event`).

    Raises ValueError (pydantic's ValidationError is one) when the body is not a webhook."""
    payload = WebhookPayload.model_validate_json(body)
    return payload, resolve_event(integration_id, payload, received_at, extra_events)
