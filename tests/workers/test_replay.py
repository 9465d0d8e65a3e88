"""Dead-letter listing and replay: filters, preview, provenance, stored-plan re-execution.

Listing and replay run on both backends (``tests.backends``): SQLite queue and state, and
Pub/Sub + Firestore on their emulators. The ``/ops`` endpoints are a thin layer over the same
functions and stay on the default in-memory SQLite runtime. What a listing must not change and
how the index heals are in ``test_replay_index.py``; replaying after a fix in
``test_replay_modes.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx2
import pytest

from app.queue.topology import WORK_DLQ_SUBSCRIPTION, WORK_SUBSCRIPTION
from tests.backends import (  # noqa: F401 - the fixtures
    backend_fixture,
    firestore_emulator,
    pubsub_emulator,
)
from tests.helpers import demo_runtime
from tests.workers.test_workers import FakeHealthie, work
from workers.consumer import drain
from workers.replay import ReplayFilter, list_dead_letters, replay


@pytest.fixture
def fake():
    return FakeHealthie()


@pytest.fixture
def runtime(tmp_path, fake, backend):
    rt = demo_runtime(
        tmp_path,
        http_transport=httpx2.MockTransport(fake),
        queue=backend.make_queue(),
        state=backend.make_state(),
    )
    yield rt
    rt.close()


def _fail_writes(runtime, monkeypatch):
    from app.core.errors import TargetRejected

    warehouse = runtime.connectors("demo-clinic")["warehouse"]

    def refuse(batch):
        raise TargetRejected("warehouse refused the row")

    monkeypatch.setattr(warehouse, "write_upsert_row", refuse)
    return warehouse


def test_failed_write_dead_letters_with_its_plan_and_replays_without_the_agent(
    runtime, fake, monkeypatch
):
    _fail_writes(runtime, monkeypatch)
    work(runtime, "1", "2")
    assert drain(runtime).dead_lettered == 2
    dead = list_dead_letters(runtime.state)
    assert sorted(d.patient_id for d in dead) == ["1", "2"]
    assert all(d.has_plan and d.error_kind == "target_rejected" for d in dead)
    assert all(d.rules_version and d.rules_version.startswith("rules:") for d in dead)
    assert len(list_dead_letters(runtime.state)) == 2  # listing changed nothing

    monkeypatch.undo()  # the warehouse accepts writes again
    agent = runtime.agent("demo-clinic")
    calls = []
    original = agent.decide

    def recording_decide(*a):
        calls.append(a)
        return original(*a)

    monkeypatch.setattr(agent, "decide", recording_decide)
    fake.patients["2"]["first_name"] = "Changed since"  # entry 2 changed: decide again

    preview = replay(runtime, ReplayFilter(integration_id="demo-clinic"), preview=True)
    assert (preview.replayed, preview.scanned, len(preview.selected)) == (0, 0, 2)
    decisions = {i.patient_id: (i.decision, i.why) for i in preview.selected}
    assert decisions == {
        "1": ("stored_plan", "rules and entry unchanged since the failure"),
        "2": ("decide_again", "the entry changed since the failure"),
    }
    report = replay(
        runtime, ReplayFilter(integration_id="demo-clinic"), preview=False, rate_per_second=0
    )
    assert (report.replayed, report.missing) == (2, [])
    assert list_dead_letters(runtime.state) == []  # replayed entries left the index
    assert runtime.queue.pull(WORK_DLQ_SUBSCRIPTION) == []
    if hasattr(runtime.queue, "depth"):  # SQLite can say what is held, leased or not
        assert runtime.queue.depth(WORK_DLQ_SUBSCRIPTION) == 0  # replayed ones were acked

    counts = drain(runtime)
    assert (counts.processed, counts.dead_lettered) == (2, 0)
    assert len(calls) == 1  # only the changed entry went back to the agent
    rows = runtime.connectors("demo-clinic")["warehouse"].table("patients")
    assert rows["2"]["first_name"] == "Changed since"
    audit = runtime.state.list_audit("demo-clinic", "1")
    assert audit[-1].detail.startswith("replay of ")


def test_filters_select_by_patient_kind_and_time(runtime, fake, monkeypatch):
    _fail_writes(runtime, monkeypatch)
    work(runtime, "1", "2", "3")
    drain(runtime)
    fake.fail_status = 400
    work(runtime, "4")
    drain(runtime)
    everything = list_dead_letters(runtime.state)
    assert len(everything) == 4
    assert [
        d.patient_id
        for d in list_dead_letters(runtime.state, ReplayFilter(error_kind="invalid_response"))
    ] == ["4"]
    assert [
        d.patient_id for d in list_dead_letters(runtime.state, ReplayFilter(patient_id="2"))
    ] == ["2"]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert list_dead_letters(runtime.state, ReplayFilter(since=future)) == []
    report = replay(runtime, ReplayFilter(patient_id="3"), preview=False, rate_per_second=0)
    assert report.replayed == 1
    assert sorted(d.patient_id for d in list_dead_letters(runtime.state)) == ["1", "2", "4"]
    (requeued,) = runtime.queue.pull(WORK_SUBSCRIPTION)
    assert requeued.attributes["replay_of"] == report.selected[0].message_id


def test_ops_endpoints_need_auth_and_replay(tmp_path, fake, monkeypatch):
    from fastapi.testclient import TestClient

    from app.api.app import create_app

    rt = demo_runtime(
        tmp_path, http_transport=httpx2.MockTransport(fake), flush_token="operator-token-123"
    )
    client = TestClient(create_app(rt))
    auth = {"Authorization": "Bearer operator-token-123"}
    assert client.get("/ops/runs").status_code == 401
    assert client.get("/ops/dead-letters").status_code == 401
    assert client.post("/ops/replay", json={}).status_code == 401
    fake.fail_status = 400
    work(rt, "1")
    drain(rt)
    (dead,) = client.get("/ops/dead-letters", headers=auth).json()
    assert (dead["patient_id"], dead["error_kind"]) == ("1", "invalid_response")
    preview = client.post("/ops/replay", json={"patient": "1"}, headers=auth).json()
    assert (preview["preview"], preview["replayed"], len(preview["selected"])) == (True, 0, 1)
    done = client.post(
        "/ops/replay",
        json={"patient": "1", "preview": False, "rate_per_second": 1000},
        headers=auth,
    ).json()
    assert done["replayed"] == 1
    assert client.get("/ops/runs", headers=auth).status_code == 200
    rt.close()


def test_queue_forwarded_dead_letters_show_attempts_and_time():
    """Dead letters the queue forwarded itself (no worker stamp) still list usefully."""
    from app.core.models import WorkItem
    from app.queue.base import Message
    from workers.deadletters import describe_message

    item = WorkItem(
        integration_id="demo-clinic", patient_id="7", flush_id="f", dirty_since=datetime.now(UTC)
    )
    published = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    for attrs in (
        {"dead_letter_delivery_attempts": "5"},
        {"CloudPubSubDeadLetterSourceDeliveryCount": "5"},
    ):
        dead, _ = describe_message(
            Message(
                message_id="m",
                data=item.model_dump_json().encode(),
                attributes=attrs,
                ack_id="a",
                delivery_attempt=1,
                publish_time=published,
            )
        )
        assert (dead.delivery_attempt, dead.dead_lettered_at) == (5, published)
        assert ReplayFilter(since=published - timedelta(minutes=1)).matches(dead)
