"""``POST /webhooks/hubspot/{integration_id}``: verify HubSpot's v3 signature, publish one
contact change per changed contact for the reverse direction, answer 202.

The handler never calls HubSpot or Healthie. Status codes, in the order checked: 404 unknown
integration or one without ``[reverse]`` (no hint about others), 415 not JSON, 413 body too
large, 503 the client secret cannot be read (our misconfiguration: HubSpot retries), 401 bad,
missing or stale signature, 400 malformed body, 503 publish failed, 202 accepted.

HubSpot sends a JSON array of up to 100 events (https://developers.hubspot.com/docs/api/
webhooks: ``objectId``, ``propertyName``, ``subscriptionType``, ``occurredAt`` in epoch ms,
...). A ``contact.propertyChange`` of a property the reverse rules read, a
``contact.creation`` and a ``contact.restore`` (or their ``object.*`` forms for object type
``0-1``) mark the contact; the events of one request are coalesced, one
:class:`ContactChange` per contact, published to ``REVERSE_TOPIC`` with the integration as
attribute. The event's ``propertyValue`` is never kept: the reverse flush reads the contact's
current values (``workers.reverse``), which is also what makes a redelivered event harmless.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Route, Router

from app.core.errors import ConfigurationError, QueueUnavailable
from app.core.reverse_config import ReverseConfig, reverse_of
from app.intake.batcher import PublishBatcher
from app.intake.hubspot_signature import verify_hubspot_signature
from app.intake.receiver import WebhookAccepted, _read_limited
from app.queue.base import Queue, SubscriptionSpec
from app.service.runtime import Runtime

log = logging.getLogger(__name__)

REVERSE_TOPIC = "hubspot-changes"
REVERSE_SUBSCRIPTION = "hubspot-changes"
REVERSE_DLQ_TOPIC = "hubspot-changes-dlq"
CONTACT_TYPE = "0-1"  # HubSpot's object type id of contacts
_MARKING = {"propertyChange", "creation", "restore"}


class ContactChange(BaseModel):
    """A HubSpot contact of an integration changed: which properties (None: any, a new or
    restored contact), and when HubSpot says it happened."""

    model_config = ConfigDict(frozen=True)

    integration_id: str
    contact_id: str = Field(pattern=r"^[0-9]{1,20}$")
    properties: tuple[str, ...] | None = None
    occurred_at: datetime
    received_at: datetime


def reverse_subscriptions(max_delivery_attempts: int = 5) -> list[SubscriptionSpec]:
    """The reverse direction's subscriptions (its work queue and dead letters)."""
    return [
        SubscriptionSpec(
            name=REVERSE_SUBSCRIPTION,
            topic=REVERSE_TOPIC,
            ack_deadline_seconds=300,
            max_delivery_attempts=max_delivery_attempts,
            dead_letter_topic=REVERSE_DLQ_TOPIC,
        ),
        SubscriptionSpec(name=REVERSE_DLQ_TOPIC, topic=REVERSE_DLQ_TOPIC),
    ]


def ensure_reverse_topology(queue: Queue) -> None:
    """Create the reverse topics and subscriptions (idempotent)."""
    for topic in (REVERSE_TOPIC, REVERSE_DLQ_TOPIC):
        queue.ensure_topic(topic)
    for spec in reverse_subscriptions():
        queue.ensure_subscription(spec)


def read_changes(
    integration_id: str, reverse: ReverseConfig, body: bytes, now: datetime
) -> list[ContactChange]:
    """The contact changes of one delivery, one per contact; ValueError when the body is not
    HubSpot's array of events (TypeError for a wrong shape)."""
    events = json.loads(body)
    if not isinstance(events, list):
        raise TypeError("not an array of events")
    read = set(reverse.properties)
    changed: dict[str, set[str] | None] = {}
    when: dict[str, datetime] = {}
    for event in events:
        if not isinstance(event, dict):
            raise TypeError("an event is not an object")
        kind = _kind(event)
        object_id = event.get("objectId")
        if kind not in _MARKING or not isinstance(object_id, int | str):
            continue
        contact = str(object_id)
        if not contact.isdigit() or len(contact) > 20:
            raise ValueError("objectId is not a HubSpot id")
        if kind == "propertyChange":
            prop = event.get("propertyName")
            if prop not in read:
                continue
            if contact not in changed or changed[contact] is not None:
                changed.setdefault(contact, set()).add(str(prop))  # type: ignore[union-attr]
        else:
            changed[contact] = None  # a new or restored contact: every property
        when[contact] = max(when.get(contact, _at(event, now)), _at(event, now))
    return [
        ContactChange(
            integration_id=integration_id,
            contact_id=c,
            properties=tuple(sorted(props)) if props is not None else None,
            occurred_at=when[c],
            received_at=now,
        )
        for c, props in changed.items()
    ]


