"""Fault injection for the sandbox: the ways Healthie misbehaves, on demand and repeatable.

Configure a :class:`FaultConfig` on the sandbox (``sandbox.faults.config = FaultConfig(...)``)
and the server and webhook emitter consult :class:`Faults` at each request or delivery.
Random faults draw from one stream seeded by ``FaultConfig.seed``, so the same sequence of
calls meets the same faults. All defaults are off.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Which faults to inject. Probabilities are in [0, 1]; None or 0 disables a fault."""

    seed: int = 0
    latency_seconds: float = 0.0
    rate_limit_per_second: float | None = None  # Healthie: about 250 per key
    http_5xx_probability: float = 0.0
    complexity_budget: int | None = None  # Healthie: 2000
    webhook_drop_probability: float = 0.0


class Faults:
    """Runtime state of fault injection (the random stream and the request window)."""

    def __init__(
        self,
        config: FaultConfig | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self.configure(config or FaultConfig())

    def configure(self, config: FaultConfig) -> None:
        """Replace the configuration and restart the random stream from its seed."""
        with self._lock:
            self.config = config
            self._rng = random.Random(config.seed)
            self._window: deque[float] = deque()

    def latency(self) -> float:
        """Seconds to wait before answering a request."""
        return self.config.latency_seconds

    def rate_limited(self) -> bool:
        """Count one request; True when it exceeds the per-second limit (sliding 1 s window)."""
        limit = self.config.rate_limit_per_second
        if not limit:
            return False
        with self._lock:
            now = self._monotonic()
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) >= limit:
                return True
            self._window.append(now)
            return False

    def server_error(self) -> bool:
        """Whether this request should fail with an HTTP 5xx."""
        return self._draw(self.config.http_5xx_probability)

    def drop_webhook(self) -> bool:
        """Whether this webhook delivery is silently lost."""
        return self._draw(self.config.webhook_drop_probability)

    def _draw(self, probability: float) -> bool:
        if probability <= 0:
            return False
        with self._lock:
            return self._rng.random() < probability
