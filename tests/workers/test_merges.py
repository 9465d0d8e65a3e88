"""Merges and removals over real HTTP against the sandbox, into a SQLite warehouse, per sync
mode: a merged-away patient's rows are deleted (mirror) or marked inactive with its
appointment rows gone (upsert), so no appointment appears twice; an appointment a patient was
removed from, or one Healthie deleted outright, reaches every patient whose recorded entry
held it (the state's appointment index); archived and deleted patients have a defined outcome.

The sandbox has no ``mergeClients``, no patient removal from an appointment and no patient
deletion, so :class:`Clinic` makes those changes to the sandbox organization's records, as
Healthie would, and delivers the webhook Healthie documents for each (the documented payloads,
through the engine's own event rules onto the dirty topic).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.core.config import TargetConfig
from app.core.models import Cadence
from app.intake.events import read_event
from app.queue.topology import DIRTY_TOPIC
from app.service.serving import serve_in_thread
from app.state.sqlite import SqliteStateStore
from sandbox.core import Sandbox
from sandbox.generate import group_appointment_id, is_group_owner
from sandbox.server import create_app as sandbox_app
from tests.helpers import REPO, demo_runtime
from workers.backfill import backfill
from workers.consumer import drain
from workers.flusher import flush

PLAN = REPO / "prompts" / "plans" / "demo-clinic.plan.json"
PATIENTS, SEED = 60, 4  # seed 4: group appointments among the first patients
ID = "demo-clinic"


class Clinic:
    """The sandbox, served over HTTP, plus the Healthie changes it cannot make itself."""

    def __init__(self, sb: Sandbox, url: str) -> None:
        self.sb, self.url, self.org = sb, url, sb.org
        self.removed: set[str] = set()
        find = self.org.patient
        # A merged-away or deleted patient is one Healthie answers as null.
        self.org.patient = lambda uid: None if uid in self.removed else find(uid)  # type: ignore[method-assign,assignment]

    def appointments(self, patient_id: str) -> list[str]:
        patient = self.org.patient(patient_id)
        assert patient is not None
        live = [self.org.appointment(a) for a in patient.appointment_ids]
        return [a.id for a in live if a is not None and a.deleted_at is None]

    def group(self) -> tuple[str, list[str]]:
        """A group appointment and its three attendees."""
        owner = next(i for i in range(PATIENTS - 2) if is_group_owner(SEED, i))
        appt = self.org.appointment(group_appointment_id(owner))
        assert appt is not None
        assert len(appt.attendee_ids) == 3
        return appt.id, list(appt.attendee_ids)

    def merge(self, source: str, destination: str) -> None:
        """``mergeClients``: the source's appointments move to the destination, the source
        is gone; Healthie sends ``patient.merged``."""
        src, dst = self.org.patient(source), self.org.patient(destination)
        assert src is not None
        assert dst is not None
        for appt_id in src.appointment_ids:
            appt = self.org.appointment(appt_id)
            assert appt is not None
            if appt.user_id == source:
                appt.user_id = destination
            appt.attendee_ids = [destination if a == source else a for a in appt.attendee_ids]
            dst.appointment_ids.append(appt_id)
        src.appointment_ids = []
        self.removed.add(source)
        self.webhook(
            "patient.merged",
            "990001",
            "User",
            destination_user_id=destination,
            source_user_id=source,
        )

    def remove_patient(self, appointment_id: str, patient_id: str) -> None:
        """Unassign a patient from an appointment; ``appointment.patient_removed``."""
        appt, patient = self.org.appointment(appointment_id), self.org.patient(patient_id)
        assert appt is not None
        assert patient is not None
        appt.attendee_ids.remove(patient_id)
        if appt.user_id == patient_id:
            appt.user_id = appt.attendee_ids[0]
        patient.appointment_ids.remove(appointment_id)
        self.webhook("appointment.patient_removed", appointment_id, "Appointment")

    def purge_appointment(self, appointment_id: str) -> None:
        """An appointment Healthie no longer answers at all (not even with include_deleted);
        ``appointment.deleted``."""
        del self.org.appointments[appointment_id]
        self.webhook("appointment.deleted", appointment_id, "Appointment")

    def delete_patient(self, patient_id: str) -> None:
        """A patient Healthie no longer has (no webhook: the next mark finds it gone)."""
        self.removed.add(patient_id)
        self.webhook("patient.updated", patient_id, "User")

    def webhook(self, event: str, resource_id: str, kind: str, **extra: str) -> None:
        body = {"resource_id": resource_id, "resource_id_type": kind, "event_type": event}
        self.pending.append(json.dumps({**body, "changed_fields": [], **extra}).encode())

    pending: list[bytes]


@pytest.fixture
def clinic():
    sb = Sandbox(patients=PATIENTS, seed=SEED)
    with serve_in_thread(sandbox_app(sb)) as url:
        c = Clinic(sb, f"{url}/graphql")
        c.pending = []
        yield c


@pytest.fixture(params=["upsert", "mirror"])
def engine(request, tmp_path: Path, clinic: Clinic):
    state = SqliteStateStore(str(tmp_path / "state.db"))
    rt = demo_runtime(
        tmp_path, api_url=clinic.url, api_key=clinic.sb.api_key, target="sqlite", state=state
    )
    integration = rt.integrations[ID]
    target = TargetConfig(
        name="warehouse",
        connector="sqlite",
        options={"path": str(tmp_path / "warehouse.db"), "mode": request.param},
    )
    agent = integration.agent.model_copy(update={"plan": PLAN})
    rt.integrations[ID] = integration.model_copy(update={"agent": agent, "targets": [target]})
    engine = Engine(rt, clinic, tmp_path / "warehouse.db", request.param)
    yield engine
    rt.close()


class Engine:
    def __init__(self, rt, clinic: Clinic, warehouse: Path, mode: str) -> None:
        self.rt, self.clinic, self.warehouse, self.mode = rt, clinic, warehouse, mode

    def sync(self, patients: list[str]) -> None:
        backfill(self.rt.state, self.rt.healthie(ID), ID, patients=patients)
        self.run()

    def run(self) -> int:
        """Deliver the webhooks Healthie sent, flush, and work until idle."""
        attributes = {"integration": ID, "cadence": Cadence.DAILY.value}
        for body in self.clinic.pending:
            _, marks = read_event(ID, body, datetime.now(UTC))
            assert marks
            self.rt.queue.publish_many(
                DIRTY_TOPIC, [(m.model_dump_json().encode(), attributes) for m in marks]
            )
        self.clinic.pending.clear()
        flush(self.rt, Cadence.DAILY)
        counts = drain(self.rt)
        assert counts.dead_lettered == 0
        return counts.processed

    def rows(self, table: str, patient_id: str | None = None) -> list[tuple]:
        columns = "patient_id, appointment_id" if table == "appointments" else "patient_id, active"
        query = f"SELECT {columns} FROM {table}"  # noqa: S608 - a test's own table names
        with sqlite3.connect(self.warehouse) as db:
            found = db.execute(query).fetchall()
        return sorted(r for r in found if patient_id is None or r[0] == patient_id)

    def appointment_ids(self, patient_id: str | None = None) -> list[str]:
        return [a for _, a in self.rows("appointments", patient_id)]

    def outcome(self, patient_id: str) -> str | None:
        state = self.rt.state.get_patient(ID, patient_id)
        return state.outcome if state else None


def test_a_merge_leaves_every_appointment_once_under_the_destination(engine: Engine):
    clinic = engine.clinic
    ids = list(clinic.org.patient_ids())
    source = next(p for p in ids[10:] if clinic.appointments(p))
    destination = next(p for p in ids[30:] if clinic.appointments(p))
    moved, kept = clinic.appointments(source), clinic.appointments(destination)
    engine.sync([source, destination])
    assert sorted(engine.appointment_ids(source)) == sorted(moved)

    clinic.merge(source, destination)
    engine.run()

    everywhere = engine.appointment_ids()
    assert len(everywhere) == len(set(everywhere))  # no appointment twice
    assert sorted(engine.appointment_ids(destination)) == sorted(moved + kept)
    assert engine.appointment_ids(source) == []
    if engine.mode == "mirror":
        assert engine.rows("patients", source) == []  # every row of the source deleted
    else:
        assert engine.rows("patients", source) == [(source, 0)]  # kept, marked inactive
    assert engine.outcome(source) == "merged"
    gone = engine.rt.state.get_patient(ID, source)
    assert gone is not None
    assert gone.entry["merged_into"] == destination
    assert engine.rt.state.patients_for_appointments(ID, moved) == {a: [destination] for a in moved}
    # a later mark of the merged-away patient does nothing more
    clinic.webhook("patient.updated", source, "User")
    engine.run()
    assert engine.appointment_ids(destination) == sorted(moved + kept)
    audit = [a.outcome for a in engine.rt.state.list_audit(ID, source)]
    assert audit[-2:] == ["skipped:patient_not_found", "skipped:patient_not_found"]


def test_a_patient_removed_from_an_appointment_is_re_synced_without_it(engine: Engine):
    clinic = engine.clinic
    appointment, attendees = clinic.group()
    engine.sync(attendees)
    assert all(appointment in engine.appointment_ids(p) for p in attendees)

    removed, *stay = attendees
    clinic.remove_patient(appointment, removed)
    engine.run()

    assert appointment not in engine.appointment_ids(removed)
    assert all(appointment in engine.appointment_ids(p) for p in stay)
    assert engine.rt.state.patients_for_appointments(ID, [appointment]) == {
        appointment: sorted(stay)
    }


def test_an_appointment_healthie_no_longer_answers_reaches_everyone_who_had_it(engine: Engine):
    clinic = engine.clinic
    appointment, attendees = clinic.group()
    engine.sync(attendees)

    clinic.purge_appointment(appointment)  # Healthie resolves it to nobody now
    assert engine.run() == len(attendees)

    assert all(appointment not in engine.appointment_ids(p) for p in attendees)
    assert engine.rt.state.patients_for_appointments(ID, [appointment]) == {appointment: []}


def test_an_archived_patient_is_still_synced_as_inactive(engine: Engine):
    clinic = engine.clinic
    patient = next(p for p in clinic.org.patient_ids() if clinic.appointments(p))
    engine.sync([patient])
    assert engine.rows("patients", patient) == [(patient, 1)]
    held = engine.appointment_ids(patient)

    clinic.sb.update_client(patient, active=False)
    clinic.webhook("patient.updated", patient, "User")
    assert engine.run() == 1

    assert engine.rows("patients", patient) == [(patient, 0)]
    assert engine.appointment_ids(patient) == held  # its history stays
    assert engine.outcome(patient) == "written"


def test_a_deleted_patient_is_purged_or_marked_never_dead_lettered(engine: Engine):
    clinic = engine.clinic
    patient = next(p for p in clinic.org.patient_ids() if clinic.appointments(p))
    engine.sync([patient])

    clinic.delete_patient(patient)
    assert engine.run() == 0  # not found: acknowledged, audited, never a dead letter

    assert engine.appointment_ids(patient) == []
    if engine.mode == "mirror":
        assert engine.rows("patients", patient) == []
    else:
        assert engine.rows("patients", patient) == [(patient, 0)]
    assert engine.outcome(patient) == "deleted"
    assert engine.rt.state.list_dead_letters(ID) == []
    (last,) = engine.rt.state.list_audit(ID, patient)[-1:]
    assert last.outcome == "skipped:patient_not_found"
    assert "deleted" in last.detail
