"""A process-wide token bucket per Healthie API key (Healthie allows about 250 requests/s)."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """Blocks callers so that at most ``rate`` acquisitions happen per second on average.

    ``burst`` tokens may be taken at once after an idle period. ``pause(seconds)`` stops all
    callers, for when Healthie says we went over anyway (its clock is the one that counts).
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self._tokens = self.burst
        self._updated = time.monotonic()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Wait until one request may be sent."""
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                wait = max(0.0, self._paused_until - now)
                if wait == 0.0 and self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                if wait == 0.0:
                    wait = (1.0 - self._tokens) / self.rate
            time.sleep(wait)

    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` from now (extends, never shortens, a pause)."""
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)
            self._tokens = 0.0


_buckets: dict[str, TokenBucket] = {}
_buckets_lock = threading.Lock()


def bucket_for(key_id: str, rate: float) -> TokenBucket:
    """The one bucket shared by every client of API key ``key_id`` in this process."""
    with _buckets_lock:
        bucket = _buckets.get(key_id)
        if bucket is None:
            bucket = _buckets[key_id] = TokenBucket(rate)
        return bucket
