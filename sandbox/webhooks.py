"""Webhook registrations, events and signed delivery, as Healthie sends them.

A change in :class:`sandbox.core.Sandbox` yields :class:`Event`s; :class:`WebhookEmitter`
POSTs each event, signed by :func:`sandbox.signing.sign_webhook`, to every enabled webhook
subscribed to its type, and records the attempt as a :class:`Delivery` (what ``sentWebhooks``
serves). Delivery is synchronous and never raises: a refused connection or a 500 from the
receiver is recorded, as Healthie records it, and the change that caused it stands.

Payloads are thin (id, type, event, ``changed_fields`` plus the documented extras) and carry
no delivery id, exactly like Healthie's, so receivers must tolerate duplicates.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx2

from sandbox.signing import sign_webhook


@dataclass(frozen=True, slots=True)
class Event:
    """One webhook event; ``extra`` holds documented extras such as ``user_id``."""

    event_type: str
    resource_id: str
    resource_id_type: str
    changed_fields: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()
    recurring: bool = False  # an event about a recurring appointment (off by default)

    @property
    def enum_name(self) -> str:
        """The ``WebhookEventType`` enum name, e.g. ``PATIENT_UPDATED``."""
        return self.event_type.replace(".", "_").upper()

    def body(self, *, numeric_ids: bool = False) -> bytes:
        """The JSON body Healthie would POST (compact, key order as documented)."""
        rid: str | int = int(self.resource_id) if numeric_ids else self.resource_id
        payload: dict[str, object] = {
            "resource_id": rid,
            "resource_id_type": self.resource_id_type,
            "event_type": self.event_type,
            "changed_fields": list(self.changed_fields),
        }
        payload.update(self.extra)
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(slots=True)
class Webhook:
    """A registered endpoint; ``event_types`` None means every event."""

    id: str
    url: str
    secret: str
    created_at: str
    event_types: frozenset[str] | None = None
    is_enabled: bool = True
    should_retry: bool = False

    def wants(self, event: Event) -> bool:
        """Whether this webhook subscribes to ``event``."""
        return self.is_enabled and (self.event_types is None or event.enum_name in self.event_types)


@dataclass(slots=True)
class Delivery:
    """One POST attempt: what ``sentWebhooks`` reports."""

    id: str
    webhook_id: str
    url: str
    event: Event
    created_at: str
    status_code: int | None
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def failed(self) -> bool:
        """True unless the receiver answered 2xx."""
        return self.status_code is None or not 200 <= self.status_code < 300


class WebhookEmitter:
    """Deliver events to registered webhooks and keep the delivery log.

    ``client_factory`` is called once, on the first delivery, when no client was passed in;
    the emitter then owns (and :meth:`close`\\ s) that client.
    """

    def __init__(
        self,
        http_client: httpx2.Client | None,
        *,
        client_factory: Callable[[], httpx2.Client] | None = None,
    ) -> None:
        self._client = http_client
        self._owned = False
        self._factory = client_factory or (lambda: httpx2.Client(timeout=5.0))
        self.webhooks: dict[str, Webhook] = {}
        self.deliveries: list[Delivery] = []
        self.dropped: list[tuple[str, Event]] = []
        self._ids = itertools.count(95_000_001)
        self.recurring_events_enabled = False
        self.numeric_resource_ids = False

    def deliver(
        self,
        event: Event,
        *,
        created: int,
        created_iso: str,
        drop: Callable[[], bool] = lambda: False,
        only: str | None = None,
    ) -> list[Delivery]:
        """POST ``event`` to every webhook that wants it (or just webhook ``only``)."""
        if event.recurring and not self.recurring_events_enabled:
            return []  # Healthie skips recurring appointments unless support enables them
        sent = []
        for hook in list(self.webhooks.values()):
            if (only is None and not hook.wants(event)) or (only is not None and hook.id != only):
                continue
            if drop():
                self.dropped.append((hook.id, event))
                continue
            sent.append(self._post(hook, event, created, created_iso, str(next(self._ids))))
        return sent

    def _post(self, hook: Webhook, event: Event, created: int, stamp: str, did: str) -> Delivery:
        body = event.body(numeric_ids=self.numeric_resource_ids)
        parts = urlsplit(hook.url)
        headers = sign_webhook(
            secret=hook.secret,
            method="POST",
            path=parts.path or "/",
            query=parts.query,
            body=body,
            created=created,
        )
        delivery = Delivery(did, hook.id, hook.url, event, stamp, None, headers=headers, body=body)
        try:
            response = self._http().post(hook.url, content=body, headers=headers)
            delivery.status_code = response.status_code
        except httpx2.HTTPError as exc:  # recorded, never raised: the change already happened
            delivery.error = f"{type(exc).__name__}: {exc}"
        self.deliveries.append(delivery)
        return delivery

    def _http(self) -> httpx2.Client:
        if self._client is None:
            self._client = self._factory()
            self._owned = True
        return self._client

    def close(self) -> None:
        """Close the HTTP client if the emitter created it."""
        if self._owned and self._client is not None:
            self._client.close()
            self._client = None
            self._owned = False
