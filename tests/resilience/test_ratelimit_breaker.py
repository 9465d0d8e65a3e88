"""Token bucket pacing (window guard, AIMD throttle) and the circuit breaker, on a fake clock."""

from __future__ import annotations

import pytest

from app.core.errors import CircuitOpen
from app.resilience.breaker import CircuitBreaker, State
from app.resilience.ratelimit import TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def bucket(rate: float, **kw) -> tuple[TokenBucket, FakeTime]:
    t = FakeTime()
    return TokenBucket(rate, clock=t.clock, sleep=t.sleep, **kw), t


def sends(b: TokenBucket, t: FakeTime, n: int) -> list[float]:
    times = []
    for _ in range(n):
        b.acquire()
        times.append(t.now)
    return times


def max_in_any_second(times: list[float]) -> int:
    return max(sum(1 for u in times if s <= u < s + 1.0) for s in times)


def state(cb: CircuitBreaker) -> State:
    """Read ``cb.state`` afresh: a bare ``cb.state == ...`` assert would let mypy narrow the
    property for the rest of the test, though every call on ``cb`` may change it."""
    return cb.state


@pytest.mark.parametrize(("rate", "burst"), [(10, None), (10, 10), (250, None), (3.5, 2)])
def test_never_more_than_rate_in_any_one_second_window(rate, burst):
    b, t = bucket(rate, burst=burst)
    times = sends(b, t, int(rate * 4) + 5)
    assert max_in_any_second(times) <= int(rate)
    # and not much slower than the rate: the window guard costs about 10 %
    assert len(times) / times[-1] >= rate * 0.8


def test_a_refusal_with_no_send_before_it_halves_the_rate_holds_then_recovers_linearly():
    b, t = bucket(100, hold=30, recovery=10)
    b.throttle(2.0)  # nothing sent in the second before: another client shares the key
    assert b.current_rate() == pytest.approx(50)
    times = sends(b, t, 1)
    assert times[0] >= 2.0  # everyone waited out the pause
    t.now = 29.0
    assert b.current_rate() == pytest.approx(50)  # the lesson holds
    t.now = 35.0
    assert b.current_rate() == pytest.approx(50 + 5 * 10)  # then climbs back
    t.now = 60.0
    assert b.current_rate() == 100
    sends(b, t, 1)
    b.throttle(0)
    b.throttle(0)  # the same request refused again teaches nothing new
    assert b.current_rate() == pytest.approx(50)
    for _ in range(10):
        t.now += 5.0  # alone in its second each time
        sends(b, t, 1)
        b.throttle(0)
    assert b.current_rate() == pytest.approx(b.min_rate) == 1.0
    assert b.lessons == 12


def test_pause_extends_and_never_shortens():
    b, t = bucket(100)
    b.pause(3)
    b.pause(1)
    assert sends(b, t, 1)[0] >= 3.0


def test_breaker_opens_at_threshold_and_half_opens_one_probe():
    t = FakeTime()
    cb = CircuitBreaker(threshold=2, cool_down=10, max_cool_down=30, clock=t.clock)
    cb.before_call()
    cb.record_failure()
    cb.record_success()  # success resets the streak
    cb.record_failure()
    assert state(cb) == "closed"
    cb.record_failure()
    assert state(cb) == "open"
    with pytest.raises(CircuitOpen) as caught:
        cb.before_call()
    assert caught.value.retry_after == pytest.approx(10)
    t.now = 10.0
    assert state(cb) == "half_open"
    cb.before_call()  # the probe
    with pytest.raises(CircuitOpen):
        cb.before_call()  # everyone else still fails fast while it is in flight
    cb.record_failure()  # probe failed: open again, twice as long
    with pytest.raises(CircuitOpen) as caught:
        cb.before_call()
    assert caught.value.retry_after == pytest.approx(20)
    t.now = 30.0
    cb.before_call()
    cb.record_success()
    assert state(cb) == "closed"
    assert cb.opened == 2


def test_breaker_release_frees_the_probe_slot():
    t = FakeTime()
    cb = CircuitBreaker(threshold=1, cool_down=1, clock=t.clock)
    cb.record_failure()
    t.now = 1.0
    cb.before_call()
    cb.release()  # the probe died locally; another caller may probe
    cb.before_call()
