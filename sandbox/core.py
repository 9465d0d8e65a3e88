"""The sandbox: a synthetic organization, its clock, credentials, webhooks and faults.

:class:`Sandbox` is what the demo, tests and benchmarks hold. Every change goes through one
of its methods (the GraphQL mutations call the same methods), which

1. advances the deterministic clock by one second (two sandboxes with the same seed that
   undergo the same changes hold identical data, timestamps included),
2. validates and applies the change under the data lock (:mod:`sandbox.changes`), and
3. delivers the resulting webhook events *after* releasing the lock, so a receiver that
   calls back into the sandbox cannot deadlock it.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2

from sandbox import changes
from sandbox.faults import Faults
from sandbox.generate import iso
from sandbox.models import Appointment, Tag, Task
from sandbox.org import Organization, generate_org
from sandbox.traffic import random_changes
from sandbox.webhooks import Delivery, Event, RetryPolicy, Webhook, WebhookEmitter

DEFAULT_NOW = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


@dataclass(slots=True)
class Change:
    """One applied change: what it touched, when, and the webhooks it produced."""

    kind: str
    subject_id: str
    at: str
    fields: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)


def _derive(seed: int, purpose: str) -> str:
    return hashlib.sha256(f"healthie-sync sandbox {purpose} {seed}".encode()).hexdigest()[:40]


class Sandbox:
    """A local stand-in for one Healthie organization and its API key.

    The API key and webhook signing secret are derived from ``seed`` (this is a local test
    fixture, and reproducible credentials make demo runs comparable).
    """

    def __init__(
        self,
        *,
        patients: int = 200,
        seed: int = 7,
        now: datetime | None = None,
        http_client: httpx2.Client | None = None,
        webhook_retries: RetryPolicy | None = None,
    ) -> None:
        self.seed = seed
        self.org: Organization = generate_org(seed, patients, now or DEFAULT_NOW)
        self.clock: datetime = self.org.now
        self.api_key = f"sbx_{_derive(seed, 'api key')}"
        self.webhook_secret = f"whsec_{_derive(seed, 'webhook secret')}"
        self.counters: Counter[str] = Counter()
        self.lock = threading.RLock()
        self.faults = Faults()
        self.emitter = WebhookEmitter(http_client)
        self.emitter.retry_policy = webhook_retries  # None: no retries (the default)

    # -- clock and delivery ------------------------------------------------------------
    def _tick(self) -> str:
        self.clock += timedelta(seconds=1)
        return iso(self.clock)

    def _deliver(self, change: Change) -> Change:
        created = int(datetime.fromisoformat(change.at).timestamp())
        with self.emitter.delivery_lock:
            for event in change.events:
                change.deliveries.extend(
                    self.emitter.deliver(
                        event,
                        created=created,
                        created_iso=change.at,
                        drop=self.faults.drop_webhook,
                    )
                )
        return change

    def _apply(
        self,
        kind: str,
        subject: str,
        fields: dict[str, Any],
        fn: Callable[[str], list[Event]],
        *,
        suppress_webhooks: bool = False,
    ) -> Change:
        with self.lock:
            at = self._tick()
            events = fn(at)
        change = Change(kind, subject, at, dict(fields), events)
        return change if suppress_webhooks else self._deliver(change)

    # -- changes -------------------------------------------------------------------------
    def update_client(self, user_id: str, **fields: Any) -> Change:
        """Update a patient like ``updateClient``; raises ``ValidationFailed`` on bad input."""
        return self._apply(
            "update_client",
            user_id,
            fields,
            lambda at: changes.update_client(self.org, user_id, fields, at),
        )

    def apply_tag(self, user_id: str, tag_id: str) -> Change:
        """Apply one tag to a patient (``applied_tag.created``)."""
        return self._apply(
            "apply_tag",
            user_id,
            {"tag_id": tag_id},
            lambda at: changes.apply_tag(self.org, user_id, tag_id, at),
        )

    def bulk_apply(self, user_id: str, tag_ids: Iterable[str]) -> Change:
        """Apply several tags to a patient like ``bulkApply``; all or nothing."""
        ids = list(tag_ids)

        def run(at: str) -> list[Event]:
            missing = [t for t in ids if t not in self.org.tags]
            if missing:
                raise changes.ValidationFailed(
                    [changes.FieldMessage("ids", f"Tag {t} not found") for t in missing]
                )
            return [e for t in ids for e in changes.apply_tag(self.org, user_id, t, at)]

        return self._apply("bulk_apply", user_id, {"tag_ids": ids}, run)

    def remove_applied_tag(self, user_id: str, tag_id: str) -> Change:
        """Remove a tag from a patient (``applied_tag.deleted``)."""
        return self._apply(
            "remove_applied_tag",
            user_id,
            {"tag_id": tag_id},
            lambda at: changes.remove_applied_tag(self.org, user_id, tag_id),
        )

    def update_appointment(
        self, appointment_id: str, *, suppress_webhooks: bool = False, **fields: Any
    ) -> Change:
        """Update an appointment, e.g. ``pm_status="No-Show"`` (``appointment.updated``)."""
        return self._apply(
            "update_appointment",
            appointment_id,
            fields,
            lambda at: changes.update_appointment(self.org, appointment_id, fields, at),
            suppress_webhooks=suppress_webhooks,
        )

    def create_appointment(
        self, user_id: str, *, suppress_webhooks: bool = False, **fields: Any
    ) -> Change:
        """Book an appointment for a patient (``appointment.created``); subject is its id."""
        holder: list[Appointment] = []

        def run(at: str) -> list[Event]:
            appt, events = changes.create_appointment(self.org, user_id, fields, at)
            holder.append(appt)
            return events

        change = self._apply(
            "create_appointment", user_id, fields, run, suppress_webhooks=suppress_webhooks
        )
        change.subject_id = holder[0].id
        return change

    def delete_appointment(self, appointment_id: str, *, suppress_webhooks: bool = False) -> Change:
        """Soft-delete an appointment (``appointment.deleted``)."""
        return self._apply(
            "delete_appointment",
            appointment_id,
            {},
            lambda at: changes.delete_appointment(self.org, appointment_id, at),
            suppress_webhooks=suppress_webhooks,
        )

    def create_tag(self, name: str) -> Tag:
        """Create an organization tag (Healthie sends no webhook for tag creation)."""
        if not name.strip():
            raise changes.ValidationFailed([changes.FieldMessage("name", "Name can't be blank")])
        with self.lock:
            at = self._tick()
            tag = Tag(self.org.new_id(), name, at, at)
            self.org.tags[tag.id] = tag
        return tag

    def create_task(
        self, *, content: str | None, client_id: str | None = None, **fields: Any
    ) -> Task:
        """Create a task (``task.created``)."""
        if client_id is not None and self.org.patient(client_id) is None:
            raise changes.ValidationFailed([changes.FieldMessage("client_id", "User not found")])
        holder: list[Task] = []

        def run(at: str) -> list[Event]:
            task = Task(
                self.org.new_id(),
                content,
                client_id,
                fields.get("user_id"),
                fields.get("due_date"),
                int(fields.get("priority") or 0),
                bool(fields.get("complete")),
                at,
            )
            self.org.tasks[task.id] = task
            holder.append(task)
            return [Event("task.created", task.id, "Task")]

        self._apply("create_task", client_id or "", {"content": content, **fields}, run)
        return holder[0]

    # -- webhooks ------------------------------------------------------------------------
    def register_webhook(
        self, url: str, event_types: Iterable[str] | None = None, *, should_retry: bool = False
    ) -> Webhook:
        """Register an endpoint for ``event_types`` ("patient.updated" or "PATIENT_UPDATED";
        None for all events), signed with :attr:`webhook_secret`."""
        kinds = None
        if event_types is not None:
            kinds = frozenset(k.replace(".", "_").upper() for k in event_types)
        with self.lock:
            hook = Webhook(
                self.org.new_id(),
                url,
                self.webhook_secret,
                iso(self.clock),
                kinds,
                should_retry=should_retry,
            )
            self.emitter.webhooks[hook.id] = hook
        return hook

    def expire_webhook_signature(self, webhook_id: str) -> Webhook:
        """Rotate a webhook's signing secret, as ``expireWebhookSignature`` does."""
        with self.lock:
            hook = self.emitter.webhooks[webhook_id]
            hook.secret = f"whsec_{_derive(self.seed, hook.secret + iso(self.clock))}"
            return hook

    def set_webhook_enabled(self, webhook_id: str, enabled: bool) -> Webhook:
        """Enable or disable a webhook (``updateWebhook(is_enabled:)``); disabled ones get
        nothing, and their pending retries are dropped when due."""
        with self.lock:
            hook = self.emitter.webhooks[webhook_id]
            hook.is_enabled = enabled
            return hook

    def set_webhook_failing(self, webhook_id: str, status: int | None = 500) -> Webhook:
        """Make every delivery to a webhook fail with HTTP ``status`` without contacting the
        receiver (a broken endpoint, for tests); ``None`` restores real delivery."""
        with self.lock:
            hook = self.emitter.webhooks[webhook_id]
            hook.forced_status = status
            return hook

    def send_test_webhook(self, webhook_id: str) -> list[Delivery]:
        """Send a ``test.created`` event to one webhook."""
        with self.lock:
            at = self._tick()
        event = Event("test.created", "12345", "Test")
        created = int(datetime.fromisoformat(at).timestamp())
        with self.emitter.delivery_lock:
            return self.emitter.deliver(event, created=created, created_iso=at, only=webhook_id)

    @property
    def recurring_appointment_webhooks(self) -> bool:
        """Whether events about recurring appointments are sent (off, as at Healthie)."""
        return self.emitter.recurring_events_enabled

    @recurring_appointment_webhooks.setter
    def recurring_appointment_webhooks(self, enabled: bool) -> None:
        self.emitter.recurring_events_enabled = enabled

    # -- demo traffic ----------------------------------------------------------------------
    def apply_random_changes(self, count: int, seed: int) -> list[Change]:
        """Apply ``count`` plausible changes to random patients; same seed, same changes."""
        return random_changes(self, count, random.Random(seed))

    def close(self) -> None:
        """Release the HTTP client the sandbox created for webhook delivery, if any."""
        self.emitter.close()
