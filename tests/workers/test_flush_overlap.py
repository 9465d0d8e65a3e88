"""One flush per cadence at a time; one worker per patient at a time; a cadence change applies
from the next run; weekly marks staged daily wait in the state store, not in the queue."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime

import httpx2
import pytest
from fastapi.testclient import TestClient

import workers.consumer as subscriber
from app.api.app import create_app
from app.core.errors import FlushInProgress, StoreUnavailable
from app.core.models import Cadence, DirtyMark, SubjectKind
from app.queue.topology import DIRTY_TOPIC, WORK_SUBSCRIPTION, dirty_subscription
from tests.helpers import demo_runtime
from tests.workers.test_workers import FakeHealthie, work
from workers.consumer import drain
from workers.flusher import Parts, flush, flush_parts

LEASE = 3.0  # seconds: the flush lease's horizon in these tests


@pytest.fixture
def runtime(tmp_path):
    rt = demo_runtime(
        tmp_path,
        http_transport=httpx2.MockTransport(FakeHealthie()),
        flush_token="token-for-tests-1",
    )
    yield rt
    rt.close()


def mark(runtime, patient: str, cadence: str = "daily") -> None:
    runtime.queue.publish(
        DIRTY_TOPIC,
        DirtyMark(
            integration_id="demo-clinic",
            subject_kind=SubjectKind.PATIENT,
            subject_id=patient,
            reason="patient.updated",
            received_at=datetime.now(UTC),
        )
        .model_dump_json()
        .encode(),
        {"integration": "demo-clinic", "cadence": cadence},
    )


def test_a_second_flush_of_the_same_cadence_is_refused(runtime):
    assert runtime.state.try_lease("flush:daily", "someone-else", 60)
    with pytest.raises(FlushInProgress):
        flush(runtime, Cadence.DAILY)
    client = TestClient(create_app(runtime))
    response = client.post("/flush/daily", headers={"Authorization": "Bearer token-for-tests-1"})
    assert response.status_code == 409
    assert flush(runtime, Cadence.HOURLY).work_items == 0  # other cadences are not blocked
    runtime.state.release_lease("flush:daily", "someone-else")
    mark(runtime, "1")
    assert flush(runtime, Cadence.DAILY).work_items == 1


def test_many_marks_for_one_patient_make_one_work_item(runtime):
    for _ in range(50):
        mark(runtime, "1")
    mark(runtime, "2")
    result = flush(runtime, Cadence.DAILY)
    assert (result.marks, result.work_items) == (51, 2)
    assert runtime.state.list_pending("demo-clinic") == []


def test_two_workers_never_process_one_patient_at_once(runtime, monkeypatch):
    monkeypatch.setattr(subscriber, "BUSY_RETRY_SECONDS", 0.2)
    warehouse = runtime.connectors("demo-clinic")["warehouse"]
    original = warehouse.execute_batch
    active: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    lock = threading.Lock()

    def slow_execute(writes):
        patients = {w.scope.patient_id for w in writes}
        with lock:
            for p in patients:
                active[p] += 1
                peak[p] = max(peak[p], active[p])
        time.sleep(0.3)
        with lock:
            for p in patients:
                active[p] -= 1
        return original(writes)

    monkeypatch.setattr(warehouse, "execute_batch", slow_execute)
    for _ in range(3):
        work(runtime, "1")  # three items for one patient, e.g. from overlapping flushes

    def worker() -> None:
        drain(runtime, batch_size=1, idle_timeout=1.0)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert peak["1"] == 1
    assert runtime.queue.pull(WORK_SUBSCRIPTION) == []
    assert runtime.state.get_patient("demo-clinic", "1").outcome == "written"


def test_cadence_change_applies_from_the_next_run(runtime):
    mark(runtime, "1", cadence="daily")  # queued while the integration was daily
    integration = runtime.integrations["demo-clinic"]
    runtime.integrations["demo-clinic"] = integration.model_copy(update={"cadence": Cadence.HOURLY})
    daily = flush(runtime, Cadence.DAILY)
    assert (daily.marks, daily.work_items) == (1, 0)  # staged, not published: no longer daily
    hourly = flush(runtime, Cadence.HOURLY)
    assert hourly.work_items == 1
    assert drain(runtime).processed == 1


def test_weekly_marks_are_staged_daily_and_published_weekly(runtime):
    integration = runtime.integrations["demo-clinic"]
    runtime.integrations["demo-clinic"] = integration.model_copy(update={"cadence": Cadence.WEEKLY})
    mark(runtime, "1", cadence="weekly")
    staged = flush(runtime, Cadence.WEEKLY, stage_only=True)
    assert (staged.marks, staged.work_items) == (1, 0)
    assert runtime.queue.pull(dirty_subscription(Cadence.WEEKLY)) == []  # out of the queue
    assert [p.patient_id for p in runtime.state.list_pending("demo-clinic")] == ["1"]
    assert flush(runtime, Cadence.WEEKLY).work_items == 1


@pytest.mark.parametrize("renewal", ["taken_over", "unconfirmed"])
def test_a_flush_that_lost_its_lease_stops_before_publishing(runtime, monkeypatch, renewal):
    """The flush lease's heartbeat renews it every third of its horizon; when a renewal is
    refused (another flush took the lease over) or none is confirmed for a whole horizon (the
    state store unreachable: the lease may have lapsed), the flush stops with FlushInProgress
    and publishes nothing. Would fail if the flush ignored its heartbeat's verdict."""
    mark(runtime, "1")
    state = runtime.state
    take, stage = state.try_lease, state.add_pending
    calls: list[str] = []

    def try_lease(name: str, owner: str, ttl: float) -> bool:
        calls.append(name)
        if name == "flush:daily" and calls.count(name) > 1:
            if renewal == "taken_over":
                return False
            raise StoreUnavailable("state store unreachable")
        return take(name, owner, ttl)

    def slow_stage(*args: object) -> None:
        time.sleep(LEASE + 0.5)  # past several beats, and past a whole horizon
        stage(*args)

    monkeypatch.setattr(state, "try_lease", try_lease)
    monkeypatch.setattr(state, "add_pending", slow_stage)
    parts = Parts(runtime.queue, state, runtime.integrations, runtime.healthie, LEASE)
    with pytest.raises(FlushInProgress):
        flush_parts(parts, Cadence.DAILY)
    assert calls.count("flush:daily") >= 3  # the heartbeat tried, every third of the horizon
    assert runtime.queue.pull(WORK_SUBSCRIPTION) == []  # nothing published


def test_a_flush_running_past_its_lease_horizon_keeps_the_cadence(runtime, monkeypatch):
    """A flush staging for several horizons is never overtaken: its heartbeat renews the
    lease, so another flush of the cadence is refused the whole time, and it finishes. Would
    fail if the lease were only renewed between chunks, or not at all."""
    mark(runtime, "1")
    state = runtime.state
    stage = state.add_pending
    staging = threading.Event()
    refused: list[bool] = []

    def slow_stage(*args: object) -> None:
        staging.set()
        time.sleep(2.5 * LEASE)
        stage(*args)

    def other_flush() -> None:
        staging.wait(10)
        while staging.is_set():
            refused.append(not state.try_lease("flush:daily", "another-flush", 60))
            time.sleep(LEASE / 4)

    monkeypatch.setattr(state, "add_pending", slow_stage)
    rival = threading.Thread(target=other_flush)
    rival.start()
    try:
        parts = Parts(runtime.queue, state, runtime.integrations, runtime.healthie, LEASE)
        result = flush_parts(parts, Cadence.DAILY)
    finally:
        staging.clear()
        rival.join(10)
    assert result.work_items == 1
    assert len(refused) >= 8
    assert all(refused)
