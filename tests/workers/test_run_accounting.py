"""Run accounting: every patient of a run ends in exactly one outcome (processed, skipped
unchanged, not found, dead-lettered, waiting), the counts add up to the run's patients, a run is
``finished`` only once they do and its counts no longer change afterwards, and a run whose
flush failed says why. On both backends: SQLite, and Pub/Sub + Firestore on their emulators."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx2
import pytest

from app.core.models import Cadence, Counts, RunRecord, SubjectKind
from app.queue.topology import DIRTY_TOPIC
from app.state.base import StateStore
from tests.backends import (  # noqa: F401 - the fixtures
    Backend,
    backend_fixture,
    firestore_emulator,
    pubsub_emulator,
)
from tests.helpers import demo_runtime
from tests.workers.test_workers import FakeHealthie, mark
from workers.consumer import drain
from workers.flusher import Parts, flush, flush_parts

T0 = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def fake():
    return FakeHealthie()


@pytest.fixture
def runtime(tmp_path, fake, backend: Backend):
    settings = backend.settings(tmp_path, work_max_delivery_attempts=2)
    rt = demo_runtime(
        tmp_path,
        http_transport=httpx2.MockTransport(fake),
        queue=backend.make_queue(settings),
        state=backend.make_state(),
        work_max_delivery_attempts=2,
        work_ack_deadline_seconds=settings.work_ack_deadline_seconds,
    )
    yield rt
    rt.close()
    backend.close_all()


def dirty(rt, *patients: str) -> None:
    rt.queue.publish_many(DIRTY_TOPIC, [mark(SubjectKind.PATIENT, p) for p in patients])


def drain_all(rt, expected: int) -> Counts:
    """Drain until ``expected`` outcomes were counted (Pub/Sub's pull may come back empty
    while messages are on their way)."""
    total = Counts()
    for _ in range(20):
        total = total.add(drain(rt, idle_timeout=1.0))
        if total.outcomes() >= expected:
            break
    return total


def test_every_patient_ends_in_one_outcome_and_the_run_finishes_when_all_have(runtime, fake):
    dirty(runtime, "3")
    flush(runtime, Cadence.DAILY)
    drain_all(runtime, 1)
    fake.patients["5"]["id"] = "2"  # Healthie answers with another patient: plan refused
    dirty(runtime, "1", "2", "3", "5", "99")  # 3 unchanged since; 99 is not in Healthie
    result = flush(runtime, Cadence.DAILY)
    (published,) = result.runs
    stored = next(r for r in runtime.state.list_runs("demo-clinic") if r.run_id == published.run_id)
    assert (stored.status, stored.patients, stored.in_flight) == ("published", 5, 5)
    assert stored.finished_at is None

    drain_all(runtime, 5)
    run = next(r for r in runtime.state.list_runs("demo-clinic") if r.run_id == published.run_id)
    c = run.counts
    assert (c.processed, c.skipped_unchanged, c.not_found, c.dead_lettered, c.waiting) == (
        2,
        1,
        1,
        1,
        0,
    )
    assert c.outcomes() == run.patients == 5
    assert run.status == "finished"
    assert run.finished_at is not None
    assert run.in_flight == 0


def test_a_clinic_that_cannot_work_finishes_its_run_with_every_patient_waiting(runtime):
    integration = runtime.integrations["demo-clinic"]
    runtime.integrations["demo-clinic"] = integration.model_copy(
        update={"healthie": integration.healthie.model_copy(update={"api_key_secret": "gone"})}
    )
    dirty(runtime, "1", "2")
    (published,) = flush(runtime, Cadence.DAILY).runs
    drain_all(runtime, 2)
    run = next(r for r in runtime.state.list_runs("demo-clinic") if r.run_id == published.run_id)
    assert (run.status, run.counts.waiting, run.counts.dead_lettered) == ("finished", 2, 0)
    assert {p.patient_id for p in runtime.state.list_pending("demo-clinic")} == {"1", "2"}


def _run(**changes: object) -> RunRecord:
    fields: dict[str, object] = {
        "run_id": "r1",
        "integration_id": "clinic-a",
        "cadence": Cadence.DAILY,
        "started_at": T0,
    }
    return RunRecord.model_validate(fields | changes)


@pytest.fixture
def state(backend: Backend):
    store = backend.make_state()
    yield store
    backend.close_all()


def _stored(state: StateStore) -> RunRecord:
    (run,) = state.list_runs("clinic-a")
    return run


def test_counts_that_arrive_before_the_flusher_records_publishing_still_finish_it(state):
    # Workers may settle every item before the flusher saves "published": nothing is lost.
    state.save_run(_run())
    state.add_run_counts("clinic-a", "r1", Counts(processed=2, writes=4))
    state.add_run_counts("clinic-a", "r1", Counts(not_found=1))
    assert _stored(state).status == "running"  # not finished before it is published
    state.save_run(_run(status="published", patients=3, counts=Counts(dirty_patients=3)))
    run = _stored(state)
    assert run.status == "finished"
    assert (run.counts.processed, run.counts.writes, run.counts.not_found) == (2, 4, 1)
    assert run.counts.dirty_patients == 3


def test_a_run_is_finished_by_its_last_outcome_and_then_its_counts_are_final(state):
    state.save_run(_run(status="published", patients=3))
    state.add_run_counts("clinic-a", "r1", Counts(processed=1, writes=1))
    state.add_run_counts("clinic-a", "r1", Counts(retried=1))  # a retry is not an outcome
    assert _stored(state).status == "published"
    assert _stored(state).in_flight == 2
    state.add_run_counts("clinic-a", "r1", Counts(dead_lettered=1, waiting=1))
    finished = _stored(state)
    assert finished.status == "finished"
    assert finished.finished_at is not None
    # a late duplicate delivery, and the flusher's stale copy saved again, change nothing
    state.add_run_counts("clinic-a", "r1", Counts(processed=1, writes=1))
    state.save_run(_run(status="published", patients=3))
    assert _stored(state) == finished


def test_a_failed_flush_records_why_and_the_other_clinics_still_publish(runtime):
    other = runtime.integrations["demo-clinic"].model_copy(update={"id": "other-clinic"})
    runtime.integrations["other-clinic"] = other

    class Crashing:
        """The runtime's state store, except that reading demo-clinic's pending set fails
        with a bug whose text must not reach the run record."""

        def __init__(self, inner: StateStore) -> None:
            self._inner = inner

        def list_pending(self, integration_id, **kwargs):
            if integration_id == "demo-clinic":
                raise RuntimeError("some text that may hold anything")
            return self._inner.list_pending(integration_id, **kwargs)

        def __getattr__(self, name):
            return getattr(self._inner, name)

    state = Crashing(runtime.state)
    dirty(runtime, "1")
    runtime.queue.publish_many(
        DIRTY_TOPIC,
        [
            (data.replace(b'"demo-clinic"', b'"other-clinic"'), {**attrs})
            for data, attrs in [mark(SubjectKind.PATIENT, "2")]
        ],
    )
    parts = Parts(runtime.queue, state, runtime.integrations, runtime.healthie)
    result = flush_parts(parts, Cadence.DAILY)
    by_id = {r.integration_id: r for r in result.runs}
    assert by_id["demo-clinic"].status == "failed"
    assert by_id["demo-clinic"].error == "unexpected: RuntimeError"
    assert "demo-clinic" in result.failed
    assert (by_id["other-clinic"].status, by_id["other-clinic"].patients) == ("published", 1)
    stored = {r.integration_id: r for r in runtime.state.list_runs()}
    assert stored["demo-clinic"].status == "failed"
    assert stored["demo-clinic"].error == "unexpected: RuntimeError"
