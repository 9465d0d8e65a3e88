"""Webhook registrations, events and signed delivery, as Healthie sends them.

A change in :class:`sandbox.core.Sandbox` yields :class:`Event`s; :class:`WebhookEmitter`
POSTs each event, signed by :func:`sandbox.signing.sign_webhook`, to every enabled webhook
subscribed to its type, and records the attempt as a :class:`Delivery` (what ``sentWebhooks``
serves). Delivery is synchronous and never raises: a refused connection or a 500 from the
receiver is recorded, as Healthie records it, and the change that caused it stands.

Payloads are thin (id, type, event, ``changed_fields`` plus the documented extras) and carry
no delivery id, exactly like Healthie's, so receivers must tolerate duplicates.

Retries are off unless a :class:`RetryPolicy` is set on the emitter. Then, as Healthie's
webhook guide describes, a failed delivery to a webhook with ``should_retry`` is retried with
exponential back-off for up to three days, the webhook is marked warned after about a day,
and disabled when the last retry fails. The schedule is deterministic (no jitter) and runs on
a background thread in real time scaled by ``RetryPolicy.time_factor``; timestamps (the
``created`` signature parameter, ``sentWebhooks.created_at``) are in Healthie time, i.e. the
original event's time plus the unscaled delay.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    # Failure state, as Healthie reports it on Webhook/WebhookEvent; cleared by a success.
    first_failed_at: str | None = None
    last_failed_at: str | None = None
    retry_count: int = 0
    warned_at: str | None = None
    # Test hook: answer every delivery with this status instead of POSTing (None: POST).
    forced_status: int | None = None

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
    attempt: int = 0  # 0 for the first delivery, n for the n-th retry

    @property
    def failed(self) -> bool:
        """True unless the receiver answered 2xx."""
        return self.status_code is None or not 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Healthie's opt-in retries: exponential back-off for ``window`` seconds, then disable.

    Delays are Healthie seconds after the first failure: ``first_delay``, then each one
    ``factor`` times the previous, the last one capped at ``window``. ``time_factor`` scales
    them to real seconds (``1e-5`` turns three days into 2.6 s).
    """

    first_delay: float = 60.0
    factor: float = 2.0
    window: float = 3 * 86_400.0
    warn_after: float = 86_400.0
    time_factor: float = 1.0

    def offsets(self) -> list[float]:
        """Healthie seconds from the first failure to each retry, ending at ``window``."""
        out, delay, at = [], self.first_delay, 0.0
        while at + delay < self.window:
            at += delay
            out.append(at)
            delay *= self.factor
        out.append(self.window)
        return out


@dataclass(order=True, slots=True)
class _Retry:
    due: float
    seq: int
    hook_id: str = field(compare=False)
    event: Event = field(compare=False)
    created: int = field(compare=False)  # the first attempt's time, epoch seconds
    attempt: int = field(compare=False)


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
        self.retry_policy: RetryPolicy | None = None
        self.delivery_lock = threading.Lock()  # held while posting (retries take it too)
        self._pending: list[_Retry] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._in_flight = 0
        self._monotonic = time.monotonic

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
            delivery = self._post(hook, event, created, created_iso, str(next(self._ids)))
            sent.append(delivery)
            if only is None:
                self._after_attempt(hook, delivery, event, created, 0)
        return sent

    # -- retries ---------------------------------------------------------------------------
    def _after_attempt(
        self, hook: Webhook, delivery: Delivery, event: Event, created: int, attempt: int
    ) -> None:
        """Update the webhook's failure state and schedule the next retry, if any."""
        if not delivery.failed:
            hook.first_failed_at = hook.last_failed_at = None
            hook.retry_count = 0
            return
        hook.first_failed_at = hook.first_failed_at or delivery.created_at
        hook.last_failed_at = delivery.created_at
        policy = self.retry_policy
        if policy is None or not hook.should_retry:
            return
        offsets = policy.offsets()
        if attempt >= len(offsets):
            hook.is_enabled = False  # "After retrying for up to 3 days, we will disable"
            return
        if attempt and offsets[attempt - 1] >= policy.warn_after and hook.warned_at is None:
            hook.warned_at = delivery.created_at
        previous = offsets[attempt - 1] if attempt else 0.0
        delay = (offsets[attempt] - previous) * policy.time_factor
        with self._wake:
            due = self._monotonic() + delay
            job = _Retry(due, next(self._seq), hook.id, event, created, attempt + 1)
            heapq.heappush(self._pending, job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run_retries, name="sandbox-webhook-retries", daemon=True
                )
                self._thread.start()
            self._wake.notify_all()

    def _run_retries(self) -> None:
        while True:
            with self._wake:
                while not self._closed and (
                    not self._pending or self._pending[0].due > self._monotonic()
                ):
                    timeout = self._pending[0].due - self._monotonic() if self._pending else None
                    self._wake.wait(timeout)
                if self._closed:
                    return
                job = heapq.heappop(self._pending)
                self._in_flight += 1
            try:
                self._retry(job)
            finally:
                with self._wake:
                    self._in_flight -= 1
                    self._wake.notify_all()

    def _retry(self, job: _Retry) -> None:
        policy = self.retry_policy
        with self.delivery_lock:
            hook = self.webhooks.get(job.hook_id)
            if hook is None or not hook.is_enabled or policy is None:
                return
            at = job.created + int(policy.offsets()[job.attempt - 1])
            stamp = _iso_at(at)
            delivery = self._post(hook, job.event, at, stamp, str(next(self._ids)), job.attempt)
            hook.retry_count = job.attempt
            self._after_attempt(hook, delivery, job.event, job.created, job.attempt)

    def pending_retries(self) -> int:
        """How many retries are scheduled."""
        with self._wake:
            return len(self._pending)

    def wait_for_retries(self, timeout: float = 10.0) -> bool:
        """Block until no retry is pending (True) or ``timeout`` seconds pass (False)."""
        deadline = self._monotonic() + timeout
        with self._wake:
            while self._pending or self._in_flight:
                left = deadline - self._monotonic()
                if left <= 0:
                    return False
                self._wake.wait(left)
            return True

    def _post(
        self, hook: Webhook, event: Event, created: int, stamp: str, did: str, attempt: int = 0
    ) -> Delivery:
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
        delivery = Delivery(
            did, hook.id, hook.url, event, stamp, None, headers=headers, body=body, attempt=attempt
        )
        if hook.forced_status is not None:
            delivery.status_code = hook.forced_status
            self.deliveries.append(delivery)
            return delivery
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
        """Stop retrying and close the HTTP client if the emitter created it."""
        with self._wake:
            self._closed = True
            self._pending.clear()
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._owned and self._client is not None:
            self._client.close()
            self._client = None
            self._owned = False


def _iso_at(epoch_seconds: int) -> str:
    """Healthie time of a retry, in UTC like the sandbox's default clock."""
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).isoformat()
