"""Recovery without waiting out leases: a worker or a flush killed with a real SIGKILL (a child
process; no ``finally`` runs, nothing is released) stops heartbeating, and a new process on the
same durable SQLite queue and state takes over its work within one heartbeat horizon, never
after the 600 s ack deadlines these tests configure. The redelivery is one delivery attempt,
nothing is dead-lettered, and a live holder keeps what it heartbeats.

Each test prints the figure it measured (``-s`` shows it): seconds from the kill to recovery.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx2
import pytest

from app.core.errors import StoreUnavailable
from app.core.models import Cadence, DirtyMark, SubjectKind
from app.queue.base import Message
from app.queue.sqlite import SqliteQueue
from app.queue.topology import (
    DIRTY_TOPIC,
    WORK_DLQ_SUBSCRIPTION,
    WORK_SUBSCRIPTION,
    dirty_subscription,
    ensure_topology,
)
from app.service.runtime import Runtime
from app.service.scheduler import EmbeddedScheduler
from app.state.sqlite import SqliteStateStore
from connectors.memory import MemoryConnector
from tests.helpers import demo_runtime
from tests.workers.test_workers import FakeHealthie, work
from workers.consumer import Consumer, drain
from workers.flusher import FlushResult, flush

ACK_DEADLINE = 600  # seconds: what recovery must not wait out (work and dirty marks)
HEARTBEAT = 10  # seconds: the shortest work_heartbeat_seconds the settings accept
FLUSH_LEASE = 3  # seconds: the shortest flush_lease_seconds the settings accept
PATIENTS = ("1", "2", "3", "4")
SLOW_LEASE = 1.0  # seconds the killed worker takes to lease or renew its patients
#: how long the new process may take: a few horizons, a fraction of the ack deadline
RECOVERY_BUDGET = 60.0


class RecordingQueue(SqliteQueue):
    """The embedded queue on a file, recording every work delivery (id, attempt)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.deliveries: list[tuple[str, int]] = []

    def pull(self, subscription: str, max_messages: int = 100) -> list[Message]:
        messages = super().pull(subscription, max_messages)
        if subscription == WORK_SUBSCRIPTION:
            self.deliveries += [(m.message_id, m.delivery_attempt) for m in messages]
        return messages


def open_runtime(data: Path, queue: SqliteQueue | None = None, **settings: Any) -> Runtime:
    """A runtime on the test's durable queue and state (the same files in every process)."""
    return demo_runtime(
        data,
        http_transport=httpx2.MockTransport(FakeHealthie()),
        queue=queue if queue is not None else SqliteQueue(data / "queue.db"),
        state=SqliteStateStore(data / "state.db"),
        work_ack_deadline_seconds=ACK_DEADLINE,
        dirty_ack_deadline_seconds=ACK_DEADLINE,
        work_heartbeat_seconds=HEARTBEAT,
        flush_lease_seconds=FLUSH_LEASE,
        **settings,
    )


def _block(ready: Any) -> Callable[..., Any]:
    def blocked(*_: object, **__: object) -> Any:
        ready.set()
        time.sleep(3600)  # held here until the parent's SIGKILL

    return blocked


def _work_then_hang(data: str, ready: Any) -> None:
    """Child: pull the work and hang in the write stage (holding the messages and the
    patients' leases, heartbeating them) until killed. Its patient leases are slow to take,
    like Firestore transactions (``SLOW_LEASE`` a beat), and ``ready`` is set right after the
    patients' second renewal, the child then lingering in the lease call: the parent's kill
    lands in the middle of a heartbeat, the worst moment (patients renewed, and whatever the
    beat renews after them not yet)."""
    runtime = open_runtime(Path(data))
    state = runtime.state
    taken: set[str] = set()
    renewed: list[str] = []

    def slowly(names: Sequence[str], take: Callable[[], Any]) -> Any:
        time.sleep(SLOW_LEASE * len(names) / len(PATIENTS))
        held = take()
        renewals = [n for n in names if n in taken]
        taken.update(names)
        renewed.extend(renewals)
        if renewals and len(renewed) >= len(PATIENTS) + len(PATIENTS) // 2:  # the 2nd beat
            ready.set()
            time.sleep(SLOW_LEASE)
        return held

    take_one = state.try_lease
    state.try_lease = lambda name, owner, ttl_seconds: slowly(  # type: ignore[method-assign]
        [name], lambda: take_one(name, owner, ttl_seconds)
    )
    take_many = getattr(state, "try_lease_many", None)
    if take_many is not None:  # the middleware leases a batch's patients in one call
        state.try_lease_many = lambda names, owner, ttl_seconds: slowly(  # type: ignore[method-assign]
            list(names), lambda: take_many(names, owner, ttl_seconds)
        )
    warehouse = cast(MemoryConnector, runtime.connectors("demo-clinic")["warehouse"])
    warehouse.execute_batch = _block(threading.Event())  # type: ignore[method-assign]
    drain(runtime, batch_size=len(PATIENTS))


