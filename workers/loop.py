"""Long-running work processing: N threads each pulling and processing batches until stopped.

``healthie-sync serve`` runs this beside the HTTP app (and ``healthie-sync work`` alone), so a
deployment is one process type. One integration's configuration error (a missing secret, a
bad plan or file) is its items' outcome, never the loop's: they wait, counted, and every other
clinic's work goes on (``workers.consumer``). Only a configuration error of the queue itself
(no work subscription, no credentials for it) stops the loop and is logged: nothing would
succeed until a person fixes it, and the messages stay queued.

**Full Healthie requests.** A thread pulls batches of ``batch_size`` (100: a multiple of the
20 entries one Healthie request carries) and tops a short pull up (Pub/Sub often returns fewer
messages than asked for, however long its backlog) with further pulls while they bring
messages, for at most ``fill_wait`` seconds; it never waits on an empty queue to fill a batch.
What remains partial, a batch's last request, is merged with the other threads' by the
Healthie client (``app.healthie.coalesce``), which waits a bounded ``fetch_linger`` for them.
So with enough work every request but a few is full, whatever the number of threads, and no
batch waits longer than ``fill_wait`` (plus one long-poll of the queue) to start.

Stopping has a deadline (``stop(grace)``, driven by ``app.service.lifecycle`` on SIGTERM): no
thread pulls again once a stop is requested; a batch in flight may finish until the deadline;
whatever it has not settled by then (acked, nacked or dead-lettered by ``workers.consumer``)
is nacked with no delay and its patients' leases released, so another instance gets it at
once instead of after its lease ran out. Nothing is lost either way: an unsettled message
always comes back, and writes are idempotent, so an item written but not yet acknowledged is
only written again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

from app.core.errors import ConfigurationError, QueueUnavailable
from app.core.models import Counts
from app.queue.base import Message, Queue, SubscriptionSpec
from app.queue.topology import WORK_SUBSCRIPTION
from app.service.runtime import Runtime
from workers.consumer import Consumer
from workers.middleware import PatientLeases

log = logging.getLogger(__name__)


class InFlight:
    """One worker thread's view of the queue: it remembers the work messages pulled and not
    yet settled, so they can be handed back when the grace period ends (``give_back``).
    After that, the thread's late calls fail with QueueUnavailable instead of touching a
    queue that is being closed."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue
        self._lock = threading.Lock()
        self._unsettled: dict[str, Message] = {}
        self._given_back = False

    def _check(self) -> None:
        if self._given_back:
            raise QueueUnavailable("the worker is shutting down; its messages were handed back")

    def pull(self, subscription: str, max_messages: int = 100) -> list[Message]:
        """Pull, remembering work messages as unsettled (the pull itself, a long poll on
        Pub/Sub, runs outside the lock so ``give_back`` never waits for it)."""
        self._check()
        messages = self._queue.pull(subscription, max_messages)
        with self._lock:
            if self._given_back:
                if messages:  # handed back while we waited: give these back too
                    self._queue.nack(subscription, [m.ack_id for m in messages], 0)
                raise QueueUnavailable("the worker is shutting down")
            if subscription == WORK_SUBSCRIPTION:
                self._unsettled.update((m.ack_id, m) for m in messages)
            return messages

    def ack(self, subscription: str, ack_ids: Sequence[str]) -> None:
        """Acknowledge and forget."""
        with self._lock:
            self._check()
            self._queue.ack(subscription, ack_ids)
            self._forget(subscription, ack_ids)

    def nack(self, subscription: str, ack_ids: Sequence[str], delay_seconds: float = 0) -> None:
        """Give back and forget."""
        with self._lock:
            self._check()
            self._queue.nack(subscription, ack_ids, delay_seconds)
            self._forget(subscription, ack_ids)

    def extend(self, subscription: str, ack_ids: Sequence[str], seconds: float) -> None:
        """Extend the leases (the consumer's lease keeper); nothing once handed back."""
        with self._lock:
            if self._given_back:
                return
            self._queue.extend(subscription, ack_ids, seconds)

    def _forget(self, subscription: str, ack_ids: Sequence[str]) -> None:
        if subscription == WORK_SUBSCRIPTION:
            for ack_id in ack_ids:
                self._unsettled.pop(ack_id, None)

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Publish (dead letters)."""
        self._check()
        return self._queue.publish(topic, data, attributes)

    def publish_many(
        self, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[str]:
        """Publish several."""
        self._check()
        return self._queue.publish_many(topic, messages)

    def ensure_topic(self, topic: str) -> None:
        """Delegated."""
        self._queue.ensure_topic(topic)

    def ensure_subscription(self, spec: SubscriptionSpec) -> None:
        """Delegated."""
        self._queue.ensure_subscription(spec)

    def close(self) -> None:
        """The queue belongs to the runtime: nothing to close here."""

    @property
    def unsettled(self) -> int:
        """Work messages pulled and not yet settled."""
        return len(self._unsettled)

    def give_back(self, *, wait: float) -> int:
        """Nack every unsettled work message (no delay) and refuse later calls; how many.
        Waits up to ``wait`` seconds for a settlement in progress to complete first."""
        if not self._lock.acquire(timeout=max(0.0, wait)):
            # a queue call of the thread is stuck: its lease expiry will redeliver
            log.warning("a worker's queue call did not return; its messages come back later")
            self._given_back = True
            return 0
        try:
            self._given_back = True
            ack_ids = list(self._unsettled)
            if ack_ids:
                self._queue.nack(WORK_SUBSCRIPTION, ack_ids, 0)
            self._unsettled.clear()
            return len(ack_ids)
        finally:
            self._lock.release()


class WorkerLoop:
    """Processes the work subscription with ``concurrency`` threads, each pulling batches of
    up to ``batch_size`` messages (topped up for ``fill_wait`` seconds)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        concurrency: int = 2,
        batch_size: int = 100,
        idle_wait: float = 0.5,
        fill_wait: float = 0.1,
    ) -> None:
        self._runtime = runtime
        self._concurrency = concurrency
        self._batch_size = batch_size
        self._idle_wait = idle_wait
        self._fill_wait = fill_wait
        self._stop = threading.Event()
        self._threads: list[tuple[threading.Thread, InFlight, Consumer]] = []
        self.stopped_by: str | None = None

    def start(self) -> None:
        """Start the worker threads."""
        runtime = self._runtime
        for n in range(self._concurrency):
            in_flight = InFlight(runtime.queue)
            consumer = Consumer.from_runtime(runtime, queue=in_flight)
            thread = threading.Thread(
                target=self._run, args=(in_flight, consumer), name=f"worker-{n}", daemon=True
            )
            thread.start()
            self._threads.append((thread, in_flight, consumer))

    def request_stop(self) -> None:
        """Pull no more (safe from a signal handler: sets an event, nothing else)."""
        self._stop.set()

    def stop(self, grace: float = 60.0) -> int:
        """Stop pulling, let batches in flight finish for up to ``grace`` seconds in all, then
        nack what they have not settled; returns how many messages were handed back."""
        self._stop.set()
        deadline = time.monotonic() + grace
        for thread, _, _ in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        handed_back = 0
        for thread, in_flight, consumer in self._threads:
            if thread.is_alive():
                handed_back += in_flight.give_back(wait=0.5)
                # The batch cannot release its patient leases now; without this, the
                # redelivered items would find their patients "busy" until the leases expire.
                for middleware in consumer.middleware:
                    if isinstance(middleware, PatientLeases):
                        middleware.after_batch()
        if handed_back:
            log.warning("grace period over: %d in-flight work items nacked", handed_back)
        return handed_back

    def _run(self, in_flight: InFlight, consumer: Consumer) -> None:
        while not self._stop.is_set():
            try:
                messages = self._pull_batch(in_flight)
                if messages and self._stop.is_set():
                    # pulled while the stop arrived: hand back untouched
                    in_flight.nack(WORK_SUBSCRIPTION, [m.ack_id for m in messages], 0)
                    return
                if messages:
                    _log_batch(consumer.process_batch(messages))
                    continue
            except ConfigurationError as exc:
                # the queue's own (an integration's is settled by the consumer as "wait")
                self.stopped_by = str(exc)
                log.error("worker stopped on a configuration error: %s", exc)  # noqa: TRY400
                self._stop.set()
                return
            except Exception:  # noqa: BLE001 - keep processing; the batch was nacked or kept
                if self._stop.is_set():
                    return  # handed back at shutdown: nothing to report
                log.exception("worker batch failed")
            self._stop.wait(self._idle_wait)

    def _pull_batch(self, in_flight: InFlight) -> list[Message]:
        """One pull, topped up while more pulls bring messages, up to ``batch_size`` and for
        at most ``fill_wait`` seconds (see the module's docstring)."""
        messages = in_flight.pull(WORK_SUBSCRIPTION, self._batch_size)
        deadline = time.monotonic() + self._fill_wait
        while (
            messages
            and len(messages) < self._batch_size
            and time.monotonic() < deadline
            and not self._stop.is_set()
        ):
            try:
                more = in_flight.pull(WORK_SUBSCRIPTION, self._batch_size - len(messages))
            except QueueUnavailable:
                break  # what was pulled is processed (or handed back at shutdown) as it is
            if not more:
                break
            messages.extend(more)
        return messages


def _log_batch(counts: Counts) -> None:
    # one line per processed batch (serve and work log at INFO): counts only, never entries
    log.info(
        "batch: processed=%d unchanged=%d not_found=%d writes=%d dead_lettered=%d waiting=%d"
        " retried=%d",
        counts.processed,
        counts.skipped_unchanged,
        counts.not_found,
        counts.writes,
        counts.dead_lettered,
        counts.waiting,
        counts.retried,
    )
