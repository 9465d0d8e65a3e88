"""Pacing and protection for Healthie calls: a token bucket per API key and a circuit breaker.

``TokenBucket`` paces requests so one process never exceeds the key's rate (Healthie allows
about 250 requests/s per key and counts them in its own window):

* tokens refill at the current rate, with a small burst after idle periods;
* a sliding-window guard keeps the number of sends in any ``window`` seconds at or below
  ``rate * 1 s``. The window is 10 % longer than Healthie's one second, so requests that
  arrive bunched up by jitter (network, a busy server loop) still fit Healthie's count: at
  1.05 s the benchmark still provoked one TOO_MANY_REQUESTS per 100 requests;
* ``throttle()`` (called on ``TOO_MANY_REQUESTS``) halves the rate, pauses every caller, and
  the rate then climbs back linearly to the configured one over ``recovery`` seconds (AIMD).

``CircuitBreaker`` stops hammering a Healthie that keeps failing: after ``threshold``
consecutive rate-limit or 5xx failures it opens for ``cool_down`` seconds, during which callers
fail fast with :class:`CircuitOpen` (a ``RetriableError`` carrying ``retry_after``); then one
probe is let through (half-open), and its outcome closes the circuit or re-opens it for twice
as long (up to ``max_cool_down``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from app.errors import UpstreamUnavailable

Clock = Callable[[], float]


class TokenBucket:
    """Blocks callers so that at most ``rate`` acquisitions happen per second.

    ``burst`` tokens may be taken at once after an idle period. ``pause(seconds)`` stops all
    callers, for when Healthie says we went over anyway (its clock is the one that counts).
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
        """Healthie said we are over its limit: halve the rate and pause everyone."""
        with self._lock:
            now = self._clock()
            self._floor = max(self.min_rate, self._current_rate(now) / 2)
            self._throttled_at = now
            self._paused_until = max(self._paused_until, now + pause)
            self._tokens = 0.0
            self.throttles += 1


_buckets: dict[str, TokenBucket] = {}
_buckets_lock = threading.Lock()


def bucket_for(key_id: str, rate: float) -> TokenBucket:
    """The one bucket shared by every client of API key ``key_id`` in this process.

    The first client of a key sets its rate; later clients of the same key share it.
    """
    with _buckets_lock:
        bucket = _buckets.get(key_id)
        if bucket is None:
            bucket = _buckets[key_id] = TokenBucket(rate)
        return bucket


class CircuitOpen(UpstreamUnavailable):
    """Healthie kept failing; calls fail fast until ``retry_after`` seconds have passed."""

    kind = "circuit_open"


State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Closed → (``threshold`` consecutive failures) → open → (cool-down) → half-open probe.

    Thread-safe. Call :meth:`before_call` before each request (raises :class:`CircuitOpen`
    while open, or while another caller's half-open probe is in flight), then exactly one of
    :meth:`record_success` / :meth:`record_failure`, or :meth:`release` when the request ended
    in a way that says nothing about Healthie's health.
    """

    def __init__(
        self,
        *,
        threshold: int = 5,
        cool_down: float = 15.0,
        max_cool_down: float = 120.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self.base_cool_down = cool_down
        self.max_cool_down = max_cool_down
        self.opened = 0  # how many times the circuit opened (a metric)
        self._clock = clock
        self._state: State = "closed"
        self._failures = 0
        self._cool_down = cool_down
        self._open_until = 0.0
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> State:
        """``closed``, ``open`` or ``half_open`` (open whose cool-down has passed)."""
        with self._lock:
            if self._state == "open" and self._clock() >= self._open_until:
                return "half_open"
            return self._state

    def before_call(self) -> None:
        """Let the call through, or raise :class:`CircuitOpen` with the seconds to wait."""
        with self._lock:
            if self._state == "closed":
                return
            now = self._clock()
            if self._state == "open" and now >= self._open_until:
                self._state = "half_open"
            if self._state == "half_open" and not self._probing:
                self._probing = True
                return
            wait = max(self._open_until - now, 0.5)
            raise CircuitOpen(
                f"Healthie circuit open after {self.threshold} consecutive failures; "
                f"retry in {wait:.1f} s",
                retry_after=wait,
            )

    def record_success(self) -> None:
        """The call reached a healthy Healthie: close the circuit."""
        with self._lock:
            self._state, self._failures, self._probing = "closed", 0, False
            self._cool_down = self.base_cool_down

    def record_failure(self) -> None:
        """A rate-limit or 5xx/transport failure: count it, open the circuit at the threshold."""
        with self._lock:
            now = self._clock()
            if self._state == "half_open":
                self._cool_down = min(self._cool_down * 2, self.max_cool_down)
                self._open(now)
                return
            self._failures += 1
            if self._state == "closed" and self._failures >= self.threshold:
                self._open(now)

    def release(self) -> None:
        """The call ended without saying anything about Healthie's health (a local error):
        free the half-open probe slot so the next caller probes instead."""
        with self._lock:
            self._probing = False

    def _open(self, now: float) -> None:
        self._state, self._probing = "open", False
        self._open_until = now + self._cool_down
        self.opened += 1
