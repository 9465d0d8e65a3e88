"""Test deliveries: ask Healthie to send one, then confirm the engine's receiver verified it.

How arrival is confirmed, in order of authority:

1. ``sentWebhooks`` — Healthie's own delivery log, readable with the integration's API key from
   wherever the CLI runs. :func:`send_test` first notes the newest delivery's time (Healthie's
   clock, so the local clock never matters) and the ids already logged around it;
   :func:`confirm_arrival` then polls for a new ``TEST_CREATED`` delivery of that webhook and
   reads its ``http_response_status``: 2xx means the receiver checked the signature and took
   the event (the receiver answers 401 to a bad signature), 401 means the engine does not hold
   the secret Healthie signs with, anything else (or no status: unreachable) is a failure.
2. The receiver's ``GET /healthz`` intake counters, when ``receiver_url`` (the engine's public
   base) is given: the before/after difference is reported, and it decides only when Healthie's
   log never shows the delivery. Counters also move with real traffic, so that verdict says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, ClassVar, Literal

import httpx2
from pydantic import BaseModel, Field

from app.core.errors import InvalidResponse, UpstreamUnavailable
from app.healthie.entry import parse_timestamp
from app.healthie.pagination import Pages
from app.healthie.registration.remote import mutate, request

if TYPE_CHECKING:
    from app.healthie.client import HealthieClient

TEST_EVENT = "TEST_CREATED"
_SLACK = timedelta(seconds=2)  # deliveries logged in the same second as the baseline


class TestResult(BaseModel):
    """What :func:`send_test` did, and the baseline :func:`confirm_arrival` needs."""

    __test__: ClassVar[bool] = False  # not a pytest class

    webhook_id: str
    sent: bool  # Healthie's answer to sendTestWebhook
    since: str | None = None  # Healthie-clock lower bound of the test delivery
    known_ids: list[str] = Field(default_factory=list, repr=False)  # logged before the send
    receiver_before: dict[str, int] | None = None


class Arrival(BaseModel):
    """Whether the test delivery reached the receiver and passed its signature check."""

    webhook_id: str
    verdict: Literal["verified", "signature_refused", "failed", "not_seen"]
    source: Literal["sentWebhooks", "receiver", "none"]
    delivery_id: str | None = None
    http_status: str | None = None
    receiver_delta: dict[str, int] | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the receiver accepted a correctly signed delivery."""
        return self.verdict == "verified"


def receiver_intake(base_url: str, http: httpx2.Client | None = None) -> dict[str, int]:
    """The engine receiver's intake counters (``GET <base>/healthz``), by outcome."""
    own = http is None
    client = http or httpx2.Client(timeout=10.0)
    try:
        response = client.get(f"{base_url.rstrip('/')}/healthz")
        response.raise_for_status()
        intake = response.json().get("intake")
    except (httpx2.HTTPError, ValueError) as exc:
        raise UpstreamUnavailable(f"receiver health check failed: {type(exc).__name__}") from exc
    finally:
        if own:
            client.close()
    if not isinstance(intake, dict):
        raise InvalidResponse("receiver /healthz has no intake counters")
    return {str(k): int(v) for k, v in intake.items()}


def _sent_since(client: HealthieClient, since: str | None, max_pages: int) -> list[dict[str, str]]:
    pages = Pages(
        client,
        request("lifecycle_sent_webhooks"),
        "sentWebhooks",
        {"since": since},
        max_pages=max_pages,
    )
    return [node for nodes in pages for node in nodes]


def send_test(
    client: HealthieClient,
    webhook_id: str,
    *,
    receiver_url: str | None = None,
    http: httpx2.Client | None = None,
) -> TestResult:
    """Ask Healthie to send ``test.created`` to ``webhook_id``, after noting the baseline."""
    newest = client.execute(request("lifecycle_sent_webhooks"), {"since": None, "first": 1})
    nodes = (newest.get("sentWebhooks") or {}).get("nodes") or []
    at = parse_timestamp(nodes[0].get("created_at")) if nodes else None
    since = (at - _SLACK).astimezone(UTC).isoformat().replace("+00:00", "Z") if at else None
    known = [str(n.get("id")) for n in _sent_since(client, since, 20)] if since else []
    before = receiver_intake(receiver_url, http) if receiver_url else None
    payload = mutate(client, "lifecycle_send_test_webhook", "sendTestWebhook", {"id": webhook_id})
    return TestResult(
        webhook_id=str(webhook_id),
        sent=bool(payload.get("sent")),
        since=since,
        known_ids=known,
        receiver_before=before,
    )


def _verdict(status: str | None) -> Literal["verified", "signature_refused", "failed"]:
    if status and status.isdigit() and 200 <= int(status) < 300:
        return "verified"
    return "signature_refused" if status == "401" else "failed"


def confirm_arrival(
    client: HealthieClient,
    test: TestResult,
    *,
    receiver_url: str | None = None,
    http: httpx2.Client | None = None,
    timeout: float = 30.0,
    interval: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Arrival:
    """Poll until the test delivery shows up (see module docstring) or ``timeout`` passes."""
    known = set(test.known_ids)
    deadline = time.monotonic() + timeout
    while True:
        found = next(
            (
                n
                for n in _sent_since(client, test.since, 5)
                if str(n.get("webhook_id")) == test.webhook_id
                and n.get("event_type") == TEST_EVENT
                and str(n.get("id")) not in known
            ),
            None,
        )
        delta = None
        if receiver_url and test.receiver_before is not None:
            after = receiver_intake(receiver_url, http)
            delta = {
                k: v - test.receiver_before.get(k, 0)
                for k, v in after.items()
                if v != test.receiver_before.get(k, 0)
            }
        if found is not None:
            status = found.get("http_response_status")
            verdict = _verdict(status)
            return Arrival(
                webhook_id=test.webhook_id,
                verdict=verdict,
                source="sentWebhooks",
                delivery_id=str(found.get("id")),
                http_status=status,
                receiver_delta=delta,
                detail={
                    "verified": "receiver answered 2xx after checking the signature",
                    "signature_refused": "receiver refused the signature: the engine's "
                    "webhook_secrets do not hold the secret this webhook signs with",
                    "failed": f"delivery failed (HTTP {status or 'none: unreachable'})",
                }[verdict],
            )
        if time.monotonic() >= deadline:
            return _from_receiver(test.webhook_id, delta)
        sleep(interval)


def _from_receiver(webhook_id: str, delta: dict[str, int] | None) -> Arrival:
    if delta is None:
        return Arrival(
            webhook_id=webhook_id,
            verdict="not_seen",
            source="none",
            detail="Healthie's delivery log never showed the test delivery",
        )
    refused = delta.get("rejected_signature", 0)
    taken = sum(n for k, n in delta.items() if not k.startswith("rejected") and n > 0)
    caveat = " (Healthie's log never showed it; other traffic also moves these counters)"
    if refused:
        return Arrival(
            webhook_id=webhook_id,
            verdict="signature_refused",
            source="receiver",
            receiver_delta=delta,
            detail="receiver refused a signature" + caveat,
        )
    if taken:
        return Arrival(
            webhook_id=webhook_id,
            verdict="verified",
            source="receiver",
            receiver_delta=delta,
            detail="receiver took a verified delivery" + caveat,
        )
    return Arrival(
        webhook_id=webhook_id,
        verdict="not_seen",
        source="receiver",
        receiver_delta=delta,
        detail="neither Healthie nor the receiver saw it",
    )
