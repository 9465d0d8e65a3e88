"""Signing-secret rotation: ``expireWebhookSignature``, storing the new secret, and the
operator's procedure around it.

Healthie generates a webhook's signing secret itself, when the webhook is created and when its
signature is expired, and returns it once in the payload (``webhook.signature_secret``).
:func:`rotate_and_store` and :func:`sync_and_store` (what ``webhooks rotate`` and ``webhooks
sync`` call) therefore hand it straight to the secrets interface as a new *version* of the
integration's signing-secret reference (:func:`signing_ref`, the last of
``healthie.webhook_secrets``): nothing is printed or copied by hand. Older versions stay
enabled, so deliveries signed before the switch still verify, until ``secrets prune`` destroys
them. A read-only backend (environment variables) is refused *before* Healthie is asked, since
the secret Healthie answers with cannot be asked for again. The procedure is in
:mod:`app.healthie.registration`'s docstring and, filled in for one integration, in
:func:`rotation_steps`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, SecretStr

from app.core.config import Integration
from app.core.errors import (
    ConfigurationError,
    HealthieSyncError,
    RateLimited,
    UpstreamUnavailable,
)
from app.healthie.registration.plan import Action
from app.healthie.registration.remote import fingerprint, mutate
from app.healthie.registration.status import engine_webhooks, webhooks_sync
from app.secrets.base import SecretStore, VersionedSecretStore, require_versioned, secret_id
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


class StoredSecret(BaseModel):
    """Where a signing secret Healthie returned went (never the secret)."""

    webhook_id: str
    event: Literal["created", "rotated"]
    ref: str | None = None  # None: Healthie returned no secret, or the backend cannot store it
    version: int | None = None
    secret_fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        """True when the secret is stored."""
        return self.version is not None

    def __str__(self) -> str:
        if self.ok:
            return (
                f"webhook {self.webhook_id} {self.event}: signing secret "
                f"{self.secret_fingerprint} stored as {self.ref!r} version {self.version}"
            )
        if self.secret_fingerprint is None:
            return (
                f"webhook {self.webhook_id} {self.event}: Healthie returned no signing secret; "
                "run `webhooks rotate --yes` to get one"
            )
        return (
            f"webhook {self.webhook_id} {self.event}: its signing secret "
            f"{self.secret_fingerprint} could not be stored (read-only secrets backend); its "
            "deliveries are refused until `webhooks rotate --yes` runs with the file or "
            "secret-manager backend"
        )


def signing_ref(integration: Integration) -> str:
    """The reference new signing secrets are stored under: the last of
    ``healthie.webhook_secrets`` (the newest, in the older procedure that appended refs)."""
    return integration.healthie.webhook_secrets[-1]


def _store(
    store: SecretStore,
    ref: str,
    event: Literal["created", "rotated"],
    webhook_id: str,
    secret: SecretStr | None,
) -> StoredSecret:
    print_ = fingerprint(secret.get_secret_value()) if secret is not None else None
    out = StoredSecret(webhook_id=webhook_id, event=event, secret_fingerprint=print_)
    if secret is None or not isinstance(store, VersionedSecretStore):
        return out
    try:
        added = store.add_version(ref, secret.get_secret_value())
    except HealthieSyncError as exc:
        # The secret is gone with this process: say so, and how to get a fresh one.
        message = (
            f"webhook {webhook_id} {event} with signing secret {print_}, but storing it as "
            f"{ref!r} failed ({exc}); run `webhooks rotate --yes` to get and store a new one"
        )
        kind = type(exc) if isinstance(exc, RateLimited | UpstreamUnavailable) else None
        raise (kind or ConfigurationError)(message) from exc
    return out.model_copy(update={"ref": ref, "version": added.version})


def rotate_and_store(
    client: HealthieClient,
    integration: Integration,
    webhook_ids: Sequence[str],
    store: SecretStore,
) -> list[StoredSecret]:
    """Expire each webhook's signing secret and store the new one as the next version of
    :func:`signing_ref`, one webhook at a time (a failure loses at most one secret). A
    read-only backend is refused before any secret is expired."""
    require_versioned(store, "`webhooks rotate` (storing the new signing secret)")
    ref = signing_ref(integration)
    secret_id(ref)  # an unusable reference is refused before Healthie is asked
    out: list[StoredSecret] = []
    for webhook_id in webhook_ids:
        (rotation,) = rotate_secret(client, [webhook_id])
        out.append(_store(store, ref, "rotated", rotation.webhook_id, rotation.new_secret))
    return out


def sync_and_store(
    client: HealthieClient, integration: Integration, base: str, store: SecretStore
) -> tuple[list[Action], list[StoredSecret]]:
    """``webhooks_sync``, then the signing secret of any webhook it created stored as the next
    version of :func:`signing_ref`. With a read-only backend, a sync that would create the
    webhook (none registered at the URL yet) is refused before anything changes."""
    if not isinstance(store, VersionedSecretStore) and not engine_webhooks(
        client, integration, base
    ):
        require_versioned(store, "`webhooks sync` (storing the new webhook's signing secret)")
    ref = signing_ref(integration)
    secret_id(ref)
    actions = webhooks_sync(client, integration, base)
    stored = [
        _store(store, ref, "created", a.webhook_id, a.new_secret)
        for a in actions
        if a.kind == "create"
    ]
    return actions, stored


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
    store: SecretStore | None = None,
) -> list[str]:
    """The rotation procedure for ``integration``, one instruction per line (for the CLI).

    With ``store`` (the CLI passes the runtime's), the procedure for that backend: the engine
    stores the new secret itself as a new version (file, Secret Manager), or the read-only
    environment backend is named as the obstacle. Without it, the by-hand procedure with a
    new reference (``new_ref``) for a backend the engine does not write."""
    if store is not None:
        return _versioned_steps(integration, webhook_ids, base, store)
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


def _versioned_steps(
    integration: Integration, webhook_ids: Sequence[str], base: str, store: SecretStore
) -> list[str]:
    backend = getattr(store, "backend", type(store).__name__)
    if not isinstance(store, VersionedSecretStore):
        return [
            f"The {backend} secrets backend is read-only, so `webhooks rotate` could not store "
            "the secret Healthie answers with and refuses to rotate: set "
            "HEALTHIE_SYNC_SECRETS_BACKEND=file (or secret-manager), store the current secrets "
            "there with `healthie-sync secrets set REF`, then rotate."
        ]
    ref = signing_ref(integration)
    hooks = ", ".join(webhook_ids) or "(none registered: run `webhooks sync` first)"
    cli = f"healthie-sync webhooks {{}} {integration.id} --url {base}"
    return [
        f"Check that webhook {hooks} retries failed deliveries: `{cli.format('status')}` shows "
        "no 'retries off' drift (`sync` fixes it); a delivery refused during the switch is "
        "then retried instead of lost.",
        f"`{cli.format('rotate')} --yes`: Healthie expires the signing secret of webhook {hooks} "
        f"and answers with the new one, which is stored as the next version of {ref!r} in the "
        f"{backend} backend (older versions stay enabled); from now on new deliveries are "
        "signed with it.",
        "Restart or redeploy the serving instances so they read the new version: every enabled "
        f"version of {ref!r} is accepted, so retries signed before the expiry still verify.",
        f"`{cli.format('test')}`: the test delivery must be verified (HTTP 2xx).",
        "Wait for in-flight retries signed with the old secret (Healthie retries for up to 3 "
        f"days); `{cli.format('status')}` must show no failed deliveries.",
        f"`healthie-sync secrets prune {ref}`: destroys every version of {ref!r} but the newest.",
    ]
