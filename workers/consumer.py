"""Pull work items, run them through the pipeline, and settle every one: ack, nack,
dead-letter or wait happen here and nowhere else.

::

    pull ─▶ decode ─▶ middleware.before_batch ─▶ one lane per integration ─▶ settle each
                      (patient leases: busy          workers.pipeline.run     │
                       items come back later)        (fetch → prepare →       ▼
                                                      decide → write →    middleware.after_item
                                                      record)             (audit, tallies); per
                                                                          wave: before_settle (run
                                                                          outcomes stored), then
                                                                          the queue actions
                      lease keeper: right after the pull, cut the messages' leases to the
                      heartbeat horizon; then, every third of it while the batch runs, renew
                      the unsettled messages' deadlines and the patient leases
                      middleware.after_batch (release leases, store any outcomes left)

=================  ===========================================================
outcome             what happens to the work item
=================  ===========================================================
written, skipped    ack; counts ``processed`` (and ``writes``)
unchanged           ack; counts ``skipped_unchanged``
PatientNotFound     ack, recorded in the audit log; counts ``not_found``
SkippableError      ack, recorded in the audit log
RetriableError      nack with back-off (``app.resilience.retry.redelivery_delay``);
                    dead-lettered with the reason once the item has used its
                    delivery attempts, except a CircuitOpen (the service, not the
                    item, kept failing): that item waits instead
FatalError          dead-lettered now with the reason (and its plan, if decided)
ConfigurationError  waits: staged again in its integration's pending set (the next
                    flush publishes it), acked, counted ``waiting``, audited; the
                    consumer goes on with every other integration
anything else       treated as retriable (a bug must not lose work), logged
=================  ===========================================================

**Isolation.** One integration's failure (a missing or revoked secret, a bad plan, a broken
config file, a target whose breaker is open) is its items' outcome, never the consumer's: its
items *wait* in the state store's pending set, counted in their run and visible there, instead
of dead-lettering en masse or stopping the worker threads of every clinic. The integrations of
a pulled batch run in parallel lanes, so one clinic's slow stage (an hours-long Message Batch,
a Healthie that times out) never holds another's items; the queue's order is the queue's
(Pub/Sub promises none).

**Heartbeat leases.** A pulled message is leased for the subscription's ack deadline
(minutes); the consumer at once cuts that to a short *heartbeat horizon* H
(``work_heartbeat_seconds``, 15 s by default) and a lease keeper thread renews the messages
and the patient leases every third of H for as long as the batch runs. A batch that takes
hours (a pending Message Batch) keeps its messages and patients, so no other worker is handed
the same items and the batch is submitted once; a worker that is killed stops renewing, and
its items and patients are free again within seconds, not one ack deadline. Renewals are
``Queue.extend`` calls, never deliveries: the redelivery after a crash is one delivery
attempt, like any other.

The messages must come back no earlier than their patients are free, or the next worker finds
them "busy" and spends an attempt deferring them. Patient leases last H; messages are leased
one renewal interval longer (4/3 H) and renewed first in each beat (and once more after the
patients are taken), so even a worker killed half-way through renewing its patients leaves
messages that outlast every patient lease it renewed, provided a beat's renewals take less
than one interval. A dead worker's items are therefore back within 4/3 H (20 s by default).

A dead letter is published to ``work-dlq`` and then indexed in the state store, stamped with
the integration's rules version (``workers.deadletters``: how ``dlq list`` reads without
leasing, and why a failed index write does not stop the ack).

Cross-cutting steps are middleware (``workers.middleware``), in the spirit of dramatiq's: each
hook is small and sees ids, kinds and counts, never a patient value.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import ValidationError

from app.core import faults
from app.core.errors import (
    CircuitOpen,
    ConfigurationError,
    FatalError,
    HealthieSyncError,
    SkippableError,
)
from app.core.models import Counts, WorkItem
from app.core.settings import WORK_HEARTBEAT_SECONDS
from app.queue.base import Message, Queue
from app.queue.topology import WORK_DLQ_TOPIC, WORK_SUBSCRIPTION
from app.resilience.retry import redelivery_delay
from app.service.runtime import IntegrationClients, Runtime
from app.state.base import PendingPatient, StateStore
from workers import deadletters, pipeline
from workers.metrics_middleware import Metrics
from workers.middleware import AuditTrail, Middleware, PatientLeases, RunTally, counts_of
from workers.pipeline import Outcome

log = logging.getLogger(__name__)

Action = Literal["ack", "nack", "dead_letter", "wait"]


@dataclass(frozen=True)
class Delivery:
    """A pulled message and the work item it carries."""

    message: Message
    item: WorkItem


@dataclass(frozen=True)
class Settlement:
    """What the consumer decided for one delivery (middleware sees it before the queue does)."""

    action: Action
    kind: str | None = None
    reason: str | None = None
    retry_after: float | None = None


#: Seconds before an item whose patient another worker holds is offered again.
BUSY_RETRY_SECONDS = 5.0
#: Outcomes of one lane settled together: their run outcomes stored in one state-store call,
#: then their acks in one queue call.
SETTLE_WAVE = 100
#: At most this many integrations of one pulled batch run at once (one lane each).
MAX_LANES = 8


class LeaseKeeper:
    """Heartbeats a batch's leases. ``renew`` sets the unsettled messages' ack deadline to
    ``seconds`` from now; between ``start`` and ``stop`` a thread, every ``interval`` seconds,
    renews and then calls each middleware's ``keep_alive``. A failed renewal is logged and
    tried again at the next beat (the work is idempotent; the patient leases guard it)."""

    def __init__(
        self,
        queue: Queue,
        ack_ids: Sequence[str],
        *,
        seconds: float,
        interval: float,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self._queue = queue
        self._seconds = seconds
        self._interval = interval
        self._middleware = list(middleware)
        self._unsettled = set(ack_ids)
        # held while renewing and while an item leaves the set, so a renewal never lands
        # after the item's own ack or nack (a nack's delay must stand)
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def settled(self, ack_id: str) -> None:
        """The message is about to be settled: renew it no more. Call with ``lock`` held."""
        self._unsettled.discard(ack_id)

    def renew(self) -> None:
        """Lease every unsettled message ``seconds`` ahead from now."""
        with self.lock:
            ack_ids = sorted(self._unsettled)
            if not ack_ids:
                return
            try:
                self._queue.extend(WORK_SUBSCRIPTION, ack_ids, self._seconds)
            except Exception as exc:  # noqa: BLE001 - the leases may lapse; work is idempotent
                log.warning("could not renew %d leases (%s)", len(ack_ids), type(exc).__name__)

    def start(self) -> None:
        """Start the heartbeat (nothing to do for an empty batch)."""
        if self._unsettled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat and wait for a beat in progress (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            # messages first: they then outlast every patient lease renewed after them
            self.renew()
            for mw in self._middleware:
                try:
                    mw.keep_alive()
                except Exception as exc:  # noqa: BLE001 - as in renew
                    log.warning(
                        "keep-alive of %s failed (%s)", type(mw).__name__, type(exc).__name__
                    )


class Consumer:
    """Consumes the work subscription: one batch at a time, every message settled once."""

    def __init__(
        self,
        queue: Queue,
        state: StateStore,
        clients_for: Callable[[str], IntegrationClients],
        *,
        max_attempts: int,
        lease_seconds: float,
        heartbeat_seconds: float = WORK_HEARTBEAT_SECONDS,
        middleware: Sequence[Middleware] | None = None,
    ) -> None:
        self.queue = queue
        self.state = state
        self.clients_for = clients_for
        self.max_attempts = max_attempts
        #: the work subscription's ack deadline: what a pull leases a message for
        self.lease_seconds = lease_seconds
        #: the heartbeat horizon H (at most the subscription's deadline): patient leases reach
        #: this far ahead, messages a third further, renewed every third of it
        self.heartbeat_seconds = min(heartbeat_seconds, lease_seconds)
        self.middleware: list[Middleware] = (
            list(middleware)
            if middleware is not None
            else [
                PatientLeases(state, self.heartbeat_seconds),
                AuditTrail(state),
                RunTally(state),
                Metrics(),
            ]
        )
        self._settling = threading.Lock()

    @classmethod
    def from_runtime(cls, runtime: Runtime, queue: Queue | None = None) -> Consumer:
        """A consumer on the runtime's state, clients and settings, with the standard
        middleware, pulling from ``queue`` (default: the runtime's)."""
        settings = runtime.settings
        return cls(
            runtime.queue if queue is None else queue,
            runtime.state,
            runtime.clients,
            max_attempts=settings.work_max_delivery_attempts,
            lease_seconds=float(settings.work_ack_deadline_seconds),
            heartbeat_seconds=settings.work_heartbeat_seconds,
        )

    def process_batch(self, messages: Sequence[Message]) -> Counts:
        """Process one pulled batch; every message is acked, nacked, dead-lettered or made to
        wait. One integration's failure never raises here: it is its items' outcome."""
        interval = max(0.05, self.heartbeat_seconds / 3)
        keeper = LeaseKeeper(
            self.queue,
            [m.ack_id for m in messages],
            seconds=self.heartbeat_seconds + interval,  # outlasting the patients' (docstring)
            interval=interval,
            middleware=self.middleware,
        )
        total = Counts()
        deliveries: list[Delivery] = []
        keeper.renew()  # from the ack deadline down to the heartbeat
        keeper.start()
        try:
            for message in messages:
                try:
                    item = WorkItem.model_validate_json(message.data)
                except ValidationError:
                    with keeper.lock:
                        keeper.settled(message.ack_id)
                    self._dead_letter(message, "invalid_message", "work item does not decode")
                    self.queue.ack(WORK_SUBSCRIPTION, [message.ack_id])
                    total = total.add(Counts(dead_lettered=1))
                    continue
                deliveries.append(Delivery(message, item))
            for mw in self.middleware:
                kept = {id(item) for item in mw.before_batch([d.item for d in deliveries])}
                busy = [d for d in deliveries if id(d.item) not in kept]
                if busy:
                    deliveries = [d for d in deliveries if id(d.item) in kept]
                    total = total.add(self._defer_busy(busy, keeper))
            keeper.renew()  # the messages' horizon now ends after the patient leases'
            total = total.add(self._run_lanes(deliveries, keeper))
        finally:
            keeper.stop()  # no extension once the batch's leases are released
            for mw in reversed(self.middleware):
                mw.after_batch()
        return total

    def _defer_busy(self, busy: Sequence[Delivery], keeper: LeaseKeeper) -> Counts:
        """Items whose patient another worker holds come back shortly; on their last delivery
        attempt they wait in the pending set instead (the queue would dead-letter them)."""
        last = [d for d in busy if d.message.delivery_attempt >= self.max_attempts]
        again = [d for d in busy if d.message.delivery_attempt < self.max_attempts]
        with keeper.lock:
            for d in busy:
                keeper.settled(d.message.ack_id)
        if again:
            self.queue.nack(
                WORK_SUBSCRIPTION, [d.message.ack_id for d in again], BUSY_RETRY_SECONDS
            )
        counts = Counts()
        actions: list[tuple[Delivery, Action]] = []
        with self._settling:
            for d in last:
                action: Action = "wait" if self._stage_again(d.item) else "nack"
                for mw in self.middleware:
                    mw.after_item(Outcome(d.item, "failed"), action, "patient_busy")
                actions.append((d, action))
            stored = self._store_outcomes(len(actions))
        for d, action in actions:
            if action == "wait" and stored:
                self.queue.ack(WORK_SUBSCRIPTION, [d.message.ack_id])
            else:
                self.queue.nack(WORK_SUBSCRIPTION, [d.message.ack_id], BUSY_RETRY_SECONDS)
            waited = action == "wait" and stored
            counts = counts.add(Counts(waiting=1) if waited else Counts(retried=1))
        return counts

    def _run_lanes(self, deliveries: Sequence[Delivery], keeper: LeaseKeeper) -> Counts:
        """Each integration's items through the pipeline in a lane of its own, in parallel."""
        lanes: dict[str, list[Delivery]] = {}
        for d in deliveries:
            lanes.setdefault(d.item.integration_id, []).append(d)
        if len(lanes) <= 1:
            return _sum(self._lane(ds, keeper) for ds in lanes.values())
        with ThreadPoolExecutor(
            max_workers=min(len(lanes), MAX_LANES), thread_name_prefix="lane"
        ) as pool:
            futures = [pool.submit(self._lane, ds, keeper) for ds in lanes.values()]
            results: list[Counts] = []
            failure: BaseException | None = None
            for future in futures:
                try:
                    results.append(future.result())
                except Exception as exc:  # noqa: BLE001 - the other lanes still settle
                    failure = failure or exc
        if failure is not None:
            raise failure
        return _sum(results)

    def _lane(self, deliveries: Sequence[Delivery], keeper: LeaseKeeper) -> Counts:
        """One integration's items through the pipeline, settled in waves: every item's
        ``after_item`` as its outcome arrives, then, per wave, ``before_settle`` (the run
        outcomes stored) and only then the wave's queue actions. A kill between the two costs
        a redelivery that counts nothing twice; one before them loses no count."""
        total = Counts()
        wave: list[tuple[Delivery, Outcome, Settlement]] = []
        items = [d.item for d in deliveries]
        for i, outcome in pipeline.run(items, self.clients_for, self.state):
            with self._settling:
                wave.append(self._account(deliveries[i], outcome))
                if len(wave) >= SETTLE_WAVE:
                    total = total.add(self._send(wave, keeper))
                    wave = []
        if wave:
            with self._settling:
                total = total.add(self._send(wave, keeper))
        return total

    def _account(
        self, delivery: Delivery, outcome: Outcome
    ) -> tuple[Delivery, Outcome, Settlement]:
        """Decide the item's settlement and tell the middleware (audit, tallies); nothing
        reaches the queue yet. Call with ``_settling`` held."""
        settlement = self._decide(delivery.message, outcome)
        if settlement.action == "wait" and not self._stage_again(delivery.item):
            settlement = Settlement("nack", settlement.kind, settlement.reason)
        for mw in self.middleware:
            mw.after_item(outcome, settlement.action, settlement.kind)
        return delivery, outcome, settlement

    def _send(
        self, wave: Sequence[tuple[Delivery, Outcome, Settlement]], keeper: LeaseKeeper
    ) -> Counts:
        """Store what must outlive the queue actions (``before_settle``), then send them: one
        ack call for the wave's acks, a nack or dead letter per item. When the store refuses,
        nothing is acked: the wave comes back (its outcomes are kept for the next attempt and
        count once). Call with ``_settling`` held."""
        if not self._store_outcomes(len(wave)):
            with keeper.lock:
                for delivery, _, _ in wave:
                    keeper.settled(delivery.message.ack_id)
            for delivery, _, _ in wave:
                delay = redelivery_delay(delivery.message.delivery_attempt, None)
                self.queue.nack(WORK_SUBSCRIPTION, [delivery.message.ack_id], delay)
            return Counts(retried=len(wave))
        faults.point("consumer.settling")
        with keeper.lock:
            for delivery, _, _ in wave:
                keeper.settled(delivery.message.ack_id)
        acks: list[str] = []
        total = Counts()
        for delivery, outcome, settlement in wave:
            self._queue_action(delivery, outcome, settlement, acks)
            total = total.add(counts_of(outcome, settlement.action))
        if acks:
            self.queue.ack(WORK_SUBSCRIPTION, acks)
        faults.point("consumer.settled")
        return total

    def _store_outcomes(self, items: int) -> bool:
        """Every middleware's ``before_settle`` (the run outcomes stored); False when the store
        refused: the caller then acks nothing and the items come back (nothing is lost)."""
        try:
            for mw in self.middleware:
                mw.before_settle()
        except Exception as exc:  # noqa: BLE001 - the items come back; nothing is lost
            log.warning(
                "run outcomes not stored (%s); %d work items handed back",
                type(exc).__name__,
                items,
            )
            return False
        return True

    def _queue_action(
        self, delivery: Delivery, outcome: Outcome, settlement: Settlement, acks: list[str]
    ) -> None:
        message, item = delivery.message, delivery.item
        if settlement.action in ("ack", "wait"):
            acks.append(message.ack_id)
            if settlement.action == "wait":
                log.warning(
                    "work item waits for its integration (integration=%s patient=%s kind=%s)",
                    item.integration_id,
                    item.patient_id,
                    settlement.kind,
                )
        elif settlement.action == "dead_letter":
            data = None
            if outcome.plan is not None:
                # Keep the computed plan so a replay need not ask the agent again (also a plan
                # the validator refused: a fixed target declaration may accept it on replay).
                data = (
                    item.model_copy(
                        update={"plan": outcome.plan, "plan_entry_hash": outcome.entry_hash}
                    )
                    .model_dump_json()
                    .encode()
                )
            self._dead_letter(
                message, settlement.kind or "error", settlement.reason or "", data, item
            )
            acks.append(message.ack_id)
            log.error(
                "work item dead-lettered (integration=%s patient=%s kind=%s)",
                item.integration_id,
                item.patient_id,
                settlement.kind,
            )
        else:
            delay = redelivery_delay(message.delivery_attempt, settlement.retry_after)
            self.queue.nack(WORK_SUBSCRIPTION, [message.ack_id], delay)

    def _stage_again(self, item: WorkItem) -> bool:
        """Put the item's patient back in its integration's pending set (the next flush of the
        integration publishes it again); False when the state store refused."""
        try:
            self.state.add_pending(
                item.integration_id,
                [
                    PendingPatient(
                        patient_id=item.patient_id,
                        dirty_since=item.dirty_since,
                        reasons=sorted({*item.reasons, "waiting"}),
                    )
                ],
            )
        except Exception as exc:  # noqa: BLE001 - then the queue keeps it (nack)
            log.warning(
                "could not stage waiting item again (integration=%s patient=%s: %s)",
                item.integration_id,
                item.patient_id,
                type(exc).__name__,
            )
            return False
        return True

    def _decide(self, message: Message, outcome: Outcome) -> Settlement:
        exc = outcome.error
        if outcome.status != "failed" or exc is None:
            return Settlement("ack")
        kind = exc.kind if isinstance(exc, HealthieSyncError) else "unexpected"
        # Error texts are built from ids only (see app.core.errors); never log payloads here.
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, SkippableError):
            return Settlement("ack", kind, reason)
        if isinstance(exc, ConfigurationError):
            # The integration cannot work (a secret, its plan, its file): nothing to retry
            # until a person fixes it, and nothing wrong with the item.
            return Settlement("wait", kind, reason)
        last = message.delivery_attempt >= self.max_attempts
        if isinstance(exc, CircuitOpen) and last:
            return Settlement("wait", kind, reason)  # the service kept failing, not the item
        if isinstance(exc, FatalError) or last:
            return Settlement("dead_letter", kind, reason)
        if not isinstance(exc, HealthieSyncError):
            log.error(
                "unexpected failure (integration=%s patient=%s)",
                outcome.item.integration_id,
                outcome.item.patient_id,
                exc_info=exc,
            )
        retry_after = getattr(exc, "retry_after", None)
        return Settlement("nack", kind, reason, retry_after)

    def _dead_letter(
        self,
        message: Message,
        kind: str,
        reason: str,
        data: bytes | None = None,
        item: WorkItem | None = None,
    ) -> None:
        at = datetime.now(UTC)
        attributes = dict(message.attributes)
        attributes.update(
            {
                "error_kind": kind,
                "error": reason[:500],
                "delivery_attempt": str(message.delivery_attempt),
                "dead_lettered_at": at.isoformat(),
            }
        )
        version = deadletters.stamp_rules_version(
            self.clients_for, item.integration_id if item else None
        )
        if version is not None:
            attributes["rules_version"] = version
        body = data if data is not None else message.data
        message_id = self.queue.publish(WORK_DLQ_TOPIC, body, attributes)
        deadletters.record(self.state, message_id, body, attributes, at)


def _sum(counts: Iterable[Counts]) -> Counts:
    total = Counts()
    for c in counts:
        total = total.add(c)
    return total


def process_batch(runtime: Runtime, messages: list[Message]) -> Counts:
    """Process one pulled batch with the runtime's consumer (see :class:`Consumer`)."""
    return Consumer.from_runtime(runtime).process_batch(messages)


def drain(
    runtime: Runtime,
    *,
    batch_size: int = 50,
    on_batch: Callable[[Counts], None] | None = None,
    idle_timeout: float = 0.0,
) -> Counts:
    """Process work until the subscription has nothing visible for ``idle_timeout`` seconds.
    An integration's configuration error is its items' outcome (they wait); only one of the
    queue itself (no work subscription, no credentials) raises."""
    consumer = Consumer.from_runtime(runtime)
    total = Counts()
    idle_since = time.monotonic()
    while True:
        messages = runtime.queue.pull(WORK_SUBSCRIPTION, batch_size)
        if not messages:
            if time.monotonic() - idle_since >= idle_timeout:
                return total
            time.sleep(0.05)
            continue
        idle_since = time.monotonic()
        counts = consumer.process_batch(messages)
        total = total.add(counts)
        if on_batch is not None:
            on_batch(counts)
