"""Coalesce the webhook receiver's publishes: one queue call per batch of concurrent requests.

Each request still gets its answer only after its own marks are durably published (its future
resolves after the batch containing them is confirmed; a failed batch fails every request in it,
each answered 503 so Healthie retries). At most one publish is in flight; requests arriving
meanwhile wait for the next one, so under load the per-request cost of thread hand-offs and
commits (or Pub/Sub round trips) is shared.

**A deadline per request.** A queue that is locked by another process, full, or unreachable
would otherwise hold a request for the queue's own timeout (30 s of SQLite busy-waiting, or
Pub/Sub's retry budget). Each request fails with ``QueueUnavailable`` once ``deadline`` seconds
have passed without confirmation, whatever the queue is doing; the receiver answers 503. Its
messages are then dropped if their batch has not started, or may still be published late if
it has: harmless, because Healthie retries a 503 and a repeated dirty mark only asks for one
more re-sync of the same subject at the next flush.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence

from app.core.errors import QueueUnavailable
from app.queue.base import Queue, SubmittingQueue

Messages = Sequence[tuple[bytes, Mapping[str, str]]]

#: Seconds a webhook waits for its publish to be confirmed before it is answered 503.
PUBLISH_DEADLINE_SECONDS = 2.0
#: How often, at most, overdue requests are looked for while any are waiting.
SWEEP_SECONDS = 0.1


class PublishBatcher:
    """Batches publishes to one topic from coroutines on one event loop."""

    def __init__(
        self,
        queue: Queue,
        topic: str,
        *,
        max_batch: int = 500,
        max_in_flight: int | None = None,
        deadline: float = PUBLISH_DEADLINE_SECONDS,
    ) -> None:
        self._queue = queue
        self._topic = topic
        self._max_batch = max_batch
        self._deadline = deadline
        self._pending: list[tuple[Messages, asyncio.Future[None]]] = []
        # (deadline, future) of every request since the last sweep, in arrival order
        self._watched: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_loop: asyncio.AbstractEventLoop | None = None
        self._in_flight = 0
        # decided once: a runtime-checkable Protocol check is slow on a hot path
        self._submits = isinstance(queue, SubmittingQueue)
        # A submitting queue group-commits on its own: one call in flight makes the largest
        # batches. A blocking one (Pub/Sub round trips) gains from overlapping a few calls
        # (bounded: each holds a thread while it blocks).
        self._max_in_flight = max_in_flight or (1 if self._submits else 4)

    async def publish(self, messages: Messages) -> None:
        """Return once ``messages`` are durably published; raise what the queue raised, or
        ``QueueUnavailable`` when that takes longer than the deadline (give or take
        :data:`SWEEP_SECONDS`)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._watched.append((loop.time() + self._deadline, future))
        if self._sweep is None or self._sweep_loop is not loop:  # a test may run several loops
            self._sweep_loop = loop
            self._sweep = loop.call_at(self._watched[0][0], self._expire, loop)
        self._pending.append((messages, future))
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            asyncio.ensure_future(self._drain())
        await future

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        # One timer for all requests, not one each: arrival order is deadline order, so only
        # the head is looked at; answered requests just leave the queue here.
        now = loop.time()
        watched = self._watched
        while watched and watched[0][0] <= now:
            _, future = watched.popleft()
            if not future.done() and future.get_loop() is loop:
                future.set_exception(
                    QueueUnavailable(f"publish not confirmed within {self._deadline:g} s")
                )
        self._sweep = (
            loop.call_at(max(watched[0][0], now + SWEEP_SECONDS), self._expire, loop)
            if watched
            else None
        )

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                # requests already answered 503 (deadline passed while queued) publish nothing
                batch = [(messages, future) for messages, future in batch if not future.done()]
                if not batch:
                    continue
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
            self._in_flight -= 1
