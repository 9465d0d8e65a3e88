"""Signing-secret rotation: ``expireWebhookSignature`` and the operator's procedure around it.

Healthie generates the new secret when the old one is expired and returns it in the payload
(``webhook.signature_secret``); the procedure is in :mod:`app.healthie.registration`'s
docstring and, filled in for one integration, in :func:`rotation_steps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, SecretStr

from app.core.config import Integration
from app.healthie.registration.remote import fingerprint, mutate
from app.secrets.stores import env_name

if TYPE_CHECKING:
    from app.healthie.client import HealthieClient


class Rotation(BaseModel):
    """One expired signature. ``new_secret`` is never dumped; ``secret_fingerprint`` is safe to
    print and tells which stored value is the new one."""

    webhook_id: str
    secret_returned: bool
    secret_fingerprint: str | None = None
    new_secret: SecretStr | None = Field(default=None, exclude=True, repr=False)


def rotate_secret(client: HealthieClient, webhook_ids: Sequence[str]) -> list[Rotation]:
    """Expire each webhook's signing secret; Healthie's new secret when it returns one.

    From this call on Healthie signs new deliveries with the new secret: store it and add its
    ref to ``webhook_secrets`` next to the old one straight away (see :func:`rotation_steps`).
    """
    out: list[Rotation] = []
    for webhook_id in webhook_ids:
        payload = mutate(
            client,
            "lifecycle_expire_webhook_signature",
            "expireWebhookSignature",
            {"id": webhook_id},
        )
        hook = payload.get("webhook") or {}
        secret = hook.get("signature_secret") if isinstance(hook, dict) else None
        out.append(
            Rotation(
                webhook_id=str(webhook_id),
                secret_returned=bool(secret),
                secret_fingerprint=fingerprint(secret) if secret else None,
                new_secret=SecretStr(secret) if secret else None,
            )
        )
    return out


def default_new_ref(integration: Integration, *, today: datetime | None = None) -> str:
    """A fresh secret ref for the rotated secret: ``<id>/webhook-signing-secret-<YYYYMMDD>``."""
    day = (today or datetime.now(UTC)).strftime("%Y%m%d")
    return f"{integration.id}/webhook-signing-secret-{day}"


def rotation_steps(
    integration: Integration,
    webhook_ids: Sequence[str],
    *,
    new_ref: str | None = None,
    base: str = "BASE",
) -> list[str]:
    """The rotation procedure for ``integration``, one instruction per line (for the CLI)."""
    old = list(integration.healthie.webhook_secrets)
    new = new_ref or default_new_ref(integration)
    hooks = ", ".join(webhook_ids) or "(none registered: run `webhooks sync` first)"
    cli = f"healthie-sync webhooks {{}} {integration.id} --url {base}"
    both = ", ".join(f'"{r}"' for r in [*old, new])
    return [
        f"Check that webhook {hooks} retries failed deliveries: `{cli.format('status')}` shows "
        "no 'retries off' drift (`sync` fixes it); a delivery refused during the switch is "
        "then retried instead of lost.",
        f"`{cli.format('rotate')}`: Healthie expires the signing secret of webhook {hooks} and "
        "answers with the new one; from now on new deliveries are signed with it.",
        f"Store the new secret under the NEW ref {new!r} (environment variable "
        f"{env_name(new)}, or Secret Manager secret {new.replace('/', '--')!r}); check its "
        "fingerprint against the one `rotate` printed.",
        f"Set healthie.webhook_secrets = [{both}] and restart or redeploy: both the old and the "
        "new secret are accepted, so retries signed before the expiry still verify.",
        f"`{cli.format('test')}`: the test delivery must be verified (HTTP 2xx).",
        "Wait for in-flight retries signed with the old secret (Healthie retries for up to 3 "
        f"days); `{cli.format('status')}` must show no failed deliveries.",
        f'Set healthie.webhook_secrets = ["{new}"], redeploy, then delete the old secret(s) '
        f"{', '.join(repr(r) for r in old)}.",
    ]
