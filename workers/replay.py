"""Dead-letter inspection and replay, for operators.

Listing leases the dead letters it reads (so one pass sees each once) and gives them all back at
the end. Replay takes the matching ones, publishes each back to the work topic as a WorkItem that
records where it came from (``replay_of``, ``replayed_at``, reason ``replay``), then acknowledges
the dead letter; non-matching ones are given back untouched. A replayed item that carries its
computed WritePlan re-executes it without an agent call when the entry is unchanged since
(``workers.pipeline``). Replays are rate-limited; a preview changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, ValidationError

from app.core.models import WorkItem
from app.queue.base import Message, Queue
from app.queue.topology import WORK_DLQ_SUBSCRIPTION, WORK_TOPIC


class DeadLetter(BaseModel):
    """One dead-lettered work item as an operator sees it (ids and reasons, no PHI)."""

    message_id: str
    integration_id: str
    patient_id: str
    error_kind: str
    error: str
    delivery_attempt: int
    dead_lettered_at: datetime | None
    has_plan: bool
    replay_of: str | None


@dataclass(frozen=True)
class ReplayFilter:
    """Which dead letters to select; every set field must match."""

    integration_id: str | None = None
    patient_id: str | None = None
    error_kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, dead: DeadLetter) -> bool:
        """True when ``dead`` passes every set criterion."""
        at = dead.dead_lettered_at
        return (
            (self.integration_id is None or dead.integration_id == self.integration_id)
            and (self.patient_id is None or dead.patient_id == self.patient_id)
            and (self.error_kind is None or dead.error_kind == self.error_kind)
            and (self.since is None or (at is not None and at >= self.since))
            and (self.until is None or (at is not None and at <= self.until))
        )


class ReplayReport(BaseModel):
    """What a replay (or its preview) selected and did."""

    preview: bool
    scanned: int = 0
    selected: list[DeadLetter] = []
    replayed: int = 0
    undecodable: int = 0


def _describe(message: Message) -> tuple[DeadLetter, WorkItem] | None:
    try:
        item = WorkItem.model_validate_json(message.data)
    except ValidationError:
        return None
    attrs = message.attributes
    raw_at = attrs.get("dead_lettered_at")
    try:
        # A dead letter the queue forwarded itself (a worker kept dying) has no stamp of ours;
        # its publish time on the dead-letter topic is when it was dead-lettered.
        at = datetime.fromisoformat(raw_at) if raw_at else message.publish_time
    except ValueError:
        at = message.publish_time
    attempts = (
        attrs.get("delivery_attempt")
        or attrs.get("dead_letter_delivery_attempts")  # forwarded by the SQLite queue
        or attrs.get("CloudPubSubDeadLetterSourceDeliveryCount")  # forwarded by Pub/Sub
        or "0"
    )
    dead = DeadLetter(
        message_id=message.message_id,
        integration_id=item.integration_id,
        patient_id=item.patient_id,
        error_kind=attrs.get("error_kind", "max_attempts"),
        error=attrs.get("error", "delivery attempts exhausted"),
        delivery_attempt=int(attempts) if attempts.isdigit() else 0,
        dead_lettered_at=at,
        has_plan=item.plan is not None,
        replay_of=item.replay_of,
    )
    return dead, item


def _lease_all(queue: Queue, limit: int) -> Iterator[Message]:
    seen = 0
    while seen < limit:
        batch = queue.pull(WORK_DLQ_SUBSCRIPTION, min(500, limit - seen))
        if not batch:
            return
        seen += len(batch)
        yield from batch


def list_dead_letters(
    queue: Queue, selector: ReplayFilter | None = None, *, limit: int = 10_000
) -> list[DeadLetter]:
    """Dead letters matching ``selector`` (all when None); leaves the queue as it was."""
    return replay(queue, selector or ReplayFilter(), preview=True, limit=limit).selected


def replay(
    queue: Queue,
    selector: ReplayFilter,
    *,
    preview: bool = True,
    rate_per_second: float = 10.0,
    limit: int = 10_000,
) -> ReplayReport:
    """Replay the dead letters ``selector`` matches (or only list them when ``preview``)."""
    report = ReplayReport(preview=preview)
    give_back: list[str] = []
    interval = 1.0 / rate_per_second if rate_per_second > 0 else 0.0
    try:
        for message in _lease_all(queue, limit):
            report.scanned += 1
            described = _describe(message)
            if described is None:
                report.undecodable += 1
                give_back.append(message.ack_id)
                continue
            dead, item = described
            if not selector.matches(dead):
                give_back.append(message.ack_id)
                continue
            report.selected.append(dead)
            if preview:
                give_back.append(message.ack_id)
                continue
            replayed = item.model_copy(
                update={
                    "replay_of": dead.message_id,
                    "replayed_at": datetime.now(UTC),
                    "reasons": (*item.reasons, "replay"),
                }
            )
            queue.publish(
                WORK_TOPIC,
                replayed.model_dump_json().encode(),
                {"integration": item.integration_id, "replay_of": dead.message_id},
            )
            queue.ack(WORK_DLQ_SUBSCRIPTION, [message.ack_id])
            report.replayed += 1
            if interval:
                time.sleep(interval)
    finally:
        if give_back:
            queue.nack(WORK_DLQ_SUBSCRIPTION, give_back)
    return report
