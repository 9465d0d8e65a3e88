"""The queue contract every backend satisfies (tests/contracts/test_queue_contract.py runs it on
each).

Semantics follow Google Cloud Pub/Sub so the embedded backend never hides a production surprise:
publishing to a topic fans out to every subscription whose attribute filter matches; a pulled
message is leased for the subscription's ack deadline, which its holder may move (``extend``,
a heartbeat, never counted as a delivery); unacked or nacked messages come back with
``delivery_attempt`` incremented; after ``max_delivery_attempts`` a message is forwarded to the
subscription's dead-letter topic instead of being delivered again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Message:
    """One delivery of a published message to one subscription."""

    message_id: str
    data: bytes
    attributes: Mapping[str, str]
    ack_id: str
    delivery_attempt: int
    publish_time: datetime


@dataclass(frozen=True)
class SubscriptionSpec:
    """A subscription and its delivery policy."""

    name: str
    topic: str
    filter: Mapping[str, str] = field(default_factory=dict)  # attribute equality, all must hold
    ack_deadline_seconds: int = 60
    max_delivery_attempts: int | None = None
    dead_letter_topic: str | None = None
    retention_seconds: int = 7 * 24 * 3600


class Queue(Protocol):
    """A durable topic/subscription queue."""

    def ensure_topic(self, topic: str) -> None:
        """Create ``topic`` if it does not exist (idempotent)."""
        ...

    def ensure_subscription(self, spec: SubscriptionSpec) -> None:
        """Create the subscription if it does not exist (idempotent)."""
        ...

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Publish one message; returns only after it is durably stored (its message id).

        Raises QueueUnavailable when the publish could not be confirmed.
        """
        ...

    def publish_many(
        self, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[str]:
        """Publish several messages; returns after all are durably stored."""
        ...

    def pull(self, subscription: str, max_messages: int = 100) -> list[Message]:
        """Lease up to ``max_messages`` available messages (may return fewer, or none)."""
        ...

    def ack(self, subscription: str, ack_ids: Sequence[str]) -> None:
        """Acknowledge: the messages are done and will not be delivered again."""
        ...

    def nack(self, subscription: str, ack_ids: Sequence[str], delay_seconds: float = 0) -> None:
        """Give the messages back for redelivery after ``delay_seconds``."""
        ...

    def extend(self, subscription: str, ack_ids: Sequence[str], seconds: float) -> None:
        """Keep the leased messages invisible for ``seconds`` from now, shorter or longer
        than the ack deadline they were pulled with: Pub/Sub's ``modifyAckDeadline``, at most
        600 s per call. A holder heartbeats with it (a short horizon, renewed while it works,
        e.g. on a Message Batch pending for hours), so a holder that dies frees its messages
        within one horizon. An extension is not a delivery: ``delivery_attempt`` counts pulls
        only. Acked, nacked or re-leased ack ids are ignored."""
        ...

    def close(self) -> None:
        """Release connections; the queue's contents stay."""
        ...


@runtime_checkable
class SubmittingQueue(Protocol):
    """A queue that can publish without blocking the caller's thread (optional capability)."""

    def submit_many(
        self, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> Future[list[str]]:
        """Start publishing; the future resolves with the ids once all are durably stored."""
        ...


@runtime_checkable
class CountingQueue(Protocol):
    """A queue that can count a subscription's messages without leasing them (optional
    capability: the embedded queue has it; Pub/Sub reports backlog only through Cloud
    Monitoring, so ``PubSubQueue`` does not). ``dlq list`` uses it to notice dead letters the
    index lacks (``workers.deadletters``)."""

    def depth(self, subscription: str) -> int:
        """Messages held for ``subscription``, leased or not; reads only."""
        ...
