"""Google Cloud Pub/Sub behind the ``Queue`` contract: the production backend.

Names map one to one: topic ``work`` is ``projects/{project}/topics/work`` and subscription
``work`` is ``projects/{project}/subscriptions/work``. Every call is a synchronous unary RPC
(no streaming pull, no background subscriber threads), so the worker loops stay the same code
for both backends. With ``PUBSUB_EMULATOR_HOST`` set, the Google clients talk to the emulator.

How the contract maps onto Pub/Sub, and where it cannot match ``SqliteQueue`` exactly
(tests/contracts/test_queue_contract.py pins these per backend):

* **Limits are clamped, not refused.** Ack deadlines become 10..600 s, ``max_delivery_attempts``
  5..100, retention 10 min..7 days, nack delays 0..600 s (rounded *up* to whole seconds, so a
  message never comes back before the delay asked for), ``max_messages`` 1..1000. A spec asking
  for 2 delivery attempts therefore gets 5 here; ``workers.consumer`` still dead-letters at the
  configured count itself, so the engine's behaviour does not change.
* **delivery_attempt** is filled by Pub/Sub only on subscriptions with a dead-letter policy
  (the engine's ``work`` subscription has one). Elsewhere it is reported as 1 on every
  delivery; counting in-process would be wrong as soon as two workers share a subscription.
* **Dead letters** keep their data and attributes, and Pub/Sub adds
  ``CloudPubSubDeadLetterSourceSubscription`` (the short name), ``…SourceDeliveryCount``,
  ``…SourceSubscriptionProject`` and ``…SourceTopicPublishTime``, where ``SqliteQueue`` adds
  ``dead_letter_source_subscription`` and ``dead_letter_delivery_attempts``. In production,
  forwarding needs IAM grants the emulator does not check: the Pub/Sub service agent
  (``service-PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com``) must be a publisher on the
  dead-letter topic and a subscriber on the source subscription, or nothing is ever forwarded.
* **Filters** are rendered as ``attributes.k = "v" AND …``. The emulator before Cloud SDK 555
  stores a filter but never applies it, so ``pull`` also checks the filter this queue created and
  acknowledges non-matching messages, which is what Pub/Sub itself does with them. Against real
  Pub/Sub that check never fires.
* **pull** is a long poll cut short after ``pull_timeout`` seconds: it returns as soon as some
  messages are available (maybe fewer than are waiting), or ``[]`` when none arrive in time.
  ``return_immediately`` is avoided: Google deprecates it because it answers "empty" while
  messages wait, which would end a flush early. The cost is that an unresponsive server also
  looks empty; an unreachable one raises ``QueueUnavailable``.
* **Delivery is at-least-once; exactly-once is deliberately off.** It would not remove the
  duplicates the engine can actually produce (a publish retried after a lost reply, a flush
  re-run), it makes every ack a call that can fail per message, and it costs throughput and
  latency. Every connector write is an idempotent upsert, so a redelivery is harmless, and the
  embedded backend behaves the same way.
* Subscriptions never expire (Pub/Sub deletes idle ones after 31 days by default, which would
  silently drop a dead-letter subscription nobody has pulled for a month). Message order is
  not guaranteed. Stale ack ids are ignored, as in ``SqliteQueue``; an unknown subscription
  in ``ack``/``nack`` is a ``ConfigurationError`` here, where ``SqliteQueue`` ignores it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions as gexc
from google.auth.exceptions import GoogleAuthError
from google.protobuf import duration_pb2
from google.pubsub_v1 import types

from app.core.errors import ConfigurationError, QueueUnavailable
from app.queue.base import Message, SubscriptionSpec
from app.resilience.retry import Backoff, google_rpc_retry

log = logging.getLogger(__name__)

MIN_ACK_DEADLINE, MAX_ACK_DEADLINE = 10, 600
MIN_DELIVERY_ATTEMPTS, MAX_DELIVERY_ATTEMPTS = 5, 100
MIN_RETENTION, MAX_RETENTION = 600, 7 * 24 * 3600
MAX_PULL, ACK_BATCH = 1000, 1000
_MAX_FILTER_BYTES = 256
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TRANSIENT = (
    gexc.Aborted,
    gexc.InternalServerError,
    gexc.ServiceUnavailable,
    gexc.Unknown,
    gexc.ResourceExhausted,
)
# PublisherClient.publish takes attributes as keyword arguments beside these parameters.
_RESERVED_ATTRIBUTES = frozenset({"topic", "data", "ordering_key", "retry", "timeout"})
# Nothing works until a person fixes the name or the grants: stop and report.
_CONFIGURATION = (gexc.NotFound, gexc.PermissionDenied, gexc.Unauthenticated)


def _literal(text: str) -> str:
    escaped = []
    for ch in text:
        if ch in '"\\':
            escaped.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\x{ord(ch):02x}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def filter_expression(attributes: Mapping[str, str]) -> str:
    """The Pub/Sub filter that holds when every attribute equals its value ("" for none)."""
    terms = [
        f"attributes.{key if _BARE_KEY.fullmatch(key) else _literal(key)} = {_literal(value)}"
        for key, value in sorted(attributes.items())
    ]
    expression = " AND ".join(terms)
    if len(expression.encode()) > _MAX_FILTER_BYTES:
        raise ConfigurationError(f"filter longer than Pub/Sub's 256 bytes: {expression!r}")
    return expression


def _utc(moment: datetime) -> datetime:
    """A plain aware UTC datetime (the client returns a nanosecond-carrying subclass)."""
    moment = moment.astimezone(UTC)
    return datetime.combine(moment.date(), moment.time(), tzinfo=UTC)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


class PubSubQueue:
    """The queue contract on Google Cloud Pub/Sub (or its emulator).

    ``publish_timeout`` bounds how long a publish waits for confirmation; it is also the
    budget for retrying transient errors in every other call. ``pull_timeout`` is how long an
    empty ``pull`` waits for messages. Clients passed in belong to the caller; ``close`` only
    closes the clients this queue built.
    """

    def __init__(
        self,
        *,
        project: str,
        publisher: pubsub_v1.PublisherClient | None = None,
        subscriber: pubsub_v1.SubscriberClient | None = None,
        publish_timeout: float = 30.0,
        pull_timeout: float = 1.0,
    ) -> None:
        self._project = project
        self._owns_publisher = publisher is None
        self._owns_subscriber = subscriber is None
        try:
            self._publisher = pubsub_v1.PublisherClient() if publisher is None else publisher
            self._subscriber = pubsub_v1.SubscriberClient() if subscriber is None else subscriber
        except GoogleAuthError as exc:
            raise ConfigurationError(
                f"no Google credentials for Pub/Sub project {project!r}: {exc}"
            ) from exc
        self._publish_timeout = publish_timeout
        self._pull_timeout = pull_timeout
        self._retry = google_rpc_retry(
            _TRANSIENT,
            backoff=Backoff(initial=0.1, cap=max(0.1, publish_timeout / 4)),
            deadline=publish_timeout,
        )
        # Filters this queue created, checked again on pull (see the module docstring).
        self._filters: dict[str, Mapping[str, str]] = {}
        self._closed = False

    def _topic(self, name: str) -> str:
        return f"projects/{self._project}/topics/{name}"

    def _subscription(self, name: str) -> str:
        return f"projects/{self._project}/subscriptions/{name}"

    def _check_open(self) -> None:
        if self._closed:
            raise QueueUnavailable("the Pub/Sub queue is closed")

    def _call(
        self,
        what: str,
        rpc: Any,
        *,
        tolerate: tuple[type[gexc.GoogleAPIError], ...] = (),
        **kwargs: Any,
    ) -> Any:
        """Run one RPC with bounded retries, converting Google's errors to ours."""
        self._check_open()
        try:
            return rpc(**kwargs, retry=self._retry, timeout=self._publish_timeout)
        except tolerate:
            return None
        except _CONFIGURATION as exc:
            raise ConfigurationError(f"{what}: {exc.message}") from exc
        except gexc.GoogleAPIError as exc:
            raise QueueUnavailable(f"{what} failed: {exc}") from exc

    # -- administration -------------------------------------------------------------------
    def ensure_topic(self, topic: str) -> None:
        """Create ``topic`` if missing."""
        self._call(
            f"create topic {topic!r}",
            self._publisher.create_topic,
            tolerate=(gexc.AlreadyExists,),
            request={"name": self._topic(topic)},
        )

    def ensure_subscription(self, spec: SubscriptionSpec) -> None:
        """Create the subscription if missing; an existing one keeps its settings."""
        expression = filter_expression(spec.filter)
        subscription = types.Subscription(
            name=self._subscription(spec.name),
            topic=self._topic(spec.topic),
            filter=expression,
            ack_deadline_seconds=_clamp(
                spec.ack_deadline_seconds, MIN_ACK_DEADLINE, MAX_ACK_DEADLINE
            ),
            message_retention_duration=duration_pb2.Duration(
                seconds=_clamp(spec.retention_seconds, MIN_RETENTION, MAX_RETENTION)
            ),
            expiration_policy=types.ExpirationPolicy(),  # no ttl: never expires
        )
        if spec.dead_letter_topic and spec.max_delivery_attempts:
            subscription.dead_letter_policy = types.DeadLetterPolicy(
                dead_letter_topic=self._topic(spec.dead_letter_topic),
                max_delivery_attempts=_clamp(
                    spec.max_delivery_attempts, MIN_DELIVERY_ATTEMPTS, MAX_DELIVERY_ATTEMPTS
                ),
            )
        created = self._call(
            f"create subscription {spec.name!r}",
            self._subscriber.create_subscription,
            tolerate=(gexc.AlreadyExists,),
            request=subscription,
        )
        if created is None:
            existing = self._call(
                f"read subscription {spec.name!r}",
                self._subscriber.get_subscription,
                request={"subscription": subscription.name},
            )
            if existing.filter != expression:
                # Filters cannot be changed; check nothing ourselves rather than drop messages
                # the server's own filter lets through.
                log.warning(
                    "subscription %s exists with filter %r, not %r",
                    spec.name,
                    existing.filter,
                    expression,
                )
                self._filters.pop(spec.name, None)
                return
        if spec.filter:
            self._filters[spec.name] = dict(spec.filter)

    # -- publishing -------------------------------------------------------------------------
    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str] | None = None) -> str:
        """Publish one message and wait until Pub/Sub confirms it; returns its id."""
        return self.publish_many(topic, [(data, attributes or {})])[0]

    def publish_many(
        self, topic: str, messages: Sequence[tuple[bytes, Mapping[str, str]]]
    ) -> list[str]:
        """Publish all messages and wait for every confirmation: one Publish RPC per page of
        at most 1,000 messages and 9 MB (Pub/Sub's limits are 1,000 and 10 MB per request).
        The batching client is bypassed on purpose: it costs ~130 us of CPU per message and
        waits up to its batch latency before sending, which a webhook's answer would wait
        for, while the pages here are already batches."""
        self._check_open()
        deadline = time.monotonic() + self._publish_timeout
        path = self._topic(topic)
        for _, attributes in messages:
            reserved = _RESERVED_ATTRIBUTES.intersection(attributes)
            if reserved:
                raise ConfigurationError(
                    f"attribute names {sorted(reserved)} clash with the Pub/Sub client's"
                    " publish() parameters"
                )
        ids: list[str] = []
        try:
            for page in _pages(messages):
                # a page that starts past the deadline gets a token second: the RPC's own
                # DeadlineExceeded then says it was not confirmed
                left = max(0.001, deadline - time.monotonic())
                request = types.PublishRequest.wrap(
                    _PUBLISH_REQUEST(
                        topic=path,
                        messages=[
                            _PUBSUB_MESSAGE(data=bytes(data), attributes=dict(attributes))
                            for data, attributes in page
                        ],
                    )
                )
                reply = self._publisher.api.publish(
                    request=request, retry=self._retry, timeout=left
                )
                ids.extend(reply.message_ids)
        except gexc.NotFound as exc:
            raise ConfigurationError(f"topic {topic!r} does not exist") from exc
        except _CONFIGURATION as exc:
            raise ConfigurationError(f"publish to {topic!r}: {exc.message}") from exc
        except gexc.GoogleAPIError as exc:
            raise QueueUnavailable(f"publish to {topic!r} failed: {exc}") from exc
        except TimeoutError as exc:
            raise QueueUnavailable(
                f"publish to {topic!r} not confirmed within {self._publish_timeout} s"
            ) from exc
        return ids

    # -- consuming --------------------------------------------------------------------------
    def pull(self, subscription: str, max_messages: int = 100) -> list[Message]:
        """Lease up to ``max_messages`` messages, waiting at most ``pull_timeout`` for any."""
        if max_messages < 1:
            return []
        wanted = self._filters.get(subscription)
        while True:
            try:
                self._check_open()
                response = self._subscriber.pull(
                    request={
                        "subscription": self._subscription(subscription),
                        "max_messages": min(max_messages, MAX_PULL),
                    },
                    retry=self._retry,
                    timeout=self._pull_timeout,
                )
            except gexc.DeadlineExceeded:
                return []  # nothing arrived while we waited
            except gexc.NotFound as exc:
                raise ConfigurationError(f"subscription {subscription!r} does not exist") from exc
            except _CONFIGURATION as exc:
                raise ConfigurationError(f"pull from {subscription!r}: {exc.message}") from exc
            except gexc.GoogleAPIError as exc:
                raise QueueUnavailable(f"pull from {subscription!r} failed: {exc}") from exc
            received = list(response.received_messages)
            if wanted is None:
                return [self._message(r) for r in received]
            keep: list[types.ReceivedMessage] = []
            dropped: list[str] = []
            for r in received:
                if self._matches(r.message.attributes, wanted):
                    keep.append(r)
                else:
                    dropped.append(r.ack_id)
            if dropped:
                self.ack(subscription, dropped)
            # All filtered away is not "empty": keep pulling, or a drain would stop early.
            if keep or not received:
                return [self._message(r) for r in keep]

    @staticmethod
    def _matches(attributes: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
        return all(attributes.get(k) == v for k, v in wanted.items())

    @staticmethod
    def _message(received: types.ReceivedMessage) -> Message:
        message = received.message
        return Message(
            message_id=message.message_id,
            data=bytes(message.data),
            attributes=dict(message.attributes),
            ack_id=received.ack_id,
            # Only subscriptions with a dead-letter policy count deliveries; 0 means "not counted".
            delivery_attempt=received.delivery_attempt or 1,
            publish_time=_utc(message.publish_time),
        )

    def ack(self, subscription: str, ack_ids: Sequence[str]) -> None:
        """Acknowledge the messages; stale ack ids are ignored by Pub/Sub."""
        for start in range(0, len(ack_ids), ACK_BATCH):
            self._call(
                f"ack on {subscription!r}",
                self._subscriber.acknowledge,
                request={
                    "subscription": self._subscription(subscription),
                    "ack_ids": list(ack_ids[start : start + ACK_BATCH]),
                },
            )

    def nack(self, subscription: str, ack_ids: Sequence[str], delay_seconds: float = 0) -> None:
        """Redeliver after ``delay_seconds`` (rounded up, at most 600) by cutting the lease."""
        seconds = _clamp(math.ceil(max(0.0, delay_seconds)), 0, MAX_ACK_DEADLINE)
        for start in range(0, len(ack_ids), ACK_BATCH):
            self._call(
                f"nack on {subscription!r}",
                self._subscriber.modify_ack_deadline,
                request={
                    "subscription": self._subscription(subscription),
                    "ack_ids": list(ack_ids[start : start + ACK_BATCH]),
                    "ack_deadline_seconds": seconds,
                },
            )

    def extend(self, subscription: str, ack_ids: Sequence[str], seconds: float) -> None:
        """``modifyAckDeadline`` to ``seconds`` from now (rounded up, 1..600 s: Pub/Sub's
        bounds); stale ack ids are ignored by Pub/Sub."""
        deadline = _clamp(math.ceil(max(1.0, seconds)), 1, MAX_ACK_DEADLINE)
        for start in range(0, len(ack_ids), ACK_BATCH):
            self._call(
                f"extend leases on {subscription!r}",
                self._subscriber.modify_ack_deadline,
                request={
                    "subscription": self._subscription(subscription),
                    "ack_ids": list(ack_ids[start : start + ACK_BATCH]),
                    "ack_deadline_seconds": deadline,
                },
            )

    def close(self) -> None:
        """Close the clients this queue built (idempotent); later calls raise QueueUnavailable.

        Every publish has already been confirmed or reported, so nothing is waiting in the
        publisher's batches.
        """
        if self._closed:
            return
        self._closed = True
        if self._owns_publisher:
            self._publisher.stop()
            self._publisher.transport.close()
        if self._owns_subscriber:
            self._subscriber.close()


#: the protobuf classes behind the Publish RPC (built directly: proto-plus wrapping per
#: message costs more than the publish itself)
_PUBLISH_REQUEST = types.PublishRequest.pb()
_PUBSUB_MESSAGE = types.PubsubMessage.pb()
#: Pub/Sub's limits per Publish request are 1,000 messages and 10 MB; a margin for framing
_PAGE_MESSAGES = 1_000
_PAGE_BYTES = 9_000_000


def _pages(
    messages: Sequence[tuple[bytes, Mapping[str, str]]],
) -> list[Sequence[tuple[bytes, Mapping[str, str]]]]:
    """``messages`` cut into Publish requests within Pub/Sub's per-request limits."""
    pages: list[Sequence[tuple[bytes, Mapping[str, str]]]] = []
    start, size = 0, 0
    for n, (data, attributes) in enumerate(messages):
        cost = len(data) + sum(len(k) + len(v) for k, v in attributes.items()) + 16
        if n > start and (n - start >= _PAGE_MESSAGES or size + cost > _PAGE_BYTES):
            pages.append(messages[start:n])
            start, size = n, 0
        size += cost
    if start < len(messages):
        pages.append(messages[start:])
    return pages
