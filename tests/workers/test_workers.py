"""Flush and process end to end against a fake Healthie (httpx2.MockTransport)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx2
import pytest

from app.core.models import Cadence, DirtyMark, SubjectKind, WorkItem
from app.queue.topology import DIRTY_TOPIC, WORK_DLQ_SUBSCRIPTION, WORK_SUBSCRIPTION, WORK_TOPIC
from tests.helpers import demo_runtime
from workers.consumer import drain
from workers.flusher import flush

NOW = datetime(2026, 11, 1, tzinfo=UTC)


class FakeHealthie:
    """Answers entry and appointment batches from a dict; scripted failures by status."""

    def __init__(self):
        self.patients = {
            str(i): {
                "id": str(i),
                "first_name": f"P{i}",
                "active": True,
                "active_tags": [],
                "appointments": [],
            }
            for i in range(1, 6)
        }
        self.appointments = {"900": ["1", "2"]}
        self.fail_status: int | None = None
        self.requests = 0
        self.swept: dict[str, list[dict]] = {"users": [], "appointments": [], "appliedTags": []}

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests += 1
        if self.fail_status:
            return httpx2.Response(self.fail_status, text="nope")
        body = json.loads(request.content)
        variables = body["variables"] or {}
        for root in ("users", "appointments", "appliedTags"):
            if body["query"].lstrip().startswith("query Sweep") and f"{root}(" in body["query"]:
                return httpx2.Response(
                    200,
                    json={
                        "data": {
                            root: {
                                "nodes": self.swept[root],
                                "page_info": {"has_next_page": False, "end_cursor": None},
                            }
                        }
                    },
                )
        data = {}
        for i in range(len(variables)):
            ident = variables[f"id{i}"]
            if "AppointmentPatients" in body["query"]:
                people = self.appointments.get(ident)
                data[f"a{i}"] = (
                    None
                    if people is None
                    else {
                        "id": ident,
                        "user": {"id": people[0]},
                        "attendees": [{"id": p} for p in people],
                    }
                )
            else:
                data[f"p{i}"] = self.patients.get(ident)
        return httpx2.Response(200, json={"data": data})


@pytest.fixture
def fake():
    return FakeHealthie()


@pytest.fixture
def runtime(tmp_path, fake):
    rt = demo_runtime(
        tmp_path, http_transport=httpx2.MockTransport(fake), work_max_delivery_attempts=2
    )
    yield rt
    rt.close()


def mark(kind: SubjectKind, subject: str) -> tuple[bytes, dict[str, str]]:
    m = DirtyMark(
        integration_id="demo-clinic",
        subject_kind=kind,
        subject_id=subject,
        reason="test",
        received_at=NOW,
    )
    return m.model_dump_json().encode(), {"integration": "demo-clinic", "cadence": "daily"}


def work(runtime, *patients: str) -> None:
    runtime.queue.publish_many(
        WORK_TOPIC,
        [
            (
                WorkItem(integration_id="demo-clinic", patient_id=p, flush_id="f", dirty_since=NOW)
                .model_dump_json()
                .encode(),
                {},
            )
            for p in patients
        ],
    )


def test_flush_resolves_dedupes_and_acks(runtime, fake):
    runtime.queue.publish_many(
        DIRTY_TOPIC,
        [
            mark(SubjectKind.PATIENT, "1"),
            mark(SubjectKind.PATIENT, "1"),
            mark(SubjectKind.APPOINTMENT, "900"),
            mark(SubjectKind.APPOINTMENT, "404"),
            mark(SubjectKind.PATIENT, "3"),
        ],
    )
    result = flush(runtime, Cadence.DAILY)
    assert (result.marks, result.work_items, result.unresolved_marks) == (5, 3, 1)
    items = [WorkItem.model_validate_json(m.data) for m in runtime.queue.pull(WORK_SUBSCRIPTION)]
    assert sorted(i.patient_id for i in items) == ["1", "2", "3"]
    assert flush(runtime, Cadence.DAILY).marks == 0  # marks were acknowledged
    assert [r.patients for r in runtime.state.list_runs("demo-clinic")] == [3]


def test_process_writes_then_skips_unchanged(runtime, fake):
    work(runtime, "1", "2", "3")
    counts = drain(runtime)
    assert (counts.processed, counts.skipped_unchanged, counts.writes) == (3, 0, 3)
    warehouse = runtime.connectors("demo-clinic")["warehouse"]
    assert warehouse.table("patients")["2"]["first_name"] == "P2"
    requests_before = fake.requests
    work(runtime, "1", "2", "3")
    again = drain(runtime)
    assert (again.processed, again.skipped_unchanged, again.writes) == (0, 3, 0)
    assert fake.requests - requests_before == 1  # three entries, one batched request
    fake.patients["2"]["first_name"] = "Changed"
    work(runtime, "1", "2")
    changed = drain(runtime)
    assert (changed.processed, changed.skipped_unchanged) == (1, 1)


def test_missing_patient_is_acked_and_audited(runtime):
    work(runtime, "77")
    counts = drain(runtime)
    assert (counts.processed, counts.dead_lettered) == (0, 0)
    assert runtime.queue.pull(WORK_SUBSCRIPTION) == []
    (audit,) = runtime.state.list_audit("demo-clinic", "77")
    assert audit.outcome == "skipped:patient_not_found"


def test_fatal_errors_dead_letter_with_reason(runtime, fake):
    fake.fail_status = 400
    work(runtime, "1")
    counts = drain(runtime)
    assert counts.dead_lettered == 1
    (dead,) = runtime.queue.pull(WORK_DLQ_SUBSCRIPTION)
    assert dead.attributes["error_kind"] == "invalid_response"
    assert WorkItem.model_validate_json(dead.data).patient_id == "1"


def test_retriable_errors_back_off_then_dead_letter(runtime, fake, monkeypatch):
    import workers.consumer as consumer
    from app.resilience.retry import RetryPolicy

    monkeypatch.setattr(consumer, "redelivery_delay", lambda attempt, retry_after: 0.0)
    monkeypatch.setattr(runtime.healthie("demo-clinic"), "retry", RetryPolicy(max_attempts=1))
    fake.fail_status = 503
    work(runtime, "1")
    first = drain(runtime)
    assert first.dead_lettered == 1  # attempt 1 nacked, attempt 2 (the max) dead-lettered
    (dead,) = runtime.queue.pull(WORK_DLQ_SUBSCRIPTION)
    assert dead.attributes["error_kind"] == "upstream_unavailable"
    assert dead.attributes["delivery_attempt"] == "2"


def test_invalid_plan_dead_letters_and_writes_nothing(runtime, fake):
    fake.patients["1"]["id"] = "2"  # Healthie answering with another patient's record
    work(runtime, "1")
    counts = drain(runtime)
    assert counts.dead_lettered == 1
    assert runtime.connectors("demo-clinic")["warehouse"].rows == {}
    (dead,) = runtime.queue.pull(WORK_DLQ_SUBSCRIPTION)
    assert dead.attributes["error_kind"] == "plan_invalid"


def test_run_record_collects_the_workers_counts(runtime, fake):
    runtime.queue.publish_many(DIRTY_TOPIC, [mark(SubjectKind.PATIENT, p) for p in "123"])
    flush(runtime, Cadence.DAILY)
    drain(runtime)
    (run,) = runtime.state.list_runs("demo-clinic")
    assert run.status == "finished"
    assert (run.counts.dirty_patients, run.counts.processed, run.counts.writes) == (3, 3, 3)
