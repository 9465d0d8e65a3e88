"""Identical webhook deliveries within a window: the first is published, the rest answered
``duplicate`` (2xx) and dropped.

**What counts as identical.** The integration, the signed path and query, and the body: what the
signature vouches for. The ``Signature`` header itself is left out, so a replay that pads the
header with extra labels is still the same delivery. Only verified deliveries reach this check,
so unsigned traffic can neither fill the window nor suppress a later genuine delivery.

**Why in memory, per instance.** A shared key in the state store costs a durable write (an
fsync) per webhook on the request path and makes intake depend on the store; this costs a
SHA-256 and a dict lookup. The price is that a replay reaching N instances is published at
most N times per window. That is bounded and harmless: a mark carries only an id, the flush
fetches the patient's current data from Healthie, and marks of one subject coalesce.

**Why a replay needs this at all.** Healthie's signature covers no timestamp (see
``app.intake.signature``), so a captured delivery verifies forever; and Healthie retries only
deliveries that were *not* answered 2xx, so a repeat of an accepted delivery is a replay or a
double send. A key is claimed before the publish and released when the publish fails, so
Healthie's retry of a delivery we answered 503 is never mistaken for a duplicate.

**The trade-off.** Two genuine, identical events (the same field of the same patient changed
twice) within the window with a flush between them: the second is dropped and the patient's
second change waits for its next event or backfill. A short window keeps that rare.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable


class RecentDeliveries:
    """The deliveries claimed in the last ``window_seconds`` (at most ``max_entries``; the
    oldest go first when full). ``window_seconds`` 0 turns the check off. Not thread-safe:
    it is used from the event loop only."""

    def __init__(
        self,
        window_seconds: float,
        *,
        max_entries: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = float(window_seconds)
        self._max_entries = max_entries
        self._clock = clock
        # key -> expiry; insertion order is expiry order (one window for all keys)
        self._expires: dict[bytes, float] = {}

    @staticmethod
    def key(integration_id: str, path: str, query: str, body: bytes) -> bytes:
        """The identity of a delivery (16 bytes of SHA-256: collisions are out of reach)."""
        digest = hashlib.sha256(f"{integration_id}\n{path}\n{query}\n".encode())
        digest.update(body)
        return digest.digest()[:16]

    def claim(self, key: bytes) -> bool:
        """True when ``key`` is new within the window (it is now claimed); False for a
        duplicate. Always True when the window is 0."""
        if not self.window:
            return True
        now = self._clock()
        expires = self._expires
        while expires:  # drop the expired head, oldest first (amortized: one per claim)
            oldest = next(iter(expires))
            if expires[oldest] > now and len(expires) < self._max_entries:
                break
            del expires[oldest]
        seen = expires.get(key)
        if seen is not None and seen > now:
            return False
        if seen is not None:
            del expires[key]  # re-insert at the tail to keep expiry order
        expires[key] = now + self.window
        return True

    def release(self, key: bytes) -> None:
        """Forget ``key`` (its publish failed: Healthie's retry must be published)."""
        self._expires.pop(key, None)

    def __len__(self) -> int:
        return len(self._expires)
