"""What the webhook lifecycle modules share: Healthie's view of a webhook, event-type names,
and one way to run a webhook mutation that turns ``messages`` refusals into errors.

Healthie answers a refused mutation with HTTP 200, a null object and ``messages``
(``[{field, message}]``), not with GraphQL ``errors``; :func:`mutate` raises them as
:class:`~app.core.errors.WebhookRefused` (a ``FatalError``: the same input will be refused
again) or, when the URL is what Healthie refused, :class:`~app.core.errors.WebhookUrlRefused`
(a ``ConfigurationError``: the ``--url`` base needs fixing).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING, Any

from gql import GraphQLRequest
from pydantic import BaseModel, Field, SecretStr

from app.core.errors import InvalidResponse, WebhookRefused, WebhookUrlRefused
from app.healthie import operations
from app.healthie.pagination import Pages

if TYPE_CHECKING:
    from app.healthie.client import HealthieClient

_SECRETISH = re.compile(r"whsec_\w+")


def enum_name(event_type: str) -> str:
    """Healthie's ``WebhookEventType`` name: ``patient.updated`` -> ``PATIENT_UPDATED``.

    (The reverse is ambiguous: ``APPOINTMENT_PATIENT_ADDED`` is ``appointment.patient_added``.)
    """
    return event_type.replace(".", "_").upper()


def fingerprint(secret: str) -> str:
    """A short, non-reversible tag to tell secrets apart in output (never the secret)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def same_url(a: str | None, b: str | None) -> bool:
    """URLs equal up to scheme/host case and a trailing slash."""
    if a is None or b is None:
        return False

    def norm(url: str) -> str:
        url = url.strip().rstrip("/")
        head, sep, rest = url.partition("://")
        host, slash, path = rest.partition("/")
        return f"{head.lower()}{sep}{host.lower()}{slash}{path}"

    return norm(a) == norm(b)


class RegisteredWebhook(BaseModel):
    """One webhook as Healthie holds it. ``events`` are enum names (``PATIENT_UPDATED``);
    ``event_ids`` maps each to its ``WebhookEvent`` id. The signing secret is kept out of
    ``repr`` and dumps."""

    id: str
    url: str | None = None
    is_enabled: bool = True
    should_retry: bool = False
    warned_at: str | None = None
    events: list[str] = Field(default_factory=list)
    event_ids: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)
    signature_secret: SecretStr | None = Field(default=None, exclude=True, repr=False)

    @classmethod
    def from_node(cls, node: dict[str, Any]) -> RegisteredWebhook:
        """Parse a ``Webhook`` node; a legacy single ``event_type`` counts as its one event."""
        if not node.get("id"):
            raise InvalidResponse("a webhook without an id")
        event_ids: dict[str, str] = {}
        for event in node.get("webhook_events") or []:
            if isinstance(event, dict) and event.get("event_type"):
                event_ids[str(event["event_type"])] = str(event.get("id") or "")
        if not event_ids and node.get("event_type"):
            event_ids[str(node["event_type"])] = ""
        secret = node.get("signature_secret")
        return cls(
            id=str(node["id"]),
            url=node.get("url"),
            is_enabled=bool(node.get("is_enabled", True)),
            should_retry=bool(node.get("should_retry")),
            warned_at=node.get("warned_at"),
            events=sorted(event_ids),
            event_ids=event_ids,
            signature_secret=SecretStr(secret) if secret else None,
        )

    def signs_with_one_of(self, secrets: Iterable[str]) -> bool | None:
        """Whether Healthie signs this webhook with one of ``secrets`` (None: not readable)."""
        if self.signature_secret is None:
            return None
        return self.signature_secret.get_secret_value() in set(secrets)


@cache
def request(name: str) -> GraphQLRequest:
    """The committed operation ``operations/<name>.graphql``."""
    return GraphQLRequest(operations.load(name))


def list_webhooks(client: HealthieClient, *, max_pages: int = 20) -> list[RegisteredWebhook]:
    """Every webhook of the organization the client's API key belongs to."""
    pages = Pages(client, request("lifecycle_webhooks"), "webhooks", max_pages=max_pages)
    found = [RegisteredWebhook.from_node(node) for nodes in pages for node in nodes]
    if pages.truncated:
        raise InvalidResponse(f"more than {max_pages} pages of webhooks; refusing a partial view")
    return found


def mutate(
    client: HealthieClient, operation: str, root: str, payload_input: dict[str, Any]
) -> dict[str, Any]:
    """Run a webhook mutation; its payload, or the refusal in ``messages`` raised."""
    data = client.execute(request(operation), {"input": payload_input})
    payload = data.get(root)
    if not isinstance(payload, dict):
        raise InvalidResponse(f"{root}: Healthie answered without a payload")
    messages = [m for m in payload.get("messages") or [] if isinstance(m, dict)]
    if messages:
        text = "; ".join(
            f"{m.get('field')}: {m.get('message')}" if m.get("field") else str(m.get("message"))
            for m in messages
        )
        text = _SECRETISH.sub("whsec_***", text)[:300]
        target = payload_input.get("id")
        what = f"{root}{f' (webhook {target})' if target else ''}"
        if any(str(m.get("field") or "").lower() == "url" for m in messages):
            raise WebhookUrlRefused(f"Healthie refused {what}: {text}")
        raise WebhookRefused(f"Healthie refused {what}: {text}")
    return payload
