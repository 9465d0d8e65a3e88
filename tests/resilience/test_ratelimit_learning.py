"""The token bucket learns an upstream's lower limit from its refusals and stays under it:
simulated on a fake clock, an upstream counting accepted requests in a window refuses the
rest, and the client is configured far above it (Healthie's 250/s)."""

from __future__ import annotations

from collections import deque

import pytest

from app.resilience.ratelimit import TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Upstream:
    """Accepts at most ``limit`` requests in any ``window`` seconds (refused ones not counted,
    like the sandbox and Healthie's TOO_MANY_REQUESTS)."""

    def __init__(self, t: FakeTime, limit: int, window: float = 1.0) -> None:
        self.t, self.limit, self.window = t, limit, window
        self.accepted: deque[float] = deque()

    def answer(self) -> bool:
        now = self.t.now
        while self.accepted and now - self.accepted[0] >= self.window:
            self.accepted.popleft()
        if len(self.accepted) >= self.limit:
            return False
        self.accepted.append(now)
        return True


def run(bucket: TokenBucket, upstream: Upstream, t: FakeTime, n: int) -> list[tuple[float, bool]]:
    """``n`` requests, each refusal throttling the bucket for 1 s (Healthie's first pause)."""
    out = []
    for _ in range(n):
        bucket.acquire()
        ok = upstream.answer()
        out.append((t.now, ok))
        if not ok:
            bucket.throttle(1.0)
    return out


@pytest.mark.parametrize("limit", [1, 5, 15, 100])
def test_a_lower_limit_is_learned_then_never_exceeded(limit):
    t = FakeTime()
    bucket = TokenBucket(250, clock=t.clock, sleep=t.sleep)
    upstream = Upstream(t, limit)
    answers = run(bucket, upstream, t, limit * 40)
    refused = [i for i, (_, ok) in enumerate(answers) if not ok]
    assert len(refused) == 1  # one lesson: the refusal says how many the upstream took
    assert bucket.limit == limit
    steady = answers[refused[-1] + 1 :]
    assert all(ok for _, ok in steady)
    # and the learned rate is used, not undercut: the window guard costs about 10 %
    achieved = (len(steady) - 1) / (steady[-1][0] - steady[0][0])
    assert achieved >= 0.85 * limit


def test_an_upstream_counting_over_a_longer_window_is_still_converged_on():
    t = FakeTime()
    bucket = TokenBucket(250, hold=3600, clock=t.clock, sleep=t.sleep)
    upstream = Upstream(t, limit=20, window=5.0)  # 4/s on average, bursts counted over 5 s
    answers = run(bucket, upstream, t, 400)
    refused = [i for i, (_, ok) in enumerate(answers) if not ok]
    assert len(refused) <= 12  # each lesson lowers the rate by at least 10 % (or halves it)
    assert all(ok for _, ok in answers[refused[-1] + 1 :])
    assert bucket.current_rate() <= 4.0


def test_a_volley_of_refusals_sent_before_the_lesson_lowers_the_rate_once():
    t = FakeTime()
    bucket = TokenBucket(250, clock=t.clock, sleep=t.sleep)
    for _ in range(6):
        bucket.acquire()  # six sends in flight; the upstream took five
    bucket.throttle(1.0)  # the sixth is refused: five per second
    assert bucket.limit == 5
    bucket.throttle(1.0)  # a refusal of a request sent before that lesson: a pause, no lesson
    assert (bucket.limit, bucket.lessons, bucket.throttles) == (5, 1, 2)


def test_the_lesson_holds_then_one_probe_per_hold_finds_the_limit_again():
    t = FakeTime()
    bucket = TokenBucket(250, hold=60, recovery=10, clock=t.clock, sleep=t.sleep)
    upstream = Upstream(t, limit=5)
    answers = run(bucket, upstream, t, 5 * 200)  # about 220 s at 5/s: three hold periods
    refused = [now for now, ok in answers if not ok]
    assert 2 <= len(refused) <= 5  # the first lesson, then at most one probe per hold
    gaps = [b - a for a, b in zip(refused, refused[1:], strict=False)]
    assert all(gap >= 60 for gap in gaps)
    assert bucket.limit == 5


def test_configured_at_the_upstreams_limit_nothing_is_ever_refused():
    for limit in (1, 5, 15):
        t = FakeTime()
        bucket = TokenBucket(limit, clock=t.clock, sleep=t.sleep)
        answers = run(bucket, Upstream(t, limit), t, limit * 30)
        assert all(ok for _, ok in answers)
        assert bucket.lessons == 0
