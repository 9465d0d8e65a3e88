"""The audit trail: a processed item's state and its audit record are one atomic step, recorded
for the whole batch in one state call (``StateStore.record_patients``), so every written item
has exactly one audit record — none missing, none doubled — and no patient value reaches it.

The end-to-end cases run the consumer over a fake Healthie on both backends (SQLite, and
Pub/Sub + Firestore on their emulators); the hook's own cases call ``AuditTrail`` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest

from app.core.errors import HealthieSyncError, PatientNotFound, StoreUnavailable, TargetRejected
from app.core.models import WorkItem, WritePlan
from app.healthie.entry import canonicalize, content_hash
from app.queue.topology import WORK_TOPIC
from app.state.base import PatientRecord, StateStore
from app.state.sqlite import SqliteStateStore
from tests.backends import (  # noqa: F401 - the fixtures
    Backend,
    backend_fixture,
    firestore_emulator,
    pubsub_emulator,
)
from tests.helpers import demo_runtime
from tests.workers.test_workers import FakeHealthie, work
from workers.consumer import drain
from workers.middleware import AuditTrail
from workers.pipeline import Outcome

NOW = datetime(2026, 11, 1, tzinfo=UTC)
ID = "demo-clinic"
PATIENTS = ["1", "2", "3", "4", "5"]

#: what a model's rationale might quote from an entry: none of it may reach the audit
NAME, PHONE, BIRTH_DATE = "Adaline Quenneville", "+1 555 014 2398", "1961-07-23"


@pytest.fixture
def fake() -> FakeHealthie:
    return FakeHealthie()


@pytest.fixture
def runtime(tmp_path, fake, backend: Backend):
    rt = demo_runtime(
        tmp_path,
        http_transport=httpx2.MockTransport(fake),
        queue=backend.make_queue(),
        state=backend.make_state(),
    )
    yield rt
    rt.close()


def drain_all(rt, patients: int) -> None:
    """Drain until every item was settled (Pub/Sub's pull may come back empty meanwhile)."""
    settled = 0
    for _ in range(20):
        counts = drain(rt, idle_timeout=1.0)
        settled += counts.outcomes() + counts.retried
        if settled >= patients:
            return
    raise AssertionError(f"{settled} of {patients} items settled")


def audit_counts(state: StateStore, outcome: str) -> dict[str, int]:
    """Per patient, how many audit records with ``outcome`` it has."""
    found: dict[str, int] = {}
    for record in state.list_audit(ID):
        if record.outcome == outcome:
            found[record.patient_id] = found.get(record.patient_id, 0) + 1
    return found


def test_every_written_item_has_exactly_one_audit_record(runtime, fake):
    work(runtime, *PATIENTS)
    drain_all(runtime, len(PATIENTS))
    assert audit_counts(runtime.state, "written") == dict.fromkeys(PATIENTS, 1)
    for patient_id in PATIENTS:
        state = runtime.state.get_patient(ID, patient_id)
        assert state is not None
        assert state.outcome == "written"
    (record,) = runtime.state.list_audit(ID, "1")
    assert record.operations  # what was written: target.operation names
    assert all(op.startswith("warehouse.") for op in record.operations)

    # unchanged: nothing recorded, nothing audited; a change: one more record, for it only
    work(runtime, *PATIENTS)
    drain_all(runtime, len(PATIENTS))
    assert audit_counts(runtime.state, "written") == dict.fromkeys(PATIENTS, 1)
    fake.patients["2"]["first_name"] = "Changed"
    work(runtime, "2")
    drain_all(runtime, 1)
    assert audit_counts(runtime.state, "written") == {**dict.fromkeys(PATIENTS, 1), "2": 2}


def test_a_patient_healthie_no_longer_has_is_audited_once_with_its_state(runtime):
    work(runtime, "77")
    drain_all(runtime, 1)
    state = runtime.state.get_patient(ID, "77")
    assert state is not None
    assert state.outcome == "deleted"
    (record,) = runtime.state.list_audit(ID, "77")
    assert record.outcome == "skipped:patient_not_found"
    assert "deleted" in record.detail


class FlakyRecords:
    """A state store whose ``record_patients`` fails while ``failing`` (a locked store: every
    item's error returned, or raised when ``raising``); everything else is the real store."""

    def __init__(self, inner: StateStore, *, raising: bool = False) -> None:
        self.inner = inner
        self.failing = True
        self.raising = raising
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def record_patients(self, records: Sequence[PatientRecord]) -> list[HealthieSyncError | None]:
        self.calls.append(len(records))
        if not self.failing:
            return self.inner.record_patients(records)
        if self.raising:
            raise StoreUnavailable("state store: locked")
        return [StoreUnavailable("state store: locked")] * len(records)


@pytest.mark.parametrize("raising", [False, True], ids=["returned", "raised"])
def test_a_failed_record_is_each_items_failure_and_records_nothing(tmp_path, fake, raising):
    state = FlakyRecords(SqliteStateStore(":memory:"), raising=raising)
    rt = demo_runtime(tmp_path, http_transport=httpx2.MockTransport(fake), state=state)
    try:
        work(rt, *PATIENTS)
        failed = drain(rt)
        assert state.calls == [len(PATIENTS)]  # the whole batch in one state call
        assert (failed.processed, failed.retried) == (0, len(PATIENTS))
        assert all(rt.state.get_patient(ID, p) is None for p in PATIENTS)
        assert rt.state.list_audit(ID) == []  # not audited either: nothing was recorded

        state.failing = False  # the store answers again; the nacked items come back
        processed = 0
        for _ in range(20):  # bounded: each drain waits a second for redeliveries
            processed += drain(rt, idle_timeout=1.0).processed
            if processed >= len(PATIENTS):
                break
        assert processed == len(PATIENTS)
        assert audit_counts(rt.state, "written") == dict.fromkeys(PATIENTS, 1)
    finally:
        rt.close()


def entry_hash(raw: dict[str, Any]) -> str:
    return content_hash(canonicalize(raw))


def test_no_patient_value_from_a_plan_reaches_the_audit(tmp_path, fake):
    """A model's rationale and skip reason quoting a name, phone and birth date: the audit
    keeps ids, operation names, the backend and lengths only."""
    fake.patients["1"].update(first_name=NAME, phone_number=PHONE, dob=BIRTH_DATE)
    quoting = f"{NAME} (born {BIRTH_DATE}, phone {PHONE}) is a new patient"
    # a first run gives the real plan of patient 1, which the replay below re-executes
    first = demo_runtime(tmp_path / "a", http_transport=httpx2.MockTransport(fake))
    try:
        work(first, "1")
        drain(first)
        decided = first.state.get_patient(ID, "1")
        assert decided is not None
        assert decided.plan is not None
    finally:
        first.close()
    written = decided.plan.model_copy(update={"rationale": quoting, "backend": "claude"})
    skipped = WritePlan.skip("2", f"skip: {quoting}", backend="claude").model_copy(
        update={"rationale": quoting}
    )
    rt = demo_runtime(tmp_path / "b", http_transport=httpx2.MockTransport(fake))
    try:
        items = [
            WorkItem(
                integration_id=ID,
                patient_id=p,
                flush_id="f",
                dirty_since=NOW,
                replay_of=f"dead-{p}",
                plan=plan,
                plan_entry_hash=entry_hash(fake.patients[p]),
            )
            for p, plan in (("1", written), ("2", skipped))
        ]
        rt.queue.publish_many(WORK_TOPIC, [(i.model_dump_json().encode(), {}) for i in items])
        counts = drain(rt)
        assert counts.processed == 2
        records = rt.state.list_audit(ID)
        assert [(r.patient_id, r.outcome) for r in records] == [
            ("1", "written"),
            ("2", "plan_skipped"),
        ]
        stored_state = rt.state.get_patient(ID, "1")
        assert stored_state is not None
        assert stored_state.plan is not None
        assert (
            stored_state.plan.rationale == quoting
        )  # the state keeps the plan: the audit does not
        text = "\n".join(r.model_dump_json() for r in records)
        for value in (NAME, "Adaline", "Quenneville", PHONE, "555 014", BIRTH_DATE, "1961"):
            assert value not in text
        assert records[0].detail == (
            f"replay of dead-1; backend claude; rationale of {len(quoting)} characters"
        )
        assert f"skip reason of {len(skipped.skip_reason or '')} characters" in records[1].detail
    finally:
        rt.close()


# -- the hook on its own ------------------------------------------------------------------------


def item(patient_id: str = "1") -> WorkItem:
    return WorkItem(integration_id=ID, patient_id=patient_id, flush_id="f", dirty_since=NOW)


def test_the_hook_adds_nothing_for_an_item_audited_with_its_state():
    state = SqliteStateStore(":memory:")
    trail = AuditTrail(state)
    plan = WritePlan(patient_id="1")
    trail.after_item(Outcome(item(), "written", writes=1, plan=plan, audited=True), "ack", None)
    trail.after_item(Outcome(item(), "plan_skipped", plan=plan, audited=True), "ack", None)
    gone = Outcome(item(), "failed", error=PatientNotFound("patient 1 not found"), audited=True)
    trail.after_item(gone, "ack", "patient_not_found")
    assert state.list_audit(ID) == []


def test_the_hook_still_audits_skipped_and_waiting_items_with_short_error_texts():
    state = SqliteStateStore(":memory:")
    trail = AuditTrail(state)
    not_found = PatientNotFound("patient 2 not found in Healthie (deleted)")
    trail.after_item(Outcome(item("2"), "failed", error=not_found), "ack", "patient_not_found")
    refused = TargetRejected("warehouse refused table patients " + "x" * 400)
    trail.after_item(Outcome(item("3"), "failed", error=refused), "wait", "target_rejected")
    trail.after_item(Outcome(item("4"), "failed", error=refused), "nack", "target_rejected")
    trail.after_item(Outcome(item("5"), "failed", error=refused), "dead_letter", "fatal")
    trail.after_item(Outcome(item("6"), "failed"), "ack", "patient_busy")  # no error: no record
    records = state.list_audit(ID)
    assert [(r.patient_id, r.outcome) for r in records] == [
        ("2", "skipped:patient_not_found"),
        ("3", "waiting:target_rejected"),
    ]
    assert records[0].detail == "PatientNotFound: patient 2 not found in Healthie (deleted)"
    assert records[1].detail.startswith("TargetRejected: warehouse refused table patients")
    assert len(records[1].detail) == 300
