"""One guarded call: pace it with the credential's token bucket, protect it with the
credential's circuit breaker, and tell the breaker what the outcome says about the upstream.

``Guards`` holds one :class:`Guard` per credential (a key id, never the secret itself), so
every client of the same API key in a process shares its pacing and its circuit: the Healthie
client of each integration, the Anthropic backend, and every connector use it the same way::

    guard.call(fn):  breaker.before_call ─▶ bucket.acquire ─▶ fn() ─▶ breaker.record_*
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from app.core.errors import HealthieSyncError, RateLimited, UpstreamUnavailable
from app.resilience.breaker import CircuitBreaker
from app.resilience.ratelimit import TokenBucket

T = TypeVar("T")


def credential_id(secret: str) -> str:
    """A stable, non-reversible id for a credential (safe to log and to key caches by)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


@dataclass
class Guard:
    """Pacing (optional: ``bucket`` None means unpaced) and a circuit for one credential."""

    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    bucket: TokenBucket | None = None

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` once, paced and protected. Rate limits and upstream failures count against
        the circuit; an answer that was an engine error of another kind proves the upstream is
        up; anything else (a local bug) frees a half-open probe without a verdict."""
        self.breaker.before_call()
        if self.bucket is not None:
            self.bucket.acquire()
        try:
            result = fn()
        except (RateLimited, UpstreamUnavailable):
            self.breaker.record_failure()
            raise
        except HealthieSyncError:
            self.breaker.record_success()  # the upstream answered; the request itself was wrong
            raise
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.record_success()
        return result


class Guards:
    """One :class:`Guard` per credential id, created on first use (thread-safe). The process's
    runtime owns one (``app.service.runtime``), so nothing is shared at import time and two
    runtimes in one test process never share a circuit.

    The first caller of a credential sets its rate and breaker settings; later callers of the
    same credential share them.
    """

    def __init__(self) -> None:
        self._guards: dict[str, Guard] = {}
        self._lock = threading.Lock()

    def for_credential(
        self,
        key_id: str,
        *,
        rate: float | None = None,
        name: str = "upstream",
        threshold: int = 5,
        cool_down: float = 15.0,
    ) -> Guard:
        """The guard of ``key_id`` (see :func:`credential_id`)."""
        with self._lock:
            guard = self._guards.get(key_id)
            if guard is None:
                guard = Guard(
                    breaker=CircuitBreaker(threshold=threshold, cool_down=cool_down, name=name),
                    bucket=TokenBucket(rate) if rate else None,
                )
                self._guards[key_id] = guard
            return guard
