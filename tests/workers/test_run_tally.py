"""The hooks that keep runs and patients in order, called directly over a real SQLite store:
``RunTally`` stores each patient's outcome once per run, before the queue hears of the item
(``before_settle``), so a worker killed after its acks loses no counts and an item redelivered
after a kill before them counts once; ``PatientLeases`` takes, renews and releases a batch's
patient leases in one state call each.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from app.core.errors import PatientNotFound, StoreUnavailable
from app.core.models import Cadence, Counts, RunRecord, WorkItem
from app.state.base import StateStore
from app.state.sqlite import SqliteStateStore
from workers.middleware import PatientLeases, RunTally
from workers.pipeline import Outcome

NOW = datetime(2026, 11, 1, tzinfo=UTC)
ID = "clinic-a"
RUN = f"f-{ID}"  # the run of flush "f" (``RunTally`` names runs as the flusher does)


def item(patient_id: str, flush_id: str = "f") -> WorkItem:
    return WorkItem(integration_id=ID, patient_id=patient_id, flush_id=flush_id, dirty_since=NOW)


def written(patient_id: str, writes: int = 1) -> Outcome:
    return Outcome(item(patient_id), "written", writes=writes)


def stored_run(state: StateStore) -> RunRecord:
    (run,) = [r for r in state.list_runs(ID) if r.run_id == RUN]
    return run


@pytest.fixture
def state(tmp_path) -> Any:
    store = SqliteStateStore(tmp_path / "state.db")
    store.save_run(
        RunRecord(
            run_id=RUN,
            integration_id=ID,
            cadence=Cadence.DAILY,
            started_at=NOW,
            status="published",
            patients=3,
        )
    )
    yield store
    store.close()


def test_outcomes_stored_before_the_acks_survive_a_kill_and_count_once_redelivered(state):
    # A worker settles patients 1 and 2 and stores their outcomes before acking them; then it
    # is killed (no after_batch, whatever it still held is gone) before one of the acks.
    killed = RunTally(state)
    killed.after_item(written("1", writes=2), "ack", None)
    killed.after_item(written("2"), "ack", None)
    killed.before_settle()
    assert stored_run(state).counts == Counts(processed=2, writes=3)

    # The restarted worker is handed both again (one redelivery each) and patient 3.
    restarted = RunTally(state)
    restarted.after_item(Outcome(item("1"), "unchanged"), "ack", None)
    restarted.after_item(written("2", writes=5), "ack", None)
    gone = Outcome(item("3"), "failed", error=PatientNotFound("patient 3 not found"))
    restarted.after_item(gone, "ack", "patient_not_found")
    restarted.before_settle()
    run = stored_run(state)
    assert run.counts == Counts(processed=2, writes=3, not_found=1)
    assert run.status == "finished"


def test_retries_are_added_every_time_and_never_finish_a_run(state):
    tally = RunTally(state)
    for _ in range(3):  # patient 1 nacked three times, then written
        tally.after_item(Outcome(item("1"), "failed"), "nack", "upstream_unavailable")
        tally.before_settle()
    tally.after_item(Outcome(item("2"), "failed"), "nack", "upstream_unavailable")
    tally.after_item(Outcome(item("3"), "failed"), "nack", "upstream_unavailable")
    tally.after_batch()
    assert (stored_run(state).counts, stored_run(state).status) == (Counts(retried=5), "published")
    tally.after_item(written("1"), "ack", None)
    tally.after_batch()
    assert stored_run(state).counts == Counts(retried=5, processed=1, writes=1)


def test_a_patient_settled_twice_before_a_flush_keeps_its_first_outcome(state):
    tally = RunTally(state)
    tally.after_item(written("1", writes=2), "ack", None)
    tally.after_item(Outcome(item("1"), "failed"), "dead_letter", "fatal")
    tally.after_item(written("2"), "ack", None)
    tally.after_item(Outcome(item("9", flush_id="other"), "unchanged"), "ack", None)  # no run
    tally.after_batch()
    assert stored_run(state).counts == Counts(processed=2, writes=3)
    tally.after_batch()  # nothing left to add
    assert stored_run(state).counts == Counts(processed=2, writes=3)


class Locked:
    """The real store, whose ``add_run_outcomes`` fails while ``failing``."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.failing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def add_run_outcomes(self, *args: Any, **kwargs: Any) -> None:
        if self.failing:
            raise StoreUnavailable("state store: locked")
        self.inner.add_run_outcomes(*args, **kwargs)


def test_outcomes_the_store_refused_are_kept_for_the_next_flush(state):
    locked = Locked(state)
    tally = RunTally(locked)
    tally.after_item(written("1"), "ack", None)
    tally.after_item(Outcome(item("2"), "failed"), "nack", "upstream_unavailable")
    with pytest.raises(StoreUnavailable):
        tally.before_settle()
    tally.after_item(Outcome(item("1"), "unchanged"), "ack", None)  # the first outcome stays
    tally.after_item(written("3", writes=4), "ack", None)
    locked.failing = False
    tally.after_batch()
    assert stored_run(state).counts == Counts(processed=2, writes=5, retried=1)


# -- patient leases ---------------------------------------------------------------------------


class CountingLeases:
    """The real store, counting its lease calls."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def try_lease_many(self, names: Sequence[str], owner: str, ttl: float) -> set[str]:
        self.calls.append("take")
        return self.inner.try_lease_many(names, owner, ttl)

    def release_lease_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        self.calls.append("release")
        self.inner.release_lease_many(pairs)


def test_a_batch_leases_each_free_patient_once_in_one_call_and_releases_them(state):
    store = CountingLeases(state)
    assert state.try_lease(f"patient:{ID}:2", "another-worker", 60)
    leases = PatientLeases(store, 60)
    batch = [item("1"), item("2"), item("3"), item("1"), item("4")]
    kept = leases.before_batch(batch)
    # 2 is busy; the second 1 comes back later (items are told apart by identity)
    assert [id(i) for i in kept] == [id(batch[0]), id(batch[2]), id(batch[4])]
    assert not state.try_lease(f"patient:{ID}:1", "another-worker", 60)
    leases.keep_alive()
    leases.after_batch()
    assert store.calls == ["take", "take", "release"]
    assert state.try_lease_many([f"patient:{ID}:{p}" for p in "134"], "another-worker", 60) == {
        f"patient:{ID}:{p}" for p in "134"
    }
    leases.after_batch()  # nothing held: no call
    assert store.calls == ["take", "take", "release"]


def test_keep_alive_renews_the_batch_leases_past_their_first_ttl(state):
    leases = PatientLeases(state, 0.3)
    leases.before_batch([item("1"), item("2")])
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:  # renewed every 0.1 s for 0.6 s
        time.sleep(0.1)
        leases.keep_alive()
        assert not state.try_lease(f"patient:{ID}:1", "another-worker", 60)
        assert not state.try_lease(f"patient:{ID}:2", "another-worker", 60)
    leases.after_batch()
    assert state.try_lease(f"patient:{ID}:1", "another-worker", 60)
