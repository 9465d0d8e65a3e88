"""Pull work items, run them through the pipeline, and settle every one: ack, nack or
dead-letter happen here and nowhere else.

::

    pull ─▶ decode ─▶ middleware.before_batch ─▶ workers.pipeline.run ─▶ settle each
                      (patient leases: busy          (fetch → prepare →     │
                       items come back later)          decide → write →     ▼
                                                       record)          middleware.after_item
                                                                        (audit, tallies), then
                                                                        the queue action
                      middleware.after_batch (release leases, add the run counts)

=================  ===========================================================
outcome             what happens to the work item
=================  ===========================================================
written, skipped    ack; counts ``processed`` (and ``writes``)
unchanged           ack; counts ``skipped_unchanged``
SkippableError      ack, recorded in the audit log
RetriableError      nack with back-off (``app.resilience.retry.redelivery_delay``);
                    dead-lettered with the reason once the item has used its
                    delivery attempts
FatalError          dead-lettered now with the reason (and its plan, if decided)
ConfigurationError  nack (kept), and the consumer stops: nothing will work until fixed
anything else       treated as retriable (a bug must not lose work), logged
=================  ===========================================================

A dead letter is published to ``work-dlq`` and then indexed in the state store, stamped with
the integration's rules version (``workers.deadletters``: how ``dlq list`` reads without
leasing, and why a failed index write does not stop the ack).

Cross-cutting steps are middleware (``workers.middleware``), in the spirit of dramatiq's: each
hook is small and sees ids, kinds and counts, never a patient value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import ValidationError

from app.core.errors import ConfigurationError, FatalError, HealthieSyncError, SkippableError
from app.core.models import Counts, WorkItem
from app.queue.base import Message, Queue
from app.queue.topology import WORK_DLQ_TOPIC, WORK_SUBSCRIPTION
from app.resilience.retry import redelivery_delay
from app.service.runtime import IntegrationClients, Runtime
from app.state.base import StateStore
from workers import deadletters, pipeline
from workers.middleware import AuditTrail, Middleware, PatientLeases, RunTally, counts_of
from workers.pipeline import Outcome

log = logging.getLogger(__name__)

Action = Literal["ack", "nack", "dead_letter"]


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
        middleware: Sequence[Middleware] | None = None,
    ) -> None:
        self.queue = queue
        self.state = state
        self.clients_for = clients_for
        self.max_attempts = max_attempts
        self.middleware: list[Middleware] = (
            list(middleware)
            if middleware is not None
            else [PatientLeases(state, lease_seconds), AuditTrail(state), RunTally(state)]
        )

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> Consumer:
        """A consumer on the runtime's queue, state and clients, with the standard middleware."""
        return cls(
            runtime.queue,
            runtime.state,
            runtime.clients,
            max_attempts=runtime.settings.work_max_delivery_attempts,
            lease_seconds=float(runtime.settings.work_ack_deadline_seconds),
        )

    def process_batch(self, messages: Sequence[Message]) -> Counts:
        """Process one pulled batch; every message is acked, nacked or dead-lettered.

        Raises ConfigurationError (after settling the batch) when one item met it."""
        total = Counts()
        deliveries: list[Delivery] = []
        for message in messages:
            try:
                deliveries.append(Delivery(message, WorkItem.model_validate_json(message.data)))
            except ValidationError:
                self._dead_letter(message, "invalid_message", "work item does not decode")
                self.queue.ack(WORK_SUBSCRIPTION, [message.ack_id])
                total = total.add(Counts(dead_lettered=1))
        stop: ConfigurationError | None = None
        try:
            for mw in self.middleware:
                kept = {id(item) for item in mw.before_batch([d.item for d in deliveries])}
                busy = [d for d in deliveries if id(d.item) not in kept]
                if busy:
                    deliveries = [d for d in deliveries if id(d.item) in kept]
                    self.queue.nack(
                        WORK_SUBSCRIPTION, [d.message.ack_id for d in busy], BUSY_RETRY_SECONDS
                    )
            items = [d.item for d in deliveries]
            for i, outcome in pipeline.run(items, self.clients_for, self.state):
                total = total.add(self._settle(deliveries[i], outcome))
                if isinstance(outcome.error, ConfigurationError):
                    stop = outcome.error
        finally:
            for mw in reversed(self.middleware):
                mw.after_batch()
        if stop is not None:
            raise stop
        return total

    def _settle(self, delivery: Delivery, outcome: Outcome) -> Counts:
        settlement = self._decide(delivery.message, outcome)
        for mw in self.middleware:
            mw.after_item(outcome, settlement.action, settlement.kind)
        message, item = delivery.message, delivery.item
        if settlement.action == "ack":
            self.queue.ack(WORK_SUBSCRIPTION, [message.ack_id])
        elif settlement.action == "dead_letter":
            data = None
            if outcome.plan is not None:
                # Keep the computed plan so a replay need not ask the agent again.
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
            self.queue.ack(WORK_SUBSCRIPTION, [message.ack_id])
            log.error(
                "work item dead-lettered (integration=%s patient=%s kind=%s)",
                item.integration_id,
                item.patient_id,
                settlement.kind,
            )
        else:
            delay = redelivery_delay(message.delivery_attempt, settlement.retry_after)
            self.queue.nack(WORK_SUBSCRIPTION, [message.ack_id], delay)
        return counts_of(outcome, settlement.action)

    def _decide(self, message: Message, outcome: Outcome) -> Settlement:
        exc = outcome.error
        if outcome.status != "failed" or exc is None:
            return Settlement("ack")
        kind = exc.kind if isinstance(exc, HealthieSyncError) else "unexpected"
        # Error texts are built from ids only (see app.core.errors); never log payloads here.
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, SkippableError):
            return Settlement("ack", kind, reason)
        if isinstance(exc, FatalError) or (
            not isinstance(exc, ConfigurationError)
            and message.delivery_attempt >= self.max_attempts
        ):
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
    Raises ConfigurationError when an item met one (its message stays queued)."""
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
