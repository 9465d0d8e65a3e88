"""Event -> dirty-mark resolution rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from app.core.models import SubjectKind
from app.intake.events import WebhookPayload, resolve_event

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def marks(body: dict, extra=frozenset()):
    return resolve_event("clinic", WebhookPayload.model_validate(body), NOW, extra)


@pytest.mark.parametrize("rid", [922143, "922143"])
@pytest.mark.parametrize("event", ["patient.created", "patient.updated"])
def test_patient_events_mark_that_patient(rid, event):
    out = marks({"resource_id": rid, "resource_id_type": "User", "event_type": event})
    assert [(m.subject_kind, m.subject_id, m.reason) for m in out] == [
        (SubjectKind.PATIENT, "922143", event)
    ]


def test_merge_marks_destination_and_source():
    out = marks(
        {
            "resource_id": "922143",
            "resource_id_type": "User",
            "event_type": "patient.merged",
            "destination_user_id": "1234",
            "source_user_id": 5678,
        }
    )
    assert [(m.subject_id, m.merged_into) for m in out] == [("1234", None), ("5678", "1234")]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"destination_user_id": "1234"}, [("1234", None)]),  # no source named: nothing to drop
        ({"destination_user_id": "1234", "source_user_id": "1234"}, [("1234", None)]),
        ({"source_user_id": "5678"}, [("922143", None), ("5678", "922143")]),
    ],
)
def test_merge_marks_what_the_payload_names(extra, expected):
    body = {"resource_id": "922143", "resource_id_type": "User", "event_type": "patient.merged"}
    out = marks({**body, **extra})
    assert [(m.subject_kind, m.subject_id, m.merged_into) for m in out] == [
        (SubjectKind.PATIENT, s, into) for s, into in expected
    ]


def test_applied_tag_uses_user_id_or_marks_the_tag():
    with_user = marks(
        {
            "resource_id": "77",
            "resource_id_type": "AppliedTag",
            "event_type": "applied_tag.created",
            "user_id": 42,
        }
    )
    assert [(m.subject_kind, m.subject_id) for m in with_user] == [(SubjectKind.PATIENT, "42")]
    without = marks({"resource_id": "77", "event_type": "applied_tag.deleted"})
    assert [(m.subject_kind, m.subject_id) for m in without] == [(SubjectKind.APPLIED_TAG, "77")]


@pytest.mark.parametrize(
    "suffix", ["created", "updated", "deleted", "patient_added", "patient_removed"]
)
def test_appointment_events_mark_the_appointment(suffix):
    out = marks(
        {
            "resource_id": 578125,
            "resource_id_type": "Appointment",
            "event_type": f"appointment.{suffix}",
        }
    )
    assert [(m.subject_kind, m.subject_id) for m in out] == [(SubjectKind.APPOINTMENT, "578125")]


@pytest.mark.parametrize(
    "event",
    [
        "form_answer_group.created",
        "charting_note_addendum.created",
        "message.created",
        "comment.created",
        "document.created",
    ],
)
def test_clinical_events_never_mark(event):
    assert marks({"resource_id": "1", "event_type": event, "user_id": "42"}) == []


def test_unknown_events_are_unhandled_and_configured_ones_mark():
    body = {"resource_id": "9", "event_type": "goal.created", "user_id": "42"}
    assert marks(body) is None
    assert [m.subject_id for m in marks(body, frozenset({"goal.created"}))] == ["42"]


@pytest.mark.parametrize(
    "body",
    [
        {"event_type": "patient.updated"},
        {"resource_id": "", "event_type": "patient.updated"},
        {"resource_id": "1", "event_type": "no dots here"},
        {"resource_id": True, "event_type": "patient.updated"},
        {"resource_id": ["1"], "event_type": "patient.updated"},
    ],
)
def test_malformed_payloads_fail_validation(body):
    with pytest.raises(ValidationError):
        WebhookPayload.model_validate(body)
