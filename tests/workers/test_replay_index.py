"""Inspection never changes anything, and the dead-letter index heals when it drifts.

On both backends (``tests.backends``): listing the dead-letter queue (and previewing a replay)
twice leaves every message's delivery count unchanged and none hidden; a listing that crashes
hides nothing; a dead letter whose index write failed, or that the queue forwarded by itself,
is still replayable and is listed again after ``reindex``.

Pub/Sub counts deliveries only on a subscription with a dead-letter policy, so these tests give
``work-dlq`` one before the engine's topology is ensured (an existing subscription keeps its
settings): then the emulator counts every lease a listing would take.
"""

from __future__ import annotations

import time

import httpx2
import pytest

from app.core.errors import UpstreamUnavailable
from app.queue.base import Message, Queue, SubscriptionSpec
from app.queue.topology import (
    WORK_DLQ_SUBSCRIPTION,
    WORK_DLQ_TOPIC,
    WORK_SUBSCRIPTION,
    ensure_topology,
)
from tests.backends import (  # noqa: F401 - the fixtures
    backend_fixture,
    firestore_emulator,
    pubsub_emulator,
)
from tests.helpers import demo_runtime
from tests.workers.test_replay import _fail_writes
from tests.workers.test_workers import FakeHealthie, work
from workers.consumer import drain
from workers.deadletters import reindex
from workers.replay import ReplayFilter, list_dead_letters, replay

SINK = "work-dlq-sink"


def _counted_queue(backend) -> Queue:
    """The backend's queue with a ``work-dlq`` subscription that counts deliveries."""
    queue = backend._open_queue()  # before ensure_topology, which would create work-dlq plain
    backend._opened.append(queue)
    queue.ensure_topic(WORK_DLQ_TOPIC)
    queue.ensure_topic(SINK)
    queue.ensure_subscription(
        SubscriptionSpec(
            name=WORK_DLQ_SUBSCRIPTION,
            topic=WORK_DLQ_TOPIC,
            max_delivery_attempts=100,
            dead_letter_topic=SINK,
        )
    )
    ensure_topology(queue)
    return queue


@pytest.fixture
def fake():
    return FakeHealthie()


@pytest.fixture
def runtime(tmp_path, fake, backend):
    rt = demo_runtime(
        tmp_path,
        http_transport=httpx2.MockTransport(fake),
        queue=_counted_queue(backend),
        state=backend.make_state(),
    )
    yield rt
    rt.close()


def _visible(queue: Queue, subscription: str, n: int, wait: float = 3.0) -> list[Message]:
    """Pull until ``n`` messages came or ``wait`` seconds passed (then give them all back)."""
    got: list[Message] = []
    deadline = time.monotonic() + wait
    while len(got) < n and time.monotonic() < deadline:
        got.extend(queue.pull(subscription, n - len(got)))
    if got:
        queue.nack(subscription, [m.ack_id for m in got])
    return got


def test_listing_twice_leaves_every_delivery_count_unchanged(runtime, monkeypatch):
    _fail_writes(runtime, monkeypatch)
    work(runtime, "1", "2", "3")
    assert drain(runtime).dead_lettered == 3
    for _ in range(2):
        assert sorted(d.patient_id for d in list_dead_letters(runtime.state)) == ["1", "2", "3"]
        preview = replay(runtime, ReplayFilter())
        assert (len(preview.selected), preview.scanned, preview.replayed) == (3, 0, 0)
    messages = _visible(runtime.queue, WORK_DLQ_SUBSCRIPTION, 3)
    # All three visible at once (none leased) and delivered now for the first time.
    assert sorted(m.delivery_attempt for m in messages) == [1, 1, 1]


def test_a_listing_that_crashes_hides_nothing(runtime, monkeypatch):
    _fail_writes(runtime, monkeypatch)
    work(runtime, "1", "2", "3")
    assert drain(runtime).dead_lettered == 3
    seen = []

    def dies_on_the_second(self, dead):
        seen.append(dead.message_id)
        if len(seen) == 2:
            raise RuntimeError("the listing process died")
        return True

    monkeypatch.setattr(ReplayFilter, "matches", dies_on_the_second)
    with pytest.raises(RuntimeError):
        list_dead_letters(runtime.state)
    seen.clear()
    with pytest.raises(RuntimeError):
        replay(runtime, ReplayFilter())  # the preview
    monkeypatch.undo()
    assert len(_visible(runtime.queue, WORK_DLQ_SUBSCRIPTION, 3)) == 3


def test_a_dead_letter_whose_index_write_failed_is_replayable_and_reindexed(runtime, monkeypatch):
    _fail_writes(runtime, monkeypatch)
    state = runtime.state
    indexed = state.put_dead_letter

    def index_down_for_patient_2(dead):
        if dead.patient_id == "2":
            raise UpstreamUnavailable("state store unavailable")
        indexed(dead)

    monkeypatch.setattr(state, "put_dead_letter", index_down_for_patient_2)
    work(runtime, "1", "2")
    assert drain(runtime).dead_lettered == 2  # dead-lettered and acked all the same
    monkeypatch.setattr(state, "put_dead_letter", indexed)
    assert [d.patient_id for d in list_dead_letters(state)] == ["1"]

    # A replay scans the queue: it meets the unindexed one and indexes it on the way.
    report = replay(runtime, ReplayFilter(patient_id="1"), preview=False, rate_per_second=0)
    assert (report.replayed, report.indexed) == (1, 1)
    assert [d.patient_id for d in list_dead_letters(state)] == ["2"]
    assert reindex(runtime.queue, state).indexed == 0  # nothing left to repair
    monkeypatch.undo()  # the warehouse accepts writes again
    assert replay(runtime, ReplayFilter(patient_id="2"), preview=False, rate_per_second=0).replayed
    assert drain(runtime).dead_lettered == 0
    assert list_dead_letters(state) == []


def test_dead_letters_the_queue_forwarded_itself_are_listed_after_reindex(runtime, backend):
    """A worker that dies on an item every time never dead-letters it: the queue does."""
    work(runtime, "1")
    forwarded = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not forwarded:
        for message in runtime.queue.pull(WORK_SUBSCRIPTION, 10):
            runtime.queue.nack(WORK_SUBSCRIPTION, [message.ack_id])  # the worker "died"
        report = reindex(runtime.queue, runtime.state)
        forwarded = report.indexed == 1
    assert forwarded
    (dead,) = list_dead_letters(runtime.state)
    assert (dead.patient_id, dead.error_kind, dead.has_plan) == ("1", "max_attempts", False)
    assert dead.delivery_attempt >= backend.min_delivery_attempts
    (item,) = replay(runtime, ReplayFilter()).selected
    assert item.decision == "decide_again"
