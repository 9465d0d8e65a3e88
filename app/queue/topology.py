"""Names of the engine's topics and subscriptions, and the specs that create them."""

from __future__ import annotations

from app.core.models import Cadence
from app.core.settings import Settings
from app.queue.base import Queue, SubscriptionSpec

DIRTY_TOPIC = "dirty"
WORK_TOPIC = "work"
WORK_SUBSCRIPTION = "work"
WORK_DLQ_TOPIC = "work-dlq"
WORK_DLQ_SUBSCRIPTION = "work-dlq"

# Long enough that a weekly cadence never loses a mark between flushes (Pub/Sub's maximum).
DIRTY_RETENTION_SECONDS = 7 * 24 * 3600


def dirty_subscription(cadence: Cadence) -> str:
    """The subscription holding dirty marks of integrations on ``cadence``."""
    return f"dirty-{cadence.value.replace('_', '-')}"


def subscriptions(
    work_max_delivery_attempts: int = 5,
    *,
    work_ack_deadline_seconds: int = 300,
    dirty_ack_deadline_seconds: int = 600,
) -> list[SubscriptionSpec]:
    """Every subscription the engine needs, per cadence for dirty marks."""
    specs = [
        SubscriptionSpec(
            name=dirty_subscription(c),
            topic=DIRTY_TOPIC,
            filter={"cadence": c.value},
            ack_deadline_seconds=dirty_ack_deadline_seconds,
            retention_seconds=DIRTY_RETENTION_SECONDS,
        )
        for c in Cadence
    ]
    specs.append(
        SubscriptionSpec(
            name=WORK_SUBSCRIPTION,
            topic=WORK_TOPIC,
            ack_deadline_seconds=work_ack_deadline_seconds,
            max_delivery_attempts=work_max_delivery_attempts,
            dead_letter_topic=WORK_DLQ_TOPIC,
        )
    )
    specs.append(SubscriptionSpec(name=WORK_DLQ_SUBSCRIPTION, topic=WORK_DLQ_TOPIC))
    return specs


def ensure_topology(
    queue: Queue,
    work_max_delivery_attempts: int = 5,
    *,
    work_ack_deadline_seconds: int = 300,
    dirty_ack_deadline_seconds: int = 600,
) -> None:
    """Create every topic and subscription (idempotent; safe at every start-up)."""
    for topic in (DIRTY_TOPIC, WORK_TOPIC, WORK_DLQ_TOPIC):
        queue.ensure_topic(topic)
    for spec in subscriptions(
        work_max_delivery_attempts,
        work_ack_deadline_seconds=work_ack_deadline_seconds,
        dirty_ack_deadline_seconds=dirty_ack_deadline_seconds,
    ):
        queue.ensure_subscription(spec)


def ensure_topology_for(queue: Queue, settings: Settings) -> None:
    """``ensure_topology`` with the deadlines and attempts the settings name."""
    ensure_topology(
        queue,
        settings.work_max_delivery_attempts,
        work_ack_deadline_seconds=settings.work_ack_deadline_seconds,
        dirty_ack_deadline_seconds=settings.dirty_ack_deadline_seconds,
    )
