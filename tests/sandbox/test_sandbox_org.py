"""The synthetic organization is deterministic, varied and lazy."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from sandbox.core import Sandbox
from sandbox.org import generate_org
from tests.sandbox.records import patient_of, patients_of

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _snapshot(org, ids):
    out = []
    for pid in ids:
        p = org.patient(pid)
        out.append((repr(p), [repr(org.appointment(a)) for a in p.appointment_ids]))
    return out


def test_same_seed_same_org_whatever_the_access_order() -> None:
    a, b = generate_org(11, 300, NOW), generate_org(11, 300, NOW)
    ids = list(a.patient_ids())
    assert _snapshot(a, ids) == list(reversed(_snapshot(b, list(reversed(ids)))))
    assert repr(a.providers) == repr(b.providers)


def test_different_seed_different_org() -> None:
    a, b = generate_org(1, 50, NOW), generate_org(2, 50, NOW)
    assert _snapshot(a, list(a.patient_ids())) != _snapshot(b, list(b.patient_ids()))


def test_data_is_varied_and_realistic() -> None:
    org = generate_org(7, 400, NOW)
    patients = [patient_of(org, i) for i in org.patient_ids()]
    names = " ".join(f"{p.first_name} {p.last_name}" for p in patients)
    assert any(not c.isascii() for c in names)
    assert "'" in names
    assert any(not p.active and p.archived_at for p in patients)
    assert any(p.policies for p in patients)
    assert any(p.billing_items for p in patients)
    assert all(json.loads(p.metadata) for p in patients if p.metadata)
    appts = list(org.appointments.values())
    statuses = {a.pm_status for a in appts}
    assert {"Occurred", "No-Show", "Cancelled", "Re-Scheduled", None} <= statuses
    assert any(a.deleted_at for a in appts)
    assert any(a.recurring_appointment for a in appts)
    assert any(a.date > NOW.isoformat() for a in appts)
    assert any(a.date < NOW.isoformat() for a in appts)
    group = [a for a in appts if a.user_id is None]
    assert group
    assert all(len(a.attendee_ids) >= 2 for a in group)
    for a in group:  # every attendee sees the group appointment
        assert all(a.id in patient_of(org, u).appointment_ids for u in a.attendee_ids)


def test_appointment_lookup_generates_its_owner() -> None:
    org = generate_org(7, 1000, NOW)
    owner = next(p for p in patients_of(org, list(org.patient_ids())[500:]) if p.appointment_ids)
    appt_id = owner.appointment_ids[0]
    fresh = generate_org(7, 1000, NOW)
    assert repr(fresh.appointment(appt_id)) == repr(org.appointment(appt_id))


def test_chart_notes_and_chat_messages_exist_but_apart_from_patients() -> None:
    org = generate_org(7, 10, NOW)
    records = org.clinical_records("1000001")
    assert {r.kind for r in records} == {"chart_note", "chat_message"}
    assert all(r.text not in repr(org.patient("1000001")) for r in records)


def test_hundred_thousand_patients_generate_lazily_in_well_under_a_second() -> None:
    started = time.perf_counter()
    org = generate_org(7, 100_000, NOW)
    assert org.patient("1099999") is not None
    assert time.perf_counter() - started < 1.0


def test_sandbox_with_same_seed_and_changes_is_identical() -> None:
    a, b = Sandbox(seed=5, patients=120), Sandbox(seed=5, patients=120)
    ca, cb = a.apply_random_changes(40, seed=9), b.apply_random_changes(40, seed=9)
    assert [(c.kind, c.subject_id, c.at, c.fields, c.events) for c in ca] == [
        (c.kind, c.subject_id, c.at, c.fields, c.events) for c in cb
    ]
    assert _snapshot(a.org, list(a.org.patient_ids())) == _snapshot(
        b.org, list(b.org.patient_ids())
    )
    assert a.clock == b.clock
    assert a.api_key == b.api_key
    kinds = {c.kind for c in ca}
    assert {"update_client", "update_appointment"} <= kinds
    assert len(kinds) >= 4
    other = Sandbox(seed=5, patients=120).apply_random_changes(40, seed=10)
    assert [c.events for c in other] != [c.events for c in ca]
