"""Protection: a circuit breaker, so a client stops hammering an upstream that keeps failing.

After ``threshold`` consecutive rate-limit or 5xx failures it opens for ``cool_down`` seconds,
during which callers fail fast with :class:`~app.core.errors.CircuitOpen` (a ``RetriableError``
carrying ``retry_after``); then one probe is let through (half-open), and its outcome closes the
circuit or re-opens it for twice as long (up to ``max_cool_down``). Breakers are shared per
credential through ``app.resilience.guard.Guards``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

from app.core.errors import CircuitOpen

Clock = Callable[[], float]

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Closed → (``threshold`` consecutive failures) → open → (cool-down) → half-open probe.

    Thread-safe. Call :meth:`before_call` before each request (raises :class:`CircuitOpen`
    while open, or while another caller's half-open probe is in flight), then exactly one of
    :meth:`record_success` / :meth:`record_failure`, or :meth:`release` when the request ended
    in a way that says nothing about the upstream's health.
    """

    def __init__(
        self,
        *,
        threshold: int = 5,
        cool_down: float = 15.0,
        max_cool_down: float = 120.0,
        clock: Clock = time.monotonic,
        name: str = "upstream",
    ) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.name = name
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
                f"{self.name} circuit open after {self.threshold} consecutive failures; "
                f"retry in {wait:.1f} s",
                retry_after=wait,
            )

    def record_success(self) -> None:
        """The call reached a healthy upstream: close the circuit."""
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
        """The call ended without saying anything about the upstream's health (a local error):
        free the half-open probe slot so the next caller probes instead."""
        with self._lock:
            self._probing = False

    def _open(self, now: float) -> None:
        self._state, self._probing = "open", False
        self._open_until = now + self._cool_down
        self.opened += 1
