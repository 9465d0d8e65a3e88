"""Pull work items and map every outcome to ack, nack or dead-letter, in exactly one place.

=================  ===========================================================
error kind          what happens to the work item
=================  ===========================================================
(none)              ack; counts ``processed`` or ``skipped_unchanged``
SkippableError      ack, recorded in the audit log
RetriableError      nack with back-off; dead-lettered with the reason once the
                    item has used its delivery attempts
FatalError          dead-lettered now with the reason
ConfigurationError  nack (kept), and the loop stops: nothing will work until fixed
anything else       treated as retriable (a bug must not lose work), logged
=================  ===========================================================
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import ValidationError

from app.errors import (
    ConfigurationError,
    FatalError,
    HealthieSyncError,
    RetriableError,
    SkippableError,
)
from app.models import Counts, WorkItem
from app.queue.base import Message
from app.queue.topology import WORK_DLQ_TOPIC, WORK_SUBSCRIPTION
from app.runtime import Runtime
from app.state.base import AuditRecord
from workers.processor import ItemFailed, Prepared, decide_all, fetch_entries, finish, prepare

log = logging.getLogger(__name__)


class WorkerStopped(Exception):
    """The loop stopped on a configuration error; the message says which."""


def _backoff(attempt: int, retry_after: float | None) -> float:
    return max(retry_after or 0.0, min(300.0, 2.0 ** min(attempt, 8)))


def _dead_letter(
    runtime: Runtime, message: Message, kind: str, reason: str, data: bytes | None = None
) -> None:
    attributes = dict(message.attributes)
    attributes.update(
        {
            "error_kind": kind,
            "error": reason[:500],
            "delivery_attempt": str(message.delivery_attempt),
            "dead_lettered_at": datetime.now(UTC).isoformat(),
        }
    )
    runtime.queue.publish(WORK_DLQ_TOPIC, data if data is not None else message.data, attributes)


class Tally:
    """Counts of one batch, in total and per run (the run of each item's flush)."""

    def __init__(self) -> None:
        self.total = Counts()
        self.per_run: dict[tuple[str, str], Counts] = {}

    def add(self, item: WorkItem | None, **deltas: int) -> None:
        """Count outcomes, for the batch and for the item's run."""
        delta = Counts(**deltas)
        self.total = self.total.add(delta)
        if item is not None:
            key = (item.integration_id, f"{item.flush_id}-{item.integration_id}")
            self.per_run[key] = self.per_run.get(key, Counts()).add(delta)


def process_batch(runtime: Runtime, messages: list[Message]) -> Counts:
    """Process one pulled batch; every message is acked, nacked or dead-lettered. Each run's
    record gets its items' counts added (workers in many processes report into one run)."""
    tally = Tally()
    try:
        _process_batch(runtime, messages, tally)
    finally:
        for (integration_id, run_id), counts in tally.per_run.items():
            runtime.state.add_run_counts(integration_id, run_id, counts)
    return tally.total


def _process_batch(runtime: Runtime, messages: list[Message], counts: Tally) -> None:
    queue = runtime.queue
    max_attempts = runtime.settings.work_max_delivery_attempts
    items: list[tuple[Message, WorkItem]] = []
    for message in messages:
        try:
            items.append((message, WorkItem.model_validate_json(message.data)))
        except ValidationError:
            _dead_letter(runtime, message, "invalid_message", "work item does not decode")
            queue.ack(WORK_SUBSCRIPTION, [message.ack_id])
            counts.add(None, dead_lettered=1)
    if not items:
        return
    items, leases = _lease_patients(runtime, items)
    try:
        _process_leased(runtime, items, counts, max_attempts)
    finally:
        for name, owner in leases:
            runtime.state.release_lease(name, owner)


BUSY_RETRY_SECONDS = 5.0


def _lease_patients(
    runtime: Runtime, items: list[tuple[Message, WorkItem]]
) -> tuple[list[tuple[Message, WorkItem]], list[tuple[str, str]]]:
    """Lease each item's patient so no two workers (and no two items of one batch) process the
    same patient at once; items whose patient is busy go back to the queue for a moment."""
    owner = uuid.uuid4().hex
    ttl = float(runtime.settings.work_ack_deadline_seconds)
    kept: list[tuple[Message, WorkItem]] = []
    leases: list[tuple[str, str]] = []
    busy: list[str] = []
    seen: set[str] = set()
    for message, item in items:
        name = f"patient:{item.integration_id}:{item.patient_id}"
        if name in seen or not runtime.state.try_lease(name, owner, ttl):
            busy.append(message.ack_id)
            continue
        seen.add(name)
        leases.append((name, owner))
        kept.append((message, item))
    if busy:
        runtime.queue.nack(WORK_SUBSCRIPTION, busy, BUSY_RETRY_SECONDS)
    return kept, leases


def _process_leased(
    runtime: Runtime,
    items: list[tuple[Message, WorkItem]],
    counts: Tally,
    max_attempts: int,
) -> None:
    queue = runtime.queue
    if not items:
        return
    try:
        entries = fetch_entries(runtime, [item for _, item in items])
    except HealthieSyncError as exc:
        for message, item in items:
            _settle(runtime, message, item, exc, counts, max_attempts)
        if isinstance(exc, ConfigurationError):
            raise WorkerStopped(str(exc)) from exc
        return
    stop: ConfigurationError | None = None

    def failed(message: Message, item: WorkItem, exc: Exception) -> None:
        nonlocal stop
        _settle(runtime, message, item, exc, counts, max_attempts)
        cause = exc.cause if isinstance(exc, ItemFailed) else exc
        if isinstance(cause, ConfigurationError):
            stop = cause

    waiting: list[tuple[Message, Prepared]] = []
    for message, item in items:
        try:
            prepared = prepare(runtime, item, entries.get((item.integration_id, item.patient_id)))
        except Exception as exc:  # noqa: BLE001 - every failure is classified in _settle
            failed(message, item, exc)
            continue
        if prepared is None:
            queue.ack(WORK_SUBSCRIPTION, [message.ack_id])
            counts.add(item, skipped_unchanged=1)
        else:
            waiting.append((message, prepared))
    try:
        plans = decide_all(runtime, [p for _, p in waiting])
    except Exception as exc:  # noqa: BLE001 - the agent failed as a whole: every item shares it
        plans = [exc] * len(waiting)
    for (message, prepared), plan in zip(waiting, plans, strict=True):
        if isinstance(plan, Exception):
            failed(message, prepared.item, plan)
            continue
        try:
            result = finish(runtime, prepared, plan)
        except Exception as exc:  # noqa: BLE001 - every failure is classified in _settle
            failed(message, prepared.item, exc)
            continue
        queue.ack(WORK_SUBSCRIPTION, [message.ack_id])
        counts.add(prepared.item, processed=1, writes=result.writes)
    if stop is not None:
        raise WorkerStopped(str(stop)) from stop


def _settle(
    runtime: Runtime,
    message: Message,
    item: WorkItem,
    exc: Exception,
    counts: Tally,
    max_attempts: int,
) -> None:
    queue = runtime.queue
    dead_data: bytes | None = None
    if isinstance(exc, ItemFailed):
        # Keep the computed plan with the dead letter so a replay need not ask the agent again.
        dead_data = item.model_copy(
            update={"plan": exc.plan, "plan_entry_hash": exc.entry_hash}
        ).model_dump_json().encode()
        exc = exc.cause
    kind = exc.kind if isinstance(exc, HealthieSyncError) else "unexpected"
    # Error texts are built from ids only (see app.errors); still, never log payloads here.
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SkippableError):
        runtime.state.append_audit(
            AuditRecord(
                integration_id=item.integration_id,
                patient_id=item.patient_id,
                run_id=item.flush_id,
                at=datetime.now(UTC),
                outcome=f"skipped:{kind}",
                detail=reason[:300],
            )
        )
        queue.ack(WORK_SUBSCRIPTION, [message.ack_id])
        return
    if isinstance(exc, FatalError) or (
        not isinstance(exc, ConfigurationError) and message.delivery_attempt >= max_attempts
    ):
        _dead_letter(runtime, message, kind, reason, dead_data)
        queue.ack(WORK_SUBSCRIPTION, [message.ack_id])
        counts.add(item, dead_lettered=1)
        log.error("work item dead-lettered (integration=%s patient=%s kind=%s)",
                  item.integration_id, item.patient_id, kind)
        return
    retry_after = exc.retry_after if isinstance(exc, RetriableError) else None
    if not isinstance(exc, HealthieSyncError):
        log.exception("unexpected failure (integration=%s patient=%s)",
                      item.integration_id, item.patient_id)
    queue.nack(WORK_SUBSCRIPTION, [message.ack_id], _backoff(message.delivery_attempt, retry_after))


def drain(
    runtime: Runtime,
    *,
    batch_size: int = 50,
    on_batch: Callable[[Counts], None] | None = None,
    idle_timeout: float = 0.0,
) -> Counts:
    """Process work until the subscription has nothing visible for ``idle_timeout`` seconds."""
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
        counts = process_batch(runtime, messages)
        total = total.add(counts)
        if on_batch is not None:
            on_batch(counts)
