"""Which events the engine needs, what an operator should be warned about, and the ``status``
/ ``sync`` entry points (see the package docstring for the picture)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel

from app.core.config import Integration
from app.healthie.registration.plan import (
    Action,
    WebhookPlan,
    apply_plan,
    plan_webhooks,
)
from app.healthie.registration.remote import (
    RegisteredWebhook,
    list_webhooks,
    same_url,
)
from app.healthie.sweep import webhook_health
from app.intake.events import (
    APPLIED_TAG_EVENTS,
    APPOINTMENT_EVENTS,
    DEFAULT_PATIENT_SCOPED,
    EXCLUDED_PREFIXES,
    PATIENT_EVENTS,
)

if TYPE_CHECKING:
    from app.healthie.client import HealthieClient

#: Handled by ``app.intake.events.resolve_event`` besides the sets it exports.
_MERGE_EVENTS = frozenset({"patient.merged"})


def engine_webhook_url(base: str, integration_id: str) -> str:
    """The receiver URL Healthie must call: ``<base>/webhooks/healthie/<integration_id>``
    (``https://`` is assumed when ``base`` has no scheme)."""
    base = base.strip().rstrip("/")
    if "://" not in base:
        base = f"https://{base}"
    return f"{base}/webhooks/healthie/{integration_id}"


def _excluded(event_type: str) -> bool:
    return event_type.startswith(EXCLUDED_PREFIXES)


def needed_events(integration: Integration) -> set[str]:
    """Exactly the event types the receiver turns into work for ``integration``: patients
    (incl. merges), appointments, applied tags, the default patient-scoped events, and the
    integration's ``events`` extras — never session-note or clinical events (excluded extras are
    dropped; :func:`webhook_warnings` reports them)."""
    needed = set(PATIENT_EVENTS | _MERGE_EVENTS | APPOINTMENT_EVENTS | APPLIED_TAG_EVENTS)
    needed |= DEFAULT_PATIENT_SCOPED
    needed |= {e.strip() for e in integration.events or () if e.strip() and not _excluded(e)}
    return needed


class LifecycleStatus(BaseModel):
    """``webhooks status``: the drift plan and the operator warnings."""

    plan: WebhookPlan
    warnings: list[str]


def webhook_warnings(
    client: HealthieClient,
    integration: Integration,
    *,
    url: str | None = None,
    since: datetime | None = None,
    accepted_secrets: Sequence[str] | None = None,
    current: list[RegisteredWebhook] | None = None,
) -> list[str]:
    """Problems an operator should act on, by webhook id (no patient data).

    Disabled, warned-about or failing webhooks (failed ``sentWebhooks`` since ``since``,
    default the last 24 h) — only those at ``url`` when it is given, plus drift from the needed
    events; excluded (clinical) extras in the config; and, with ``accepted_secrets`` (the
    resolved ``webhook_secrets``), a webhook at ``url`` whose signing secret none of them is.
    """
    out: list[str] = []
    window = f"since {since.isoformat()}" if since else "in the last 24 h"
    for status in webhook_health(client, since=since):
        if url is not None and not same_url(status.url, url):
            continue
        name = f"webhook {status.webhook_id}" if status.webhook_id != "?" else "a deleted webhook"
        if status.webhook_id != "?" and not status.enabled:
            out.append(
                f"{name} is disabled in Healthie: nothing is delivered to {status.url} "
                "(Healthie disables a webhook after 3 days of failures; `sync` re-enables)"
            )
        if any(p.startswith("warned") for p in status.problems):
            out.append(f"Healthie warned that deliveries of {name} keep failing")
        if status.failed_deliveries:
            last = f", last HTTP {status.last_failure_status}" if status.last_failure_status else ""
            out.append(
                f"{name}: {status.failed_deliveries} failed deliveries to {status.url} "
                f"{window}{last}"
            )
    bad = sorted(e for e in integration.events or () if _excluded(e))
    if bad:
        out.append(
            f"integration {integration.id} lists excluded event types {bad}: "
            "they are never subscribed"
        )
    if url is not None:
        current = list_webhooks(client) if current is None else current
        plan = plan_webhooks(current, url, needed_events(integration))
        for step in plan.steps:
            target = f"webhook {step.webhook_id}" if step.webhook_id else url
            out.append(f"drift: {step.kind} {target} ({step.reason})")
        for hook in plan.current:
            signs = hook.signs_with_one_of(accepted_secrets) if accepted_secrets else None
            if signs is False:
                out.append(
                    f"webhook {hook.id} signs with a secret that none of "
                    f"{integration.id}'s webhook_secrets holds: its deliveries are refused"
                )
    return out


def webhook_status(
    client: HealthieClient,
    integration: Integration,
    base: str,
    *,
    since: datetime | None = None,
    accepted_secrets: Sequence[str] | None = None,
) -> LifecycleStatus:
    """``webhooks status INTEGRATION --url BASE``: the plan ``sync`` would apply, and warnings."""
    url = engine_webhook_url(base, integration.id)
    current = list_webhooks(client)
    return LifecycleStatus(
        plan=plan_webhooks(current, url, needed_events(integration)),
        warnings=webhook_warnings(
            client,
            integration,
            url=url,
            since=since,
            accepted_secrets=accepted_secrets,
            current=current,
        ),
    )


def engine_webhooks(
    client: HealthieClient, integration: Integration, base: str
) -> list[RegisteredWebhook]:
    """The webhooks registered for the engine's URL (for ``webhooks test`` and ``rotate``)."""
    url = engine_webhook_url(base, integration.id)
    return [h for h in list_webhooks(client) if same_url(h.url, url)]


def webhooks_sync(client: HealthieClient, integration: Integration, base: str) -> list[Action]:
    """``webhooks sync INTEGRATION --url BASE``: plan against Healthie's state and apply it."""
    url = engine_webhook_url(base, integration.id)
    return apply_plan(client, plan_webhooks(list_webhooks(client), url, needed_events(integration)))