def _kind(event: dict[str, Any]) -> str | None:
    subscription = event.get("subscriptionType")
    if not isinstance(subscription, str) or "." not in subscription:
        return None
    family, kind = subscription.split(".", 1)
    if family == "contact" or (family == "object" and event.get("objectTypeId") == CONTACT_TYPE):
        return kind
    return None


def _at(event: dict[str, Any], now: datetime) -> datetime:
    occurred = event.get("occurredAt")
    if isinstance(occurred, int) and not isinstance(occurred, bool) and occurred > 0:
        try:
            return datetime.fromtimestamp(occurred / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return now
    return now


def _answer(status: str, marks: int) -> Response:
    body = WebhookAccepted(status=status, marks=marks).model_dump_json()
    return Response(body, status_code=202, media_type="application/json")


def build_router(runtime: Runtime) -> Router:
    """The HubSpot webhook route bound to ``runtime`` (creates the reverse topology)."""
    ensure_reverse_topology(runtime.queue)
    stats = runtime.stats
    batcher = PublishBatcher(runtime.queue, REVERSE_TOPIC)
    secrets: dict[str, str] = {}

    def client_secret(integration_id: str, reverse: ReverseConfig) -> str:
        cached = secrets.get(integration_id)
        if cached is None:
            cached = secrets[integration_id] = runtime.secrets.get(reverse.client_secret)
        return cached

    async def receive(request: Request) -> Response:
        integration_id: str = request.path_params["integration_id"]
        integration = runtime.integrations.get(integration_id)
        reverse = reverse_of(integration) if integration is not None else None
        if reverse is None:
            stats.count("rejected_hubspot_unknown_integration")
            raise HTTPException(404, "not found")
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            stats.count("rejected_hubspot_content_type")
            raise HTTPException(415, "content type must be application/json")
        try:
            body = await _read_limited(request, runtime.settings.max_webhook_body_bytes)
        except HTTPException:
            stats.count("rejected_hubspot_size")
            raise
        try:
            secret = client_secret(integration_id, reverse)
        except ConfigurationError as exc:
            stats.count("hubspot_unconfigured")
            log.error("HubSpot webhook not verifiable for %s: %s", integration_id, exc)  # noqa: TRY400
            raise HTTPException(503, "temporarily unavailable") from None
        uri = reverse.webhook_url or str(request.url)
        if not verify_hubspot_signature(
            secrets=[secret],
            method=request.method,
            uri=uri,
            headers=request.headers,
            body=body,
            now_ms=int(time.time() * 1000),
        ):
            stats.count("rejected_hubspot_signature")
            log.warning("HubSpot webhook rejected: bad signature (integration=%s)", integration_id)
            raise HTTPException(401, "invalid signature")
        try:
            changes = read_changes(integration_id, reverse, body, datetime.now(UTC))
        except (ValueError, TypeError):
            stats.count("rejected_hubspot_malformed")
            raise HTTPException(400, "malformed webhook body") from None
        if not changes:
            stats.count("hubspot_ignored")
            return _answer("ignored", 0)
        attributes = {"integration": integration_id}
        messages = [(c.model_dump_json().encode(), attributes) for c in changes]
        try:
            await batcher.publish(messages)
        except QueueUnavailable:
            stats.count("hubspot_publish_failed")
            log.exception("HubSpot webhook publish failed (integration=%s)", integration_id)
            raise HTTPException(503, "temporarily unavailable") from None
        stats.count("hubspot_accepted")
        return _answer("accepted", len(changes))

    return Router(routes=[Route("/webhooks/hubspot/{integration_id}", receive, methods=["POST"])])
