"""Webhook registration: keep Healthie's registration of the engine's receiver right.

The engine needs Healthie to POST the events in :func:`needed_events` to
``<base>/webhooks/healthie/<integration_id>`` (:func:`engine_webhook_url`). Healthie models a
webhook as one URL carrying *several* events (``Webhook.webhook_events``; the single
``event_type`` is the legacy form), with its own signing secret (``signature_secret``,
rotated per webhook by ``expireWebhookSignature``). So the desired state is **one enabled
webhook, with retries on, at the engine's URL, subscribed to exactly the needed events** — one
secret to hold, one row to watch::

    list_webhooks ─▶ plan_webhooks(current, url, needed) ─▶ WebhookPlan ─▶ apply_plan ─▶ [Action]
                      create   nothing at the URL yet
                      update   the kept webhook: add missing / drop extra events,
                               re-enable it, turn retries on
                      delete   other webhooks at the same URL (duplicates; each would
                               deliver every event twice)
                      others   webhooks at other URLs: reported, never touched

Applying creates and updates before deleting, so coverage never has a gap; a second apply of a
fresh plan does nothing. A webhook created here gets a new signing secret from Healthie: the
``Action`` carries it (``new_secret``, never dumped) and :func:`webhook_warnings` says when the
integration's ``webhook_secrets`` do not hold the secret Healthie signs with.

Testing delivery (``delivery``): :func:`send_test` asks Healthie for a
``test.created`` event; :func:`confirm_arrival` polls ``sentWebhooks`` for that delivery's HTTP
status (2xx: the receiver verified the signature, 401: it refused it) and, optionally, the
receiver's ``/healthz`` intake counters.

Rotating the signing secret (``rotation``). Healthie generates the new secret when it is
expired and returns it, so it cannot be configured in advance::

    1. check the webhook has retries on (``sync`` does it): a delivery refused during the switch
       is then retried instead of lost;
    2. rotate_and_store(client, config, [webhook_id], store) -> Healthie's new secret, stored
       as the next version of the signing-secret reference (the last of
       healthie.webhook_secrets): every enabled version is accepted, so deliveries signed
       before the expiry (retries in flight) still verify;
    3. send_test + confirm_arrival: a delivery signed with the new secret is accepted;
    4. wait out in-flight retries (Healthie retries for up to 3 days; ``webhook_warnings``
       shows failures), then ``healthie-sync secrets prune REF --yes`` destroys the old one.

:func:`rotation_steps` prints this for one integration. Nothing here logs or prints a secret:
models hold them as ``SecretStr`` fields excluded from dumps, output shows fingerprints.

Modules: ``remote`` (Healthie's webhook, mutations and their refusals), ``plan`` (plan and
apply), ``delivery`` (test and confirm), ``rotation``, and ``status`` (the needed events,
operator warnings and the ``status`` / ``sync`` entry points the CLI calls); this package
re-exports their public names.
"""

from app.core.errors import WebhookRefused, WebhookUrlRefused
from app.healthie.registration.delivery import (
    Arrival,
    TestResult,
    confirm_arrival,
    receiver_intake,
    send_test,
)
from app.healthie.registration.plan import (
    Action,
    PlannedStep,
    WebhookPlan,
    apply_plan,
    plan_webhooks,
)
from app.healthie.registration.remote import RegisteredWebhook, list_webhooks
from app.healthie.registration.rotation import (
    Rotation,
    StoredSecret,
    default_new_ref,
    rotate_and_store,
    rotate_secret,
    rotation_steps,
    signing_ref,
    sync_and_store,
)
from app.healthie.registration.status import (
    LifecycleStatus,
    engine_webhook_url,
    engine_webhooks,
    needed_events,
    webhook_status,
    webhook_warnings,
    webhooks_sync,
)

__all__ = [
    "Action",
    "Arrival",
    "LifecycleStatus",
    "PlannedStep",
    "RegisteredWebhook",
    "Rotation",
    "TestResult",
    "WebhookPlan",
    "WebhookRefused",
    "WebhookUrlRefused",
    "apply_plan",
    "confirm_arrival",
    "default_new_ref",
    "engine_webhook_url",
    "engine_webhooks",
    "list_webhooks",
    "needed_events",
    "plan_webhooks",
    "receiver_intake",
    "rotate_secret",
    "rotate_and_store",
    "signing_ref",
    "StoredSecret",
    "sync_and_store",
    "rotation_steps",
    "send_test",
    "webhook_status",
    "webhook_warnings",
    "webhooks_sync",
]
