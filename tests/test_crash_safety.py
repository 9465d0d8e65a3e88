"""Crash safety: a worker killed between agent and write, or between write and ack, and a
flusher killed between publish and ack. In every case, after a restart on the same durable
queue, state and target, each dirty patient is written exactly once (one row, upserts keyed by
patient id) and none is left unprocessed.

A kill is simulated by raising a BaseException the engine never catches (as a dying process
would not ack, nack or record anything); the restart builds a new runtime on the same files.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime

import httpx2
import pytest

from app.config import TargetConfig, load_integration
from app.models import Cadence, DirtyMark, SubjectKind
from app.queue.sqlite import SqliteQueue
from app.queue.topology import (
    DIRTY_TOPIC,
    WORK_SUBSCRIPTION,
    dirty_subscription,
    ensure_topology_for,
)
from app.runtime import Runtime
from app.secrets import MemorySecretStore
from app.settings import Settings
from app.state.sqlite import SqliteStateStore
from tests.helpers import REPO
from tests.test_workers import FakeHealthie
from workers.flusher import flush
from workers.subscriber import drain

PATIENTS = ["1", "2", "3", "4", "5"]


class Killed(BaseException):
    """The process died here."""


def start(tmp_path, fake) -> Runtime:
    """A runtime on durable files in ``tmp_path`` (a 'process' of the engine)."""
    integration = load_integration(REPO / "config" / "integrations" / "demo-clinic.toml")
    integration = integration.model_copy(update={
        "healthie": integration.healthie.model_copy(update={"api_url": "http://h.test/graphql"}),
        "targets": [TargetConfig(name="warehouse", connector="sqlite",
                                 options={"path": str(tmp_path / "warehouse.db")})]})
    settings = Settings(data_dir=tmp_path, work_ack_deadline_seconds=1,
                        dirty_ack_deadline_seconds=1)
    queue = SqliteQueue(tmp_path / "queue.db")
    ensure_topology_for(queue, settings)
    return Runtime(settings=settings, integrations={integration.id: integration},
                   secrets=MemorySecretStore({integration.healthie.api_key_secret: "k",
                                              integration.healthie.webhook_secrets[0]: "s"}),
                   queue=queue, state=SqliteStateStore(tmp_path / "state.db"),
                   http_transport=httpx2.MockTransport(fake))


def mark_all(runtime: Runtime) -> None:
    now = datetime.now(UTC)
    runtime.queue.publish_many(DIRTY_TOPIC, [
        (DirtyMark(integration_id="demo-clinic", subject_kind=SubjectKind.PATIENT,
                   subject_id=p, reason="patient.updated", received_at=now)
         .model_dump_json().encode(), {"integration": "demo-clinic", "cadence": "daily"})
        for p in PATIENTS])


def patient_rows(tmp_path) -> list[tuple[str, int]]:
    with sqlite3.connect(tmp_path / "warehouse.db") as db:
        return db.execute(
            "SELECT key, COUNT(*) FROM patients GROUP BY key ORDER BY key").fetchall()


def restart_and_finish(tmp_path, fake, old: Runtime) -> Runtime:
    old.close()
    time.sleep(1.2)  # leases of the dead process expire
    runtime = start(tmp_path, fake)
    flush(runtime, Cadence.DAILY)
    drain(runtime)
    return runtime


@pytest.fixture
def fake():
    return FakeHealthie()


def assert_written_exactly_once(tmp_path, runtime: Runtime) -> None:
    assert patient_rows(tmp_path) == [(p, 1) for p in PATIENTS]
    for p in PATIENTS:
        state = runtime.state.get_patient("demo-clinic", p)
        assert state is not None
        assert state.outcome == "written"
    assert runtime.queue.pull(WORK_SUBSCRIPTION) == []
    assert runtime.queue.pull(dirty_subscription(Cadence.DAILY)) == []


def test_worker_killed_between_agent_and_write(tmp_path, fake, monkeypatch):
    runtime = start(tmp_path, fake)
    mark_all(runtime)
    flush(runtime, Cadence.DAILY)
    warehouse = runtime.connectors("demo-clinic")["warehouse"]
    original = warehouse.execute

    def die_on_third(operation, args):
        if args.key == "3":
            raise Killed
        return original(operation, args)

    monkeypatch.setattr(warehouse, "execute", die_on_third)
    with pytest.raises(Killed):
        drain(runtime)
    assert ("3", 1) not in patient_rows(tmp_path)
    monkeypatch.undo()
    runtime = restart_and_finish(tmp_path, fake, runtime)
    assert_written_exactly_once(tmp_path, runtime)
    runtime.close()


def test_worker_killed_between_write_and_ack(tmp_path, fake, monkeypatch):
    runtime = start(tmp_path, fake)
    mark_all(runtime)
    flush(runtime, Cadence.DAILY)
    original_ack = runtime.queue.ack

    def die_on_work_ack(subscription, ack_ids):
        if subscription == WORK_SUBSCRIPTION:
            raise Killed
        return original_ack(subscription, ack_ids)

    monkeypatch.setattr(runtime.queue, "ack", die_on_work_ack)
    with pytest.raises(Killed):
        drain(runtime)
    assert patient_rows(tmp_path)[0] == ("1", 1)  # written, never acknowledged
    monkeypatch.undo()
    runtime = restart_and_finish(tmp_path, fake, runtime)
    assert_written_exactly_once(tmp_path, runtime)
    runtime.close()


def test_flusher_killed_between_publish_and_ack(tmp_path, fake, monkeypatch):
    runtime = start(tmp_path, fake)
    mark_all(runtime)
    original_ack = runtime.queue.ack

    def die_on_dirty_ack(subscription, ack_ids):
        if subscription.startswith("dirty-"):
            raise Killed
        return original_ack(subscription, ack_ids)

    monkeypatch.setattr(runtime.queue, "ack", die_on_dirty_ack)
    with pytest.raises(Killed):
        flush(runtime, Cadence.DAILY)
    monkeypatch.undo()
    # The work items were published before the kill; the marks come back too. Both are
    # processed after the restart and the duplicates are recognized as unchanged.
    runtime = restart_and_finish(tmp_path, fake, runtime)
    assert_written_exactly_once(tmp_path, runtime)
    runtime.close()


def test_flusher_killed_while_publishing_work_loses_no_mark(tmp_path, fake, monkeypatch):
    """Would fail if the flusher acknowledged marks before their work was published."""
    runtime = start(tmp_path, fake)
    mark_all(runtime)

    def die(topic, messages):
        raise Killed

    monkeypatch.setattr(runtime.queue, "publish_many", die)
    with pytest.raises(Killed):
        flush(runtime, Cadence.DAILY)
    monkeypatch.undo()
    runtime = restart_and_finish(tmp_path, fake, runtime)
    assert_written_exactly_once(tmp_path, runtime)
    runtime.close()
