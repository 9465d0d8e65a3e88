"""The dead-letter index: how dead letters are listed without touching the queue.

A queue cannot show its messages without leasing them: a Pub/Sub pull leases each message for
the ack deadline (hidden from everyone else until given back, or until the deadline if the
reader dies) and, on a subscription with a dead-letter policy, counts a delivery attempt; the
embedded queue copies that. So every dead letter is kept twice:

* **on the queue** (topic and subscription ``work-dlq``): the message, carrying the work item
  and its plan. This is the truth, and what a replay consumes;
* **in the state store** (``StateStore.put_dead_letter``): a :class:`~app.state.base.DeadLetter`
  entry (ids, kind, reason, attempts, time, whether a plan is stored, the rules version), keyed
  by the message's id on ``work-dlq``. ``dlq list`` and a replay preview read only this.

Writes happen in an order that leaves every failure on the safe side:

1. the consumer publishes the dead letter (the publish returns its message id), then indexes
   it (:func:`record`), then acks the work message. A failed index write is logged and does
   not stop the ack: the dead letter is stored, only not yet listed;
2. a replay publishes the new work item, removes the entry, then acks the dead letter.

So the index never lists a message the queue lost, except past the queue's retention (7 days),
and a dead letter can be missing from the index in three ways only:

* its index write failed (state store unavailable at that moment);
* the queue dead-lettered it by itself (a worker died on the item ``max_delivery_attempts``
  times, so no consumer saw it fail);
* a replay removed its entry and died before the ack (it comes back after the ack deadline).

All three are repaired by :func:`reindex` (``healthie-sync dlq reindex``): it leases every dead
letter for a moment, indexes the ones missing, gives all back at once, and prunes entries older
than the retention whose message is gone. A ``dlq replay --yes`` indexes the unindexed ones it
meets while scanning too. Neither is an inspection: both take leases, on purpose.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ValidationError

from app.core.errors import HealthieSyncError
from app.core.models import WorkItem
from app.queue.base import Message, Queue
from app.queue.topology import WORK_DLQ_SUBSCRIPTION, subscriptions
from app.service.runtime import IntegrationClients
from app.state.base import DeadLetter, StateStore
from workers.rules import rules_version

log = logging.getLogger(__name__)

#: Pull size of a scan of the dead-letter subscription.
SCAN_BATCH = 500


def describe(
    message_id: str, data: bytes, attributes: Mapping[str, str], published: datetime
) -> tuple[DeadLetter, WorkItem | None]:
    """The index entry for a dead-letter message, and the work item it carries (None when the
    data does not decode: such an entry has an empty ``patient_id`` and cannot be replayed)."""
    try:
        item: WorkItem | None = WorkItem.model_validate_json(data)
    except ValidationError:
        item = None
    raw_at = attributes.get("dead_lettered_at")
    try:
        # A dead letter the queue forwarded itself (a worker kept dying) has no stamp of ours;
        # its publish time on the dead-letter topic is when it was dead-lettered.
        at = datetime.fromisoformat(raw_at) if raw_at else published
    except ValueError:
        at = published
    attempts = (
        attributes.get("delivery_attempt")
        or attributes.get("dead_letter_delivery_attempts")  # forwarded by the SQLite queue
        or attributes.get("CloudPubSubDeadLetterSourceDeliveryCount")  # forwarded by Pub/Sub
        or "0"
    )
    dead = DeadLetter(
        message_id=message_id,
        integration_id=item.integration_id if item else attributes.get("integration", ""),
        patient_id=item.patient_id if item else "",
        error_kind=attributes.get("error_kind", "max_attempts"),
        error=attributes.get("error", "delivery attempts exhausted"),
        delivery_attempt=int(attempts) if attempts.isdigit() else 0,
        dead_lettered_at=at if at.tzinfo else at.replace(tzinfo=UTC),
        has_plan=item is not None and item.plan is not None,
        plan_entry_hash=item.plan_entry_hash if item else None,
        rules_version=attributes.get("rules_version") or None,
        replay_of=item.replay_of if item else None,
    )
    return dead, item


def describe_message(message: Message) -> tuple[DeadLetter, WorkItem | None]:
    """:func:`describe` for a message pulled from the dead-letter subscription."""
    return describe(message.message_id, message.data, message.attributes, message.publish_time)


def record(
    state: StateStore,
    message_id: str,
    data: bytes,
    attributes: Mapping[str, str],
    published: datetime,
) -> bool:
    """Index a dead letter just published; False (logged) when the write failed, which
    :func:`reindex` repairs. Never raises an ``Exception``: the dead letter is already stored,
    and losing its listing must not make the caller redo the dead-lettering."""
    dead, _ = describe(message_id, data, attributes, published)
    try:
        state.put_dead_letter(dead)
    except Exception as exc:  # noqa: BLE001 - the message is safe on the queue; see above
        log.warning(
            "dead letter %s not indexed (%s); `healthie-sync dlq reindex` lists it",
            message_id,
            type(exc).__name__,
        )
        return False
    return True


def stamp_rules_version(
    clients_for: Callable[[str], IntegrationClients], integration_id: str | None
) -> str | None:
    """The integration's current ``workers.rules.rules_version``, or None when it cannot be
    computed (unknown integration, unreadable rules): a replay then decides again."""
    if not integration_id:
        return None
    try:
        return rules_version(clients_for(integration_id).integration)
    except HealthieSyncError:
        return None


def lease_batches(queue: Queue, limit: int) -> Iterator[list[Message]]:
    """Lease the dead-letter subscription's messages, batch by batch, until it has none
    visible or ``limit`` were read. The caller acks or gives back every message of every
    batch it was handed."""
    seen = 0
    while seen < limit:
        batch = queue.pull(WORK_DLQ_SUBSCRIPTION, min(SCAN_BATCH, limit - seen))
        if not batch:
            return
        seen += len(batch)
        yield batch


def retention() -> timedelta:
    """How long the dead-letter subscription keeps a message (its spec in the topology)."""
    spec = next(s for s in subscriptions() if s.name == WORK_DLQ_SUBSCRIPTION)
    return timedelta(seconds=spec.retention_seconds)


class ReindexReport(BaseModel):
    """What a reindex found: messages scanned, entries added and pruned."""

    scanned: int = 0
    indexed: int = 0
    pruned: int = 0
    complete: bool = True  # False when ``limit`` stopped the scan (nothing was pruned then)


def reindex(queue: Queue, state: StateStore, *, limit: int = 100_000) -> ReindexReport:
    """Index every dead letter on the queue that the index lacks, and prune entries older than
    the retention whose message is gone. Leases each message for the length of the scan and
    gives them all back at the end (also when the scan fails)."""
    report = ReindexReport()
    known = {d.message_id for d in state.list_dead_letters(limit=limit)}
    seen: set[str] = set()
    leased: list[str] = []
    try:
        for batch in lease_batches(queue, limit):
            leased.extend(m.ack_id for m in batch)
            for message in batch:
                report.scanned += 1
                seen.add(message.message_id)
                if message.message_id not in known:
                    dead, _ = describe_message(message)
                    state.put_dead_letter(dead)
                    report.indexed += 1
    finally:
        if leased:
            queue.nack(WORK_DLQ_SUBSCRIPTION, leased)
    report.complete = report.scanned < limit
    if report.complete:
        cutoff = datetime.now(UTC) - retention()
        gone = [
            d.message_id
            for d in state.list_dead_letters(limit=limit)
            if d.message_id not in seen and d.dead_lettered_at < cutoff
        ]
        state.remove_dead_letters(gone)
        report.pruned = len(gone)
    return report
