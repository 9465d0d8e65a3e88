"""Crash safety: a worker killed between agent and write, or between write and ack, and a
flusher killed between publish and ack. In every case, after a restart on the same durable
queue, state and target, each dirty patient is written exactly once (one row, upserts keyed by
patient id) and none is left unprocessed.

A kill is simulated by raising a BaseException the engine never catches (as a dying process
would not ack, nack or record anything); the restart builds a new runtime on the same queue
and state once the dead process's leases have expired. Every test runs on both backends
(``tests.backends``): SQLite queue and state, and Pub/Sub + Firestore on their emulators, where
the shortest lease is 10 s. The target is a SQLite file (``warehouse.db``) in both cases: it is
the target, not the backend under test.

Unlike a dying process, the BaseException still runs ``finally`` blocks, so the flush and patient
leases in the state store are released. A real crash leaves them to expire: patient leases
with the work lease, the flush lease only after ``workers.flusher.LEASE_TTL_SECONDS``.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime

import httpx2
import pytest

from app.core.config import TargetConfig, load_integration
from app.core.models import Cadence, DirtyMark, SubjectKind
from app.queue.topology import DIRTY_TOPIC, WORK_SUBSCRIPTION, dirty_subscription
from app.secrets.stores import MemorySecretStore
from app.service.runtime import Runtime
from tests.backends import (  # noqa: F401 - the fixtures
    Backend,
    backend_fixture,
    firestore_emulator,
    pubsub_emulator,
)
from tests.helpers import REPO
from tests.workers.test_workers import FakeHealthie
from workers.consumer import drain
from workers.flusher import FlushResult, flush

PATIENTS = ["1", "2", "3", "4", "5"]


class Killed(BaseException):
    """The process died here."""


def start(tmp_path, fake, backend: Backend) -> Runtime:
    """A runtime on the backend's durable queue and state (a 'process' of the engine), with
    the shortest leases the backend honours."""
    integration = load_integration(REPO / "config" / "integrations" / "demo-clinic.toml")
    integration = integration.model_copy(
        update={
            "healthie": integration.healthie.model_copy(
                update={"api_url": "http://h.test/graphql"}
            ),
            "targets": [
                TargetConfig(
                    name="warehouse",
                    connector="sqlite",
                    options={"path": str(tmp_path / "warehouse.db")},
                )
            ],
        }
    )
    settings = backend.settings(tmp_path)
    return Runtime(
        settings=settings,
        integrations={integration.id: integration},
        secrets=MemorySecretStore(
            {integration.healthie.api_key_secret: "k", integration.healthie.webhook_secrets[0]: "s"}
        ),
        queue=backend.make_queue(settings),
        state=backend.make_state(),
        http_transport=httpx2.MockTransport(fake),
    )


def mark_all(runtime: Runtime) -> None:
    now = datetime.now(UTC)
    runtime.queue.publish_many(
        DIRTY_TOPIC,
        [
            (
                DirtyMark(
                    integration_id="demo-clinic",
                    subject_kind=SubjectKind.PATIENT,
                    subject_id=p,
                    reason="patient.updated",
                    received_at=now,
                )
                .model_dump_json()
                .encode(),
                {"integration": "demo-clinic", "cadence": "daily"},
            )
            for p in PATIENTS
        ],
    )


def patient_rows(tmp_path) -> list[tuple[str, int]]:
    with sqlite3.connect(tmp_path / "warehouse.db") as db:
        exists = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'patients'").fetchone()
        if not exists:  # nothing was ever written: the table is created with the first row
            return []
        return db.execute("SELECT key, COUNT(*) FROM patients GROUP BY key ORDER BY key").fetchall()


def restart_and_finish(
    tmp_path, fake, backend: Backend, old: Runtime, killed_at: float
) -> tuple[Runtime, FlushResult]:
    """Close the dead process's runtime, wait until its leases (taken before ``killed_at``)
    have expired, then flush and drain on a new runtime over the same queue and state."""
    old.close()
    backend.wait_out_leases(killed_at)
    runtime = start(tmp_path, fake, backend)
    flushed = flush(runtime, Cadence.DAILY)
    drain(runtime)
    return runtime, flushed


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


def test_worker_killed_between_agent_and_write(tmp_path, fake, backend, monkeypatch):
    runtime = start(tmp_path, fake, backend)
    mark_all(runtime)
    flush(runtime, Cadence.DAILY)
    warehouse = runtime.connectors("demo-clinic")["warehouse"]
    original = warehouse.execute_batch

    def die_on_third(writes):
        if any(w.args.key == "3" for w in writes):
            raise Killed
        return original(writes)

    monkeypatch.setattr(warehouse, "execute_batch", die_on_third)
    with pytest.raises(Killed):
        drain(runtime)
    killed_at = time.monotonic()
    assert ("3", 1) not in patient_rows(tmp_path)
    monkeypatch.undo()
    runtime, _ = restart_and_finish(tmp_path, fake, backend, runtime, killed_at)
    assert_written_exactly_once(tmp_path, runtime)
    runtime.close()


def test_worker_killed_between_write_and_ack(tmp_path, fake, backend, monkeypatch):
    runtime = start(tmp_path, fake, backend)
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
    killed_at = time.monotonic()
    # The batch's rows were written together (one batch per target), none acknowledged.
    assert patient_rows(tmp_path) == [(p, 1) for p in PATIENTS]
    monkeypatch.undo()
    runtime, _ = restart_and_finish(tmp_path, fake, backend, runtime, killed_at)
    assert_written_exactly_once(tmp_path, runtime)
    runtime.close()


def test_flusher_killed_between_publish_and_ack(tmp_path, fake, backend, monkeypatch):
    runtime = start(tmp_path, fake, backend)
    mark_all(runtime)
    original_ack = runtime.queue.ack

    def die_on_dirty_ack(subscription, ack_ids):
        if subscription.startswith("dirty-"):
            raise Killed
        return original_ack(subscription, ack_ids)

    monkeypatch.setattr(runtime.queue, "ack", die_on_dirty_ack)
    with pytest.raises(Killed):
        flush(runtime, Cadence.DAILY)
    killed_at = time.monotonic()
    monkeypatch.undo()
    # The marks were staged before the kill but never acknowledged: they come back after
    # the lease, are staged again (merged with what was staged) and published once each.
    runtime, flushed = restart_and_finish(tmp_path, fake, backend, runtime, killed_at)
    assert (flushed.marks, flushed.work_items) == (len(PATIENTS), len(PATIENTS))
    assert_written_exactly_once(tmp_path, runtime)
    runtime.close()


def test_flusher_killed_while_publishing_work_loses_no_mark(tmp_path, fake, backend, monkeypatch):
    """Would fail if the flusher acknowledged marks before their work was published."""
    runtime = start(tmp_path, fake, backend)
    mark_all(runtime)

    def die(topic, messages):
        raise Killed

    monkeypatch.setattr(runtime.queue, "publish_many", die)
    with pytest.raises(Killed):
        flush(runtime, Cadence.DAILY)
    killed_at = time.monotonic()
    monkeypatch.undo()
    # The marks were acknowledged once staged; the staged patients are what survives.
    runtime, flushed = restart_and_finish(tmp_path, fake, backend, runtime, killed_at)
    assert (flushed.marks, flushed.work_items) == (0, len(PATIENTS))
    assert_written_exactly_once(tmp_path, runtime)
    runtime.close()