def _flush_then_hang(data: str, ready: Any) -> None:
    """Child: start the daily flush and hang while staging (holding the flush lease and the
    pulled marks, heartbeating them) until killed."""
    runtime = open_runtime(Path(data))
    runtime.state.add_pending = _block(ready)  # type: ignore[method-assign]
    flush(runtime, Cadence.DAILY)


def run_child(target: Callable[[str, Any], None], data: Path, *, linger: float = 0.0) -> float:
    """Run ``target`` in a child process until it says it holds its leases, let it run
    ``linger`` seconds more, SIGKILL it; returns the ``time.monotonic()`` of the kill."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=target, args=(str(data), ready))
    child.start()
    try:
        assert ready.wait(60), "the child never reached its hold"
        time.sleep(linger)
        assert child.pid is not None
        assert child.is_alive()
        os.kill(child.pid, signal.SIGKILL)
        killed = time.monotonic()
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        return killed
    finally:
        if child.is_alive():
            child.kill()
            child.join(10)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    queue = SqliteQueue(tmp_path / "queue.db")
    ensure_topology(
        queue, work_ack_deadline_seconds=ACK_DEADLINE, dirty_ack_deadline_seconds=ACK_DEADLINE
    )
    queue.close()
    return tmp_path


def test_a_killed_workers_items_are_written_within_a_horizon_of_one_attempt(data, capsys):
    """Would fail if in-flight messages were extended by the full ack deadline (they would
    come back after 600 s), if patient leases outlived the messages (a longer ttl, messages
    leased no longer than the patients, or renewed after them: the items would be deferred as
    busy, spending attempts), or if a heartbeat counted as a delivery."""
    runtime = open_runtime(data)
    work(runtime, *PATIENTS)
    runtime.close()
    killed = run_child(_work_then_hang, data)

    queue = RecordingQueue(data / "queue.db")
    runtime = open_runtime(data, queue=queue)
    warehouse = cast(MemoryConnector, runtime.connectors("demo-clinic")["warehouse"])
    try:
        while (
            set(warehouse.table("patients")) != set(PATIENTS)
            and time.monotonic() - killed < RECOVERY_BUDGET
        ):
            drain(runtime, batch_size=len(PATIENTS), idle_timeout=0.2)
        recovered = time.monotonic() - killed
        assert set(warehouse.table("patients")) == set(PATIENTS)
        with capsys.disabled():
            print(f"\nwork recovered {recovered:.1f} s after SIGKILL (horizon {HEARTBEAT} s)")
        # each item delivered once more, as its second attempt: no busy deferrals, no renewals
        # counted; nothing dead-lettered, nothing left
        assert sorted(attempt for _, attempt in queue.deliveries) == [2] * len(PATIENTS)
        assert runtime.state.list_dead_letters() == []
        assert queue.depth(WORK_DLQ_SUBSCRIPTION) == 0
        assert queue.depth(WORK_SUBSCRIPTION) == 0
    finally:
        runtime.close()


def test_a_live_worker_keeps_its_items_for_many_horizons(tmp_path):
    """The other half: a batch that runs several horizons (a pending Message Batch) keeps its
    messages and patients while it heartbeats; a second worker gets nothing meanwhile. Would
    fail if the heartbeat stopped renewing (or renewed less often than its horizon)."""
    queue = RecordingQueue(tmp_path / "queue.db")
    ensure_topology(queue, work_ack_deadline_seconds=ACK_DEADLINE)
    runtime = open_runtime(tmp_path, queue=queue)
    warehouse = cast(MemoryConnector, runtime.connectors("demo-clinic")["warehouse"])
    original = warehouse.execute_batch
    horizon = 0.6  # seconds: below the settings' floor, through the Consumer directly
    writing = threading.Event()

    def slow(*args: Any, **kwargs: Any) -> Any:
        writing.set()
        time.sleep(6 * horizon)
        return original(*args, **kwargs)

    warehouse.execute_batch = slow  # type: ignore[method-assign]
    consumer = Consumer(
        queue,
        runtime.state,
        runtime.clients,
        max_attempts=5,
        lease_seconds=ACK_DEADLINE,
        heartbeat_seconds=horizon,
    )
    work(runtime, *PATIENTS)
    batch = threading.Thread(target=lambda: consumer.process_batch(queue.pull(WORK_SUBSCRIPTION)))
    batch.start()
    try:
        assert writing.wait(10)
        stolen: list[Message] = []
        while batch.is_alive():
            stolen += queue.pull(WORK_SUBSCRIPTION)
            time.sleep(horizon / 4)
        assert stolen == []
        assert set(warehouse.table("patients")) == set(PATIENTS)
        assert sorted(attempt for _, attempt in queue.deliveries) == [1] * len(PATIENTS)
        assert queue.depth(WORK_SUBSCRIPTION) == 0
    finally:
        batch.join(30)
        runtime.close()


def mark(patient: str) -> tuple[bytes, dict[str, str]]:
    body = DirtyMark(
        integration_id="demo-clinic",
        subject_kind=SubjectKind.PATIENT,
        subject_id=patient,
        reason="patient.updated",
        received_at=datetime.now(UTC),
    )
    return body.model_dump_json().encode(), {"integration": "demo-clinic", "cadence": "daily"}


def test_a_killed_flush_is_retried_by_the_scheduler_within_seconds(data, capsys):
    """A flush killed mid-staging holds the cadence's lease and a chunk of marks. The embedded
    scheduler's 03:00 fire is refused (FlushInProgress) and retried a lease horizon later,
    when the lease and the marks are free: every mark is staged and published the same
    minute, not the next day. Would fail with a long flush lease (the retries would be
    refused for 15 minutes, then the slot given up), or marks held to their ack deadline."""
    runtime = open_runtime(data)
    runtime.queue.publish_many(DIRTY_TOPIC, [mark(p) for p in PATIENTS])
    runtime.close()
    killed = run_child(_flush_then_hang, data, linger=1.5)  # past a renewal (FLUSH_LEASE / 3)

    runtime = open_runtime(data)
    results: list[FlushResult] = []
    done = threading.Event()

    def fire(cadence: Cadence) -> None:
        results.append(flush(runtime, cadence))
        done.set()

    # a calendar one second before 03:00, running in real time (the leases are real)
    zero, base = time.monotonic(), datetime(2026, 11, 18, 2, 59, 59, tzinfo=UTC)
    scheduler = EmbeddedScheduler(
        fire,
        cadences=(Cadence.DAILY,),
        clock=lambda: base + timedelta(seconds=time.monotonic() - zero),
        retry_seconds=FLUSH_LEASE + 1,
    )
    scheduler.start()
    try:
        assert done.wait(RECOVERY_BUDGET)
        recovered = time.monotonic() - killed
        with capsys.disabled():
            print(f"\nflush recovered {recovered:.1f} s after SIGKILL (lease {FLUSH_LEASE} s)")
        assert len(scheduler.fired) >= 2  # 03:00 refused, then a retry minutes before 03:01
        assert scheduler.fired[-1][1] < base + timedelta(minutes=1)
        (result,) = results
        assert (result.marks, result.work_items) == (len(PATIENTS), len(PATIENTS))
        assert runtime.queue.pull(dirty_subscription(Cadence.DAILY)) == []
    finally:
        scheduler.stop()
        runtime.close()


def test_a_flush_failing_mid_staging_gives_its_marks_back_at_once(tmp_path):
    """Would fail if a failed chunk's marks stayed leased (for the horizon, or the 600 s ack
    deadline) instead of being nacked with no delay; the lease is free at once as well."""
    queue = SqliteQueue(tmp_path / "queue.db")
    ensure_topology(queue, dirty_ack_deadline_seconds=ACK_DEADLINE)
    runtime = open_runtime(tmp_path, queue=queue)
    runtime.queue.publish_many(DIRTY_TOPIC, [mark(p) for p in PATIENTS])

    def refuse(*_: object) -> None:
        raise StoreUnavailable("state store is locked")

    runtime.state.add_pending = refuse  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(StoreUnavailable):
            flush(runtime, Cadence.DAILY)
        again = queue.pull(dirty_subscription(Cadence.DAILY))
        assert sorted(m.delivery_attempt for m in again) == [2] * len(PATIENTS)
        assert runtime.state.try_lease("flush:daily", "next-flush", 60)
    finally:
        runtime.close()
