"""Coalesce the webhook receiver's publishes: one queue call per batch of concurrent requests.

Each request still gets its answer only after its own marks are durably published (its future
resolves after the batch containing them is confirmed; a failed batch fails every request in it,
each answered 503 so Healthie retries). At most one publish is in flight; requests arriving
meanwhile wait for the next one, so under load the per-request cost of thread hand-offs and
commits (or Pub/Sub round trips) is shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from app.queue.base import Queue, SubmittingQueue

Messages = Sequence[tuple[bytes, Mapping[str, str]]]


class PublishBatcher:
    """Batches publishes to one topic from coroutines on one event loop."""

    def __init__(
        self, queue: Queue, topic: str, *, max_batch: int = 500, max_in_flight: int | None = None
    ) -> None:
        self._queue = queue
        self._topic = topic
        self._max_batch = max_batch
        self._pending: list[tuple[Messages, asyncio.Future[None]]] = []
        self._in_flight = 0
        # decided once: a runtime-checkable Protocol check is slow on a hot path
        self._submits = isinstance(queue, SubmittingQueue)
        # A submitting queue group-commits on its own: one call in flight makes the largest
        # batches. A blocking one (Pub/Sub round trips) gains from overlapping a few calls.
        self._max_in_flight = max_in_flight or (1 if self._submits else 4)

    async def publish(self, messages: Messages) -> None:
        """Return once ``messages`` are durably published; raise what the queue raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((messages, future))
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            asyncio.ensure_future(self._drain())
        await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                flat = [m for messages, _ in batch for m in messages]
                try:
                    if self._submits:
                        submitting: SubmittingQueue = self._queue  # type: ignore[assignment]
                        await asyncio.wrap_future(submitting.submit_many(self._topic, flat))
                    else:
                        await asyncio.to_thread(self._queue.publish_many, self._topic, flat)
                except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._in_flight = 0
