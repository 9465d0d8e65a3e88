"""Pacing: a token bucket per credential, so one process never exceeds an upstream's rate.

``TokenBucket`` (Healthie allows about 250 requests/s per key and counts them in its own
window; connectors pass their vendors' published limits):

* tokens refill at the rate in force, with a small burst after idle periods (a tenth of a
  second's worth, scaled down with the rate);
* a sliding-window guard keeps the number of sends in any ``window`` seconds at or below the
  rate in force times one second. The window is 10 % longer than one second, so requests that
  arrive bunched up by jitter (network, a busy server loop) still fit the upstream's count: at
  1.05 s the Healthie benchmark still provoked one TOO_MANY_REQUESTS per 100 requests;
* ``throttle()`` (called on a rate-limit answer, in the thread that sent the refused request)
  pauses every caller and **learns the upstream's limit** from the answer: the upstream refused
  a request after accepting the sends of the second before it, so that count is what it allows
  per second. Counted are the sends from one second before the refused one until its answer,
  less those refused (concurrent requests reach the upstream in any order; each later refusal
  of that volley lowers the count again). The rate in force drops to that count, and by at
  least 10 % (for upstreams whose window is longer than a second), never below ``min_rate`` (1
  request/s unless the configured rate is lower). Refusals of requests sent before the last
  lesson refine it but start no new one, so a volley lowers the rate once.
* a learned limit holds for ``hold`` seconds without another rate-limit answer; then the rate
  climbs back linearly to the configured one over ``recovery`` seconds, so an upstream that
  raised its limit again (Healthie adjusts its limits to its load) is found. At steady state
  that costs at most one rate-limit answer per ``hold`` seconds.

Healthie documents no rate-limit headers (its guide: a ``TOO_MANY_REQUESTS`` GraphQL error,
no ``Retry-After``); an HTTP 429's ``Retry-After`` is the pause when an upstream sends one.

Buckets are shared per credential through ``app.resilience.guard.Guards``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]

#: The window the upstream is assumed to count in when a refusal is turned into a limit.
UPSTREAM_WINDOW = 1.0
#: Each lesson lowers the rate in force by at least this factor.
DECREASE = 0.9
#: How long send times are kept for learning (a refused request may have been slow to answer).
HISTORY = 30.0


class TokenBucket:
    """Blocks callers so that at most ``rate`` acquisitions happen per second, or fewer once an
    upstream's refusal has taught a lower limit (``limit``).

    ``burst`` tokens may be taken at once after an idle period. ``pause(seconds)`` stops all
    callers, for when the upstream says we went over anyway (its clock is the one that counts).
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        window: float = 1.1,
        hold: float = 300.0,
        recovery: float = 10.0,
        min_rate: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self.window = window
        self.hold = hold
        self.recovery = recovery
        self.min_rate = min_rate if min_rate is not None else min(rate, 1.0)
        self.throttles = 0
        self.lessons = 0  # refusals that lowered the limit
        self._clock, self._sleep = clock, sleep
        self._sent: deque[float] = deque()  # sends within ``window``: the guard
        self._history: deque[float] = deque()  # sends within ``HISTORY``: the lessons
        self._forgotten = 0  # sends dropped from the history (its first one's number)
        self._tokens = self.burst
        self._updated = clock()
        self._paused_until = 0.0
        self._limit = rate  # the rate learned from the last refusal
        self._learned_at = -math.inf
        self._taught_from = 0  # sends numbered from here were sent under the learned limit
        self._refused: set[int] = set()  # numbers of the sends refused, while in the history
        self._lesson: tuple[float, float, float] | None = None  # sent, answered, rate before
        self._local = threading.local()  # each thread's last send: its number and time
        self._lock = threading.Lock()

    @property
    def limit(self) -> float:
        """The limit learned from the upstream's last refusal (the configured rate if none)."""
        with self._lock:
            return self._limit

    def current_rate(self) -> float:
        """The rate in force now: the learned limit while it holds, then climbing back."""
        with self._lock:
            return self._current_rate(self._clock())

    def _current_rate(self, now: float) -> float:
        since = now - self._learned_at
        if since <= self.hold:
            return self._limit
        climbed = self._limit + (since - self.hold) * (self.rate / self.recovery)
        return min(self.rate, climbed)

    def acquire(self) -> None:
        """Wait until one request may be sent."""
        while True:
            with self._lock:
                now = self._clock()
                rate = self._current_rate(now)
                burst = max(1.0, self.burst * rate / self.rate)
                self._tokens = min(burst, self._tokens + (now - self._updated) * rate)
                self._updated = now
                while self._sent and now - self._sent[0] >= self.window:
                    self._sent.popleft()
                cap = max(1, math.floor(rate))  # sends allowed in any ``window``
                wait = max(0.0, self._paused_until - now)
                if wait == 0.0 and len(self._sent) >= cap:
                    # after a lesson the window may hold more than the new cap
                    wait = self._sent[len(self._sent) - cap] + self.window - now
                if wait == 0.0 and self._tokens >= 1.0:
                    self._tokens -= 1.0
                    self._sent.append(now)
                    self._local.sent = (self._forgotten + len(self._history), now)
                    self._history.append(now)
                    while now - self._history[0] >= HISTORY:
                        self._history.popleft()
                        self._refused.discard(self._forgotten)
                        self._forgotten += 1
                    return
                if wait == 0.0:
                    wait = (1.0 - self._tokens) / rate
            self._sleep(max(wait, 1e-4))

    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` from now (extends, never shortens, a pause)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
            self._tokens = 0.0

    def throttle(self, pause: float) -> None:
        """The upstream refused this thread's last request as over its limit: pause everyone
        for ``pause`` seconds and lower the rate to what the upstream accepted (see the
        module's docstring)."""
        with self._lock:
            now = self._clock()
            number, sent_at = getattr(self._local, "sent", (None, now))
            if number is not None:
                self._refused.add(number)
            if number is None or number >= self._taught_from:
                self._lesson = (sent_at, now, self._current_rate(now))
                self._learned_at = now
                self._taught_from = self._forgotten + len(self._history)  # the next send
                self.lessons += 1
            if self._lesson is not None:
                # again for each refusal of the volley: one more send the upstream did not take
                self._limit = self._learn(*self._lesson)
            self._paused_until = max(self._paused_until, now + pause)
            self._tokens = 0.0
            self.throttles += 1

    def _learn(self, sent_at: float, answered_at: float, before: float) -> float:
        """The rate a refusal teaches: the sends from one ``UPSTREAM_WINDOW`` before the
        refused one until its answer, less those refused (the upstream took those before it;
        one still unanswered counts as taken, and a later refusal of it lowers the count)."""
        accepted = 0
        for i in range(len(self._history) - 1, -1, -1):
            at = self._history[i]
            if at < sent_at - UPSTREAM_WINDOW:
                break
            if at <= answered_at and self._forgotten + i not in self._refused:
                accepted += 1
        # nothing taken in that second: another client shares the key; halve
        learned = accepted if accepted else before / 2
        return max(self.min_rate, min(learned, before * DECREASE))
