"""Drift between Healthie's webhooks and what the engine needs, and the mutations that fix it.

See :mod:`app.healthie.registration` for the picture: one enabled webhook with retries on at
the engine's URL, subscribed to exactly the needed events; other URLs are reported, never touched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, SecretStr

from app.core.errors import WebhookRefused, WebhookUrlRefused
from app.healthie.registration.remote import (
    RegisteredWebhook,
    enum_name,
    fingerprint,
    mutate,
    same_url,
)

if TYPE_CHECKING:
    from app.healthie.client import HealthieClient

log = logging.getLogger(__name__)


class PlannedStep(BaseModel):
    """One change to make at Healthie. Events are dotted names where the engine knows them."""

    kind: Literal["create", "update", "delete"]
    webhook_id: str | None = None
    add_events: list[str] = Field(default_factory=list)
    remove_events: list[str] = Field(default_factory=list)
    enable: bool = False
    retry: bool = False
    reason: str = ""
    #: the full set the webhook must end with (enum names) and the ids of events it keeps
    target_events: list[str] = Field(default_factory=list, exclude=True, repr=False)
    keep_event_ids: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)


class WebhookPlan(BaseModel):
    """What to change so Healthie delivers exactly ``needed`` to ``url``."""

    url: str
    needed: list[str]
    current: list[RegisteredWebhook] = Field(default_factory=list)  # the ones at ``url``
    steps: list[PlannedStep] = Field(default_factory=list)
    others: list[RegisteredWebhook] = Field(default_factory=list)  # other URLs, untouched

    @property
    def in_sync(self) -> bool:
        """True when there is nothing to change."""
        return not self.steps


class Action(BaseModel):
    """One executed step. ``ok`` False when Healthie accepted it but did not end as asked."""

    kind: Literal["create", "update", "delete"]
    webhook_id: str
    ok: bool = True
    detail: str = ""
    secret_fingerprint: str | None = None
    new_secret: SecretStr | None = Field(default=None, exclude=True, repr=False)


def _keeper_rank(hook: RegisteredWebhook, want: set[str]) -> tuple[int, int, int, int]:
    # Keep the webhook covering the most needed events (most likely the one the engine set up,
    # whose secret it holds), then an enabled one, the fewest extras, the oldest (ids grow).
    have = set(hook.events)
    oldest = -int(hook.id) if hook.id.isdigit() else 0
    return (len(have & want), hook.is_enabled, -len(have - want), oldest)


def plan_webhooks(current: list[RegisteredWebhook], url: str, needed: set[str]) -> WebhookPlan:
    """Compare what Healthie holds for ``url`` with ``needed`` (dotted event types)."""
    names = {enum_name(e): e for e in needed}
    want = set(names)
    ours = [h for h in current if same_url(h.url, url)]
    plan = WebhookPlan(
        url=url,
        needed=sorted(needed),
        current=ours,
        others=[h for h in current if not same_url(h.url, url)],
    )
    if not want:
        plan.steps = [
            PlannedStep(kind="delete", webhook_id=h.id, reason="no events needed") for h in ours
        ]
        return plan
    if not ours:
        plan.steps.append(
            PlannedStep(
                kind="create",
                add_events=sorted(needed),
                target_events=sorted(want),
                reason="no webhook for the engine's URL",
            )
        )
        return plan
    keeper = max(ours, key=lambda h: _keeper_rank(h, want))
    have = set(keeper.events)
    add, remove = want - have, have - want
    if add or remove or not keeper.is_enabled or not keeper.should_retry:
        why = [
            f"{len(add)} missing event(s)" if add else "",
            f"{len(remove)} extra event(s)" if remove else "",
            "disabled" if not keeper.is_enabled else "",
            "retries off" if not keeper.should_retry else "",
        ]
        plan.steps.append(
            PlannedStep(
                kind="update",
                webhook_id=keeper.id,
                add_events=sorted(names[e] for e in add),
                remove_events=sorted(remove),
                enable=not keeper.is_enabled,
                retry=not keeper.should_retry,
                target_events=sorted(want) if add or remove else [],
                keep_event_ids={e: i for e, i in keeper.event_ids.items() if e in want and i},
                reason=", ".join(w for w in why if w),
            )
        )
    for hook in ours:
        if hook is not keeper:
            plan.steps.append(
                PlannedStep(
                    kind="delete",
                    webhook_id=hook.id,
                    reason=f"duplicate of webhook {keeper.id} for the same URL",
                )
            )
    return plan


def _check_events(hook: dict[str, Any], target: list[str]) -> str:
    if not target:
        return ""
    got = set(RegisteredWebhook.from_node(hook).events)
    missing, kept = set(target) - got, got - set(target)
    problems = [
        f"Healthie did not add {sorted(missing)}" if missing else "",
        f"Healthie kept {sorted(kept)}" if kept else "",
    ]
    return "; ".join(p for p in problems if p)


def _events_input(step: PlannedStep) -> list[dict[str, str]]:
    out = []
    for event in step.target_events:
        item = {"event_type": event}
        if step.keep_event_ids.get(event):
            item["id"] = step.keep_event_ids[event]
        out.append(item)
    return out


def _apply_step(client: HealthieClient, url: str, step: PlannedStep) -> Action:
    if step.kind == "delete":
        mutate(client, "lifecycle_delete_webhook", "deleteWebhook", {"id": step.webhook_id})
        return Action(kind="delete", webhook_id=str(step.webhook_id), detail=step.reason)
    if step.kind == "create":
        payload = mutate(
            client,
            "lifecycle_create_webhook",
            "createWebhook",
            {
                "url": url,
                "is_enabled": True,
                "should_retry": True,
                "webhook_events": _events_input(step),
            },
        )
    else:
        change: dict[str, Any] = {"id": step.webhook_id}
        if step.enable:
            change["is_enabled"] = True
        if step.retry:
            change["should_retry"] = True
        if step.target_events:
            change["webhook_events"] = _events_input(step)
        payload = mutate(client, "lifecycle_update_webhook", "updateWebhook", change)
    hook = payload.get("webhook")
    if not isinstance(hook, dict) or not hook.get("id"):
        raise WebhookRefused(f"{step.kind} webhook: Healthie answered without the webhook")
    problem = _check_events(hook, step.target_events)
    if hook.get("is_enabled") is False:
        problem = "; ".join(p for p in (problem, "still disabled") if p)
    secret = hook.get("signature_secret") if step.kind == "create" else None
    return Action(
        kind=step.kind,
        webhook_id=str(hook["id"]),
        ok=not problem,
        detail=problem or step.reason,
        secret_fingerprint=fingerprint(secret) if secret else None,
        new_secret=SecretStr(secret) if secret else None,
    )


def apply_plan(client: HealthieClient, plan: WebhookPlan) -> list[Action]:
    """Execute ``plan`` (creates and updates first, deletes last); one Action per step.

    A refusal raises :class:`WebhookRefused` / :class:`WebhookUrlRefused`; the steps already
    done are on the exception's ``actions`` attribute.
    """
    order = {"create": 0, "update": 1, "delete": 2}
    done: list[Action] = []
    for step in sorted(plan.steps, key=lambda s: order[s.kind]):
        try:
            done.append(_apply_step(client, plan.url, step))
        except (WebhookRefused, WebhookUrlRefused) as exc:
            exc.actions = done
            raise
        log.info("webhook %s %s: %s", step.kind, done[-1].webhook_id, done[-1].detail)
    return done
