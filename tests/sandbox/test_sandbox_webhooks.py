"""Changes emit the webhooks Healthie would send, signed the way Healthie signs them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.service.serving import serve_in_thread
from sandbox.changes import ValidationFailed
from sandbox.core import Sandbox
from tests.sandbox.records import patient_of, patients_of

pytestmark = pytest.mark.e2e


@dataclass
class Received:
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    status: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[str, Received]]:
    got = Received()

    async def hook(request: Request) -> Response:
        body = await request.body()
        with got.lock:
            got.requests.append((request.url.path, request.url.query, dict(request.headers), body))
        return Response(status_code=got.status)

    app = Starlette(routes=[Route("/hooks/healthie", hook, methods=["POST"])])
    with serve_in_thread(app) as url:
        yield url, got


def verify(secret: str, path: str, query: str, headers: dict[str, str], body: bytes) -> bool:
    """An independent verifier: Healthie's recipe, written out from the guide."""
    digest = headers["content-digest"]
    expected_digest = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
    if digest != expected_digest:
        return False
    length = len(body.decode("utf-8").encode("utf-16-le")) // 2
    data = f"post {path} {query} {digest.split('=', 1)[1]} application/json {length}"
    mac = hmac.new(secret.encode(), data.encode(), hashlib.sha256).hexdigest()
    created = headers["signature-input"].rsplit("created=", 1)[1]
    return hmac.compare_digest(headers["signature"], f"sig1={mac}") and created.isdigit()


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with httpx2.Client(timeout=5) as http:
        sandbox = Sandbox(patients=50, seed=3, http_client=http)
        yield sandbox


def test_update_emits_signed_patient_updated(receiver, sb: Sandbox) -> None:
    url, got = receiver
    got.requests.clear()
    sb.register_webhook(f"{url}/hooks/healthie?env=test", ["patient.updated"])
    change = sb.update_client("1000001", first_name="Zoë", email="zoe.nunez@example.com")
    assert [d.status_code for d in change.deliveries] == [200]
    ((path, query, headers, body),) = got.requests
    assert verify(sb.webhook_secret, path, query, headers, body)
    assert headers["content-type"] == "application/json"
    assert headers["signature-input"].startswith(
        'sig1=("@method" "@path" "@query" "content-digest" "content-type" "content-length")'
        ";created="
    )
    payload = json.loads(body)
    assert payload == {
        "resource_id": "1000001",
        "resource_id_type": "User",
        "event_type": "patient.updated",
        "changed_fields": ["first_name", "email"],
    }
    assert "updated_at" not in payload["changed_fields"]
    assert "Zoë" not in body.decode()  # thin payloads: no patient data travels


def test_tag_and_appointment_events(receiver, sb: Sandbox) -> None:
    url, got = receiver
    got.requests.clear()
    sb.register_webhook(f"{url}/hooks/healthie")
    tag = next(t for t in sb.org.tags if t not in patient_of(sb.org, "1000002").applied_tags)
    sb.apply_tag("1000002", tag)
    sb.remove_applied_tag("1000002", tag)
    created = sb.create_appointment("1000002", date="2026-11-20T15:00:00+00:00")
    sb.update_appointment(created.subject_id, pm_status="No-Show")
    sb.delete_appointment(created.subject_id)
    events = [json.loads(r[3]) for r in got.requests]
    assert [e["event_type"] for e in events] == [
        "applied_tag.created",
        "applied_tag.deleted",
        "appointment.created",
        "appointment.updated",
        "appointment.deleted",
    ]
    assert events[0]["user_id"] == "1000002"
    assert events[0]["tag_id"] == tag
    assert events[0]["resource_id_type"] == "AppliedTag"
    assert all(e["resource_id_type"] == "Appointment" for e in events[2:])
    assert "pm_status" in events[3]["changed_fields"]
    assert all(verify(sb.webhook_secret, *r) for r in got.requests)
    sent = [d.event.event_type for d in sb.emitter.deliveries]
    assert sent == [e["event_type"] for e in events]


def test_recurring_appointment_events_are_off_unless_enabled(receiver, sb: Sandbox) -> None:
    url, got = receiver
    sb.register_webhook(f"{url}/hooks/healthie", ["appointment.updated"])
    appt = next(
        a
        for a in (
            sb.org.appointment(x)
            for p in patients_of(sb.org, sb.org.patient_ids())
            for x in p.appointment_ids
        )
        if a and a.recurring_appointment and a.deleted_at is None
    )
    assert sb.update_appointment(appt.id, pm_status="Cancelled").deliveries == []
    sb.recurring_appointment_webhooks = True
    assert len(sb.update_appointment(appt.id, pm_status="Occurred").deliveries) == 1


def test_failed_delivery_is_recorded_not_raised(receiver, sb: Sandbox) -> None:
    url, got = receiver
    sb.register_webhook("http://127.0.0.1:9/nothing-listens-here")
    got.status = 500
    try:
        sb.register_webhook(f"{url}/hooks/healthie")
        change = sb.update_client("1000004", last_name="O'Connor-Øberg")
    finally:
        got.status = 200
    assert sorted(str(d.status_code) for d in change.deliveries) == ["500", "None"]
    assert all(d.failed for d in change.deliveries)
    assert patient_of(sb.org, "1000004").last_name == "O'Connor-Øberg"


def test_validation_failure_changes_nothing_and_sends_nothing(receiver, sb: Sandbox) -> None:
    url, _ = receiver
    sb.register_webhook(f"{url}/hooks/healthie")
    before = repr(sb.org.patient("1000005"))
    with pytest.raises(ValidationFailed) as failed:
        sb.update_client("1000005", first_name="Ana", email="nope")
    assert failed.value.messages[0].field == "email"
    assert repr(sb.org.patient("1000005")) == before
    assert sb.emitter.deliveries == []
