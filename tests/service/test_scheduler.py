"""The embedded scheduler's calendar, and that it fires flushes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from app.core.errors import FlushInProgress
from app.core.models import Cadence
from app.service.scheduler import EmbeddedScheduler, next_fire

T = datetime(2026, 11, 18, 10, 30, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(
    ("cadence", "expected"),
    [
        (Cadence.HOURLY, datetime(2026, 11, 18, 11, 0, tzinfo=UTC)),
        (Cadence.EVERY_6_HOURS, datetime(2026, 11, 18, 12, 0, tzinfo=UTC)),
        (Cadence.DAILY, datetime(2026, 11, 19, 3, 0, tzinfo=UTC)),
        (Cadence.WEEKLY, datetime(2026, 11, 23, 4, 0, tzinfo=UTC)),
    ],
)
def test_next_fire(cadence, expected):
    assert next_fire(cadence, T) == expected
    assert next_fire(cadence, expected - timedelta(microseconds=1)) == expected
    assert next_fire(cadence, expected) > expected  # strictly after


def test_every_six_hours_and_weekly_boundaries():
    assert next_fire(Cadence.EVERY_6_HOURS, datetime(2026, 11, 18, 23, 59, tzinfo=UTC)) == datetime(
        2026, 11, 19, 0, 0, tzinfo=UTC
    )
    monday_early = datetime(2026, 11, 23, 3, 59, tzinfo=UTC)
    assert next_fire(Cadence.WEEKLY, monday_early) == datetime(2026, 11, 23, 4, 0, tzinfo=UTC)


def test_scheduler_fires_due_cadences_in_order_and_survives_failures():
    # A clock that jumps to each due instant, so the test runs instantly.
    now = [datetime(2026, 11, 18, 22, 30, tzinfo=UTC)]
    fired: list[Cadence] = []
    done = threading.Event()

    def fire(cadence: Cadence) -> None:
        fired.append(cadence)
        if len(fired) == 4:
            done.set()
        if cadence is Cadence.EVERY_6_HOURS:
            raise RuntimeError("a failed flush")

    def sleep(seconds: float) -> bool:
        now[0] = now[0] + timedelta(seconds=seconds)
        return done.is_set()

    scheduler = EmbeddedScheduler(fire, clock=lambda: now[0], sleep=sleep)
    scheduler.start()
    assert done.wait(5)
    scheduler.stop()
    # 23:00 hourly, then 00:00 both hourly and every 6 hours (hourly first: min() is stable),
    # the failing 6-hour flush does not stop the 01:00 hourly one.
    assert fired[:4] == [Cadence.HOURLY, Cadence.HOURLY, Cadence.EVERY_6_HOURS, Cadence.HOURLY]
    assert [at.hour for _, at in scheduler.fired[:4]] == [23, 0, 0, 1]


def test_worker_loop_processes_until_stopped(tmp_path):
    import time

    import httpx2

    from tests.helpers import demo_runtime
    from tests.workers.test_workers import FakeHealthie, work
    from workers.loop import WorkerLoop

    rt = demo_runtime(tmp_path, http_transport=httpx2.MockTransport(FakeHealthie()))
    loop = WorkerLoop(rt, concurrency=2)
    loop.start()
    work(rt, "1", "2", "3")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and rt.state.get_patient("demo-clinic", "3") is None:
        time.sleep(0.05)
    loop.stop()
    assert all(rt.state.get_patient("demo-clinic", p) for p in ("1", "2", "3"))
    rt.close()


def run_until(scheduler: EmbeddedScheduler, fired: list, count: int) -> None:
    scheduler.start()
    deadline = threading.Event()
    for _ in range(500):
        if len(fired) >= count or deadline.wait(0.01):
            break
    scheduler.stop()


def fake_time(start: datetime, enough: Callable[[], bool]):
    """A clock and a sleep that jumps it, so the schedule runs instantly."""
    now = [start]

    def sleep(seconds: float) -> bool:
        now[0] = now[0] + timedelta(seconds=seconds)
        return enough()

    return (lambda: now[0]), sleep


def test_a_refused_flush_is_retried_after_the_lease_horizon_not_the_next_slot():
    """A cadence whose flush got FlushInProgress (a crashed flush's lease) runs again
    ``retry_seconds`` later; once it ran, the calendar goes on as before."""
    fired: list[datetime] = []
    clock, sleep = fake_time(datetime(2026, 11, 18, 2, 59, tzinfo=UTC), lambda: len(fired) >= 4)

    def fire(cadence: Cadence) -> None:
        fired.append(clock())
        if len(fired) <= 2:
            raise FlushInProgress("a daily flush is already running")

    scheduler = EmbeddedScheduler(
        fire, cadences=(Cadence.DAILY,), clock=clock, sleep=sleep, retry_seconds=16
    )
    run_until(scheduler, fired, 4)
    three = datetime(2026, 11, 18, 3, 0, tzinfo=UTC)
    assert fired[:4] == [
        three,
        three + timedelta(seconds=16),
        three + timedelta(seconds=32),  # refused twice, ran the third time
        three + timedelta(days=1),  # and the next day's slot is untouched
    ]


def test_retries_of_a_refused_flush_end_at_its_next_instant():
    """Refused every time: retried until the next instant, which then fires once (no retry
    and calendar fire at the same moment, never two at once); other failures are not
    retried."""
    fired: list[tuple[Cadence, datetime]] = []
    clock, sleep = fake_time(datetime(2026, 11, 18, 10, 30, tzinfo=UTC), lambda: len(fired) >= 6)
    running = threading.Lock()

    def fire(cadence: Cadence) -> None:
        assert running.acquire(blocking=False), "two fires at once"
        try:
            fired.append((cadence, clock()))
            if cadence is Cadence.HOURLY:
                raise FlushInProgress("held")
            raise RuntimeError("a failed flush")
        finally:
            running.release()

    scheduler = EmbeddedScheduler(
        fire,
        cadences=(Cadence.HOURLY, Cadence.EVERY_6_HOURS),
        clock=clock,
        sleep=sleep,
        retry_seconds=25 * 60,
    )
    run_until(scheduler, fired, 6)
    at = [(c.value, t.strftime("%H:%M")) for c, t in fired[:6]]
    assert at == [
        ("hourly", "11:00"),
        ("hourly", "11:25"),
        ("hourly", "11:50"),
        ("hourly", "12:00"),  # the calendar instant, not a retry at 12:15
        ("every_6_hours", "12:00"),  # failed for another reason: not retried
        ("hourly", "12:25"),
    ]
