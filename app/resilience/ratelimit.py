"""Pacing: a token bucket per credential, so one process never exceeds an upstream's rate.

``TokenBucket`` (Healthie allows about 250 requests/s per key and counts them in its own
window; connectors pass their vendors' published limits):

* tokens refill at the current rate, with a small burst after idle periods;
* a sliding-window guard keeps the number of sends in any ``window`` seconds at or below
  ``rate * 1 s``. The window is 10 % longer than one second, so requests that arrive bunched
  up by jitter (network, a busy server loop) still fit the upstream's count: at 1.05 s the
  Healthie benchmark still provoked one TOO_MANY_REQUESTS per 100 requests;
* ``throttle()`` (called on a rate-limit answer) halves the rate, pauses every caller, and
  the rate then climbs back linearly to the configured one over ``recovery`` seconds (AIMD).

Buckets are shared per credential through ``app.resilience.guard.Guards``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]


class TokenBucket:
    """Blocks callers so that at most ``rate`` acquisitions happen per second.

    ``burst`` tokens may be taken at once after an idle period. ``pause(seconds)`` stops all
    callers, for when the upstream says we went over anyway (its clock is the one that counts).
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        window: float = 1.1,
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
        self.recovery = recovery
        self.min_rate = min_rate if min_rate is not None else max(0.5, rate / 16)
        self.throttles = 0
        self._clock, self._sleep = clock, sleep
        self._cap = max(1, math.floor(rate))  # sends allowed in any ``window``
        self._sent: deque[float] = deque()
        self._tokens = self.burst
        self._updated = clock()
        self._paused_until = 0.0
        self._floor = rate  # the rate right after the last throttle
        self._throttled_at = -math.inf
        self._lock = threading.Lock()

    def current_rate(self) -> float:
        """The rate in force now: the configured one, or less while recovering from a throttle."""
        with self._lock:
            return self._current_rate(self._clock())

    def _current_rate(self, now: float) -> float:
        climbed = self._floor + (now - self._throttled_at) * (self.rate / self.recovery)
        return min(self.rate, climbed)

    def acquire(self) -> None:
        """Wait until one request may be sent."""
        while True:
            with self._lock:
                now = self._clock()
                rate = self._current_rate(now)
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * rate)
                self._updated = now
                while self._sent and now - self._sent[0] >= self.window:
                    self._sent.popleft()
                wait = max(0.0, self._paused_until - now)
                if wait == 0.0 and len(self._sent) >= self._cap:
                    wait = self._sent[0] + self.window - now
                if wait == 0.0 and self._tokens >= 1.0:
                    self._tokens -= 1.0
                    self._sent.append(now)
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
        """The upstream said we are over its limit: halve the rate and pause everyone."""
        with self._lock:
            now = self._clock()
            self._floor = max(self.min_rate, self._current_rate(now) / 2)
            self._throttled_at = now
            self._paused_until = max(self._paused_until, now + pause)
            self._tokens = 0.0
            self.throttles += 1
