"""One worker per patient: a patient another worker holds is not processed, and a batch with
the same patient twice processes it once (``workers.middleware.PatientLeases``).

Fast, single-process unit tests of the lease property, so that ``test_property_breaks`` has a
target for it that no concurrent rewrite of the crash and lease suites can move."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

import workers.consumer as consumer
from app.core.models import WorkItem
from app.queue.topology import WORK_SUBSCRIPTION, WORK_TOPIC
from app.service.runtime import Runtime
from connectors.memory import MemoryConnector
from tests.helpers import demo_runtime
from workers.consumer import process_batch

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _healthie(request: httpx2.Request) -> httpx2.Response:
    variables = json.loads(request.content).get("variables") or {}
    data = {
        f"p{i}": {"id": variables[f"id{i}"], "first_name": "P", "active": True}
        for i in range(len(variables))
    }
    return httpx2.Response(200, json={"data": data})


@pytest.fixture
def runtime(tmp_path: Path) -> Any:
    rt = demo_runtime(tmp_path, http_transport=httpx2.MockTransport(_healthie))
    yield rt
    rt.close()


def publish(runtime: Runtime, *patients: str) -> None:
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


def written(runtime: Runtime) -> list[str]:
    """The patients whose row the batch wrote, one entry per write call."""
    warehouse = runtime.connectors("demo-clinic")["warehouse"]
    assert isinstance(warehouse, MemoryConnector)
    return [key for operation, key in warehouse.calls if operation == "upsert_row"]


def test_a_patient_another_worker_holds_is_left_alone_and_handed_back(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer, "BUSY_RETRY_SECONDS", 0.0)  # visible again at once
    assert runtime.state.try_lease("patient:demo-clinic:1", "another-worker", 60)
    publish(runtime, "1", "2")
    counts = process_batch(runtime, runtime.queue.pull(WORK_SUBSCRIPTION, 10))
    assert written(runtime) == ["2"]
    assert runtime.state.get_patient("demo-clinic", "1") is None
    assert (counts.processed, counts.dead_lettered, counts.waiting) == (1, 0, 0)
    (again,) = runtime.queue.pull(WORK_SUBSCRIPTION, 10)  # not acked: it comes back
    assert WorkItem.model_validate_json(again.data).patient_id == "1"


def test_the_same_patient_twice_in_one_batch_is_processed_once(runtime: Runtime) -> None:
    publish(runtime, "1", "1", "2")
    process_batch(runtime, runtime.queue.pull(WORK_SUBSCRIPTION, 10))
    assert sorted(written(runtime)) == ["1", "2"]
