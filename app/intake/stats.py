"""Counters of the webhook intake, by outcome and event type (ids only, no PHI)."""

from __future__ import annotations

import threading
from collections import Counter


class IntakeStats:
    """Thread-safe counters read by the demo, tests and ``/healthz``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes: Counter[str] = Counter()
        self.events: Counter[str] = Counter()

    def count(self, outcome: str, event_type: str | None = None) -> None:
        """Count one request's outcome (and its event type when it was read)."""
        with self._lock:
            self.outcomes[outcome] += 1
            if event_type:
                self.events[event_type] += 1

    @property
    def received(self) -> int:
        """Requests that reached the receiver."""
        with self._lock:
            return sum(self.outcomes.values())

    @property
    def rejected(self) -> int:
        """Requests answered 4xx."""
        with self._lock:
            return sum(n for k, n in self.outcomes.items() if k.startswith("rejected"))

    def snapshot(self) -> dict[str, int]:
        """A copy of the outcome counters."""
        with self._lock:
            return dict(self.outcomes)
