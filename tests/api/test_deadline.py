"""app.api.deadline: store and queue failures become 503 with Retry-After, a call that misses
its deadline is answered 503 and finishes on its own, and overdue calls are bounded."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fastapi import HTTPException

from app.api import deadline
from app.core.errors import QueueUnavailable, StoreUnavailable, TargetRejected


def run(call, seconds: float = 5.0):
    return asyncio.run(deadline.within(call, "test call", seconds))


@pytest.mark.parametrize(
    ("error", "retry_after"),
    [
        (StoreUnavailable("database is locked", retry_after=7), "7"),
        (QueueUnavailable("publish not confirmed"), str(deadline.RETRY_AFTER_SECONDS)),
    ],
)
def test_store_and_queue_failures_are_503_with_retry_after(error, retry_after):
    def fail():
        raise error

    with pytest.raises(HTTPException) as caught:
        run(fail)
    assert caught.value.status_code == 503
    assert caught.value.headers == {"Retry-After": retry_after}


def test_other_failures_and_results_pass_through():
    def reject():
        raise TargetRejected("no")

    with pytest.raises(TargetRejected):
        run(reject)
    assert run(lambda: 42) == 42


def test_a_call_past_its_deadline_is_503_and_finishes_alone(monkeypatch):
    monkeypatch.setattr(deadline, "_overdue", 0)
    release, finished = threading.Event(), threading.Event()

    def blocked():
        release.wait(10)
        finished.set()

    with pytest.raises(HTTPException) as caught:
        run(blocked, seconds=0.1)
    assert caught.value.status_code == 503
    assert deadline._overdue == 1
    release.set()
    assert finished.wait(10)
    for _ in range(100):  # the thread settles the count just after the call returns
        if deadline._overdue == 0:
            break
        threading.Event().wait(0.01)
    assert deadline._overdue == 0


def test_too_many_overdue_calls_are_refused_without_running(monkeypatch):
    monkeypatch.setattr(deadline, "_overdue", deadline.MAX_OVERDUE)
    ran = threading.Event()
    with pytest.raises(HTTPException) as caught:
        run(ran.set)
    assert caught.value.status_code == 503
    assert not ran.is_set()


def test_a_call_that_started_in_time_is_awaited_however_long_it_runs(monkeypatch):
    # a flush that took its lease within the deadline (the store answered) is not a failure
    # because its backlog is long: POST /flush answers its counts, not 503
    monkeypatch.setattr(deadline, "_overdue", 0)
    started = threading.Event()

    def long_but_healthy():
        started.set()
        threading.Event().wait(0.5)  # five deadlines
        return "flushed"

    result = asyncio.run(deadline.within(long_but_healthy, "test call", 0.1, started=started))
    assert result == "flushed"
    assert deadline._overdue == 0


def test_a_call_that_never_started_is_503_even_when_it_could_start(monkeypatch):
    monkeypatch.setattr(deadline, "_overdue", 0)
    started, release = threading.Event(), threading.Event()

    def waits_for_the_store():
        release.wait(10)  # the lease is never taken within the deadline
        started.set()

    with pytest.raises(HTTPException) as caught:
        asyncio.run(deadline.within(waits_for_the_store, "test call", 0.1, started=started))
    assert caught.value.status_code == 503
    release.set()
