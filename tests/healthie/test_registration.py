"""Webhook lifecycle against the real sandbox over HTTP: register, drift, fix, test, rotate, warn.

The sandbox serves Healthie's webhook queries and mutations; the receiver is the engine's own
app (``app.api.app.create_app``) with the demo integration, both on loopback.
"""

from __future__ import annotations

from datetime import timedelta

import httpx2
import pytest

from app.api.app import create_app as engine_app
from app.core.errors import ConfigurationError, FatalError
from app.healthie import registration as lifecycle
from app.healthie.client import HealthieClient
from app.healthie.registration import (
    PlannedStep,
    WebhookPlan,
    apply_plan,
    confirm_arrival,
    engine_webhook_url,
    list_webhooks,
    needed_events,
    plan_webhooks,
    rotate_secret,
    rotation_steps,
    send_test,
    webhook_status,
    webhook_warnings,
    webhooks_sync,
)
from app.healthie.registration.remote import enum_name, fingerprint
from app.intake.events import (
    APPLIED_TAG_EVENTS,
    APPOINTMENT_EVENTS,
    DEFAULT_PATIENT_SCOPED,
    PATIENT_EVENTS,
    WebhookPayload,
    resolve_event,
)
from app.service.serving import serve_in_thread
from sandbox.core import DEFAULT_NOW, Sandbox
from sandbox.server import create_app as sandbox_app
from tests.helpers import demo_runtime

pytestmark = pytest.mark.e2e

BASE = "https://engine.example"
SINCE = DEFAULT_NOW - timedelta(hours=1)  # the sandbox's clock, not the wall clock
DEFAULTS = PATIENT_EVENTS | APPOINTMENT_EVENTS | APPLIED_TAG_EVENTS | DEFAULT_PATIENT_SCOPED


@pytest.fixture
def sandbox():
    sb = Sandbox(patients=30, seed=3)
    yield sb
    sb.close()


@pytest.fixture
def healthie(sandbox):
    with serve_in_thread(sandbox_app(sandbox)) as base:
        client = HealthieClient(url=f"{base}/graphql", api_key=sandbox.api_key, rate_limit=1000)
        yield client
        client.close()


@pytest.fixture
def runtime(tmp_path, sandbox):
    rt = demo_runtime(tmp_path, webhook_secret=sandbox.webhook_secret)
    yield rt
    rt.close()


@pytest.fixture
def integration(runtime):
    return runtime.integrations["demo-clinic"]


def test_needed_events_are_the_receivers_events_plus_extras_never_clinical(integration):
    assert needed_events(integration) == DEFAULTS | {"patient.merged"}
    extra = integration.model_copy(
        update={"events": ["task.created", "form_answer_group.created", "note.updated"]}
    )
    needed = needed_events(extra)
    assert needed == DEFAULTS | {"patient.merged", "task.created"}
    # every subscribed event is one the receiver turns into work (none would be "ignored")
    for event in needed:
        payload = WebhookPayload.model_validate(
            {"resource_id": "1", "resource_id_type": "User", "event_type": event, "user_id": "2"}
        )
        assert resolve_event("demo-clinic", payload, DEFAULT_NOW, frozenset(["task.created"]))


def test_sync_registers_one_webhook_then_does_nothing(healthie, sandbox, integration):
    url = engine_webhook_url(BASE, integration.id)
    assert url == "https://engine.example/webhooks/healthie/demo-clinic"
    needed = needed_events(integration)
    plan = plan_webhooks(list_webhooks(healthie), url, needed)
    assert [s.kind for s in plan.steps] == ["create"]
    assert plan.steps[0].add_events == sorted(needed)

    (action,) = apply_plan(healthie, plan)
    assert action.ok
    assert action.kind == "create"
    hook = sandbox.emitter.webhooks[action.webhook_id]
    assert (hook.url, hook.is_enabled, hook.should_retry) == (url, True, True)
    assert hook.event_types == {enum_name(e) for e in needed}
    assert action.secret_fingerprint == fingerprint(sandbox.webhook_secret)
    assert action.new_secret is not None
    dumped = action.model_dump_json() + repr(action) + plan.model_dump_json()
    assert sandbox.webhook_secret not in dumped

    again = plan_webhooks(list_webhooks(healthie), url, needed)
    assert again.in_sync, again.steps
    assert apply_plan(healthie, again) == []
    assert webhooks_sync(healthie, integration, BASE) == []
    assert len(sandbox.emitter.webhooks) == 1


def test_drift_is_reported_and_fixed_and_other_urls_are_left_alone(healthie, sandbox, integration):
    (created,) = webhooks_sync(healthie, integration, BASE)
    ours = sandbox.emitter.webhooks[created.webhook_id]
    url = ours.url
    # drift: an event unsubscribed and a clinical one added, the webhook disabled, a duplicate
    # at the same URL (trailing slash), and a stray webhook for another system
    ours.event_types = (ours.event_types - {"PATIENT_UPDATED"}) | {"FORM_ANSWER_GROUP_CREATED"}
    sandbox.set_webhook_enabled(ours.id, False)
    duplicate = sandbox.register_webhook(url + "/", ["appointment.updated"])
    stray = sandbox.register_webhook("https://other.example/hook", ["patient.updated"])

    status = webhook_status(healthie, integration, BASE, since=SINCE)
    update, delete = status.plan.steps
    assert (update.kind, update.webhook_id) == ("update", ours.id)
    assert update.add_events == ["patient.updated"]
    assert update.remove_events == ["FORM_ANSWER_GROUP_CREATED"]
    assert update.enable
    assert not update.retry
    assert (delete.kind, delete.webhook_id) == ("delete", duplicate.id)
    assert [h.id for h in status.plan.others] == [stray.id]
    assert any(w.startswith(f"webhook {ours.id} is disabled") for w in status.warnings)
    assert any(w.startswith(f"drift: delete webhook {duplicate.id}") for w in status.warnings)
    assert sandbox.webhook_secret not in status.model_dump_json() + repr(status)

    actions = apply_plan(healthie, status.plan)
    assert [(a.kind, a.webhook_id, a.ok) for a in actions] == [
        ("update", ours.id, True),
        ("delete", duplicate.id, True),
    ]
    assert ours.is_enabled
    assert ours.event_types == {enum_name(e) for e in needed_events(integration)}
    assert set(sandbox.emitter.webhooks) == {ours.id, stray.id}
    assert (stray.url, stray.event_types, stray.is_enabled) == (
        "https://other.example/hook",
        frozenset({"PATIENT_UPDATED"}),
        True,
    )

    assert webhooks_sync(healthie, integration, BASE) == []  # idempotent
    assert webhook_status(healthie, integration, BASE, since=SINCE).warnings == []

    del sandbox.emitter.webhooks[ours.id]  # deleted at Healthie: sync registers it again
    (recreated,) = webhooks_sync(healthie, integration, BASE)
    assert recreated.kind == "create"
    assert recreated.webhook_id != ours.id


def test_refusals_in_messages_become_errors(healthie):
    bad_url = plan_webhooks([], "ftp://engine.example/webhooks/healthie/x", {"patient.updated"})
    with pytest.raises(ConfigurationError, match="Url is invalid"):
        apply_plan(healthie, bad_url)
    gone = WebhookPlan(
        url="https://engine.example/x",
        needed=[],
        steps=[PlannedStep(kind="update", webhook_id="424242", enable=True)],
    )
    with pytest.raises(FatalError, match="webhook 424242.*Webhook not found"):
        apply_plan(healthie, gone)


def test_test_webhook_reaches_the_engine_and_verifies(healthie, sandbox, runtime, integration):
    with serve_in_thread(engine_app(runtime)) as base:
        (created,) = webhooks_sync(healthie, integration, base)
        sandbox.update_client("1000001", first_name="Ana")  # earlier deliveries in the log
        earlier = send_test(healthie, created.webhook_id, receiver_url=base)
        first = confirm_arrival(healthie, earlier, receiver_url=base, timeout=5, interval=0.05)
        test = send_test(healthie, created.webhook_id, receiver_url=base)
        arrival = confirm_arrival(healthie, test, receiver_url=base, timeout=5, interval=0.05)
    assert test.sent
    assert test.since is not None
    assert test.known_ids
    assert (arrival.verdict, arrival.source, arrival.http_status) == (
        "verified",
        "sentWebhooks",
        "202",
    )
    assert arrival.ok
    assert arrival.receiver_delta == {"ignored": 1}
    assert first.ok
    assert first.delivery_id != arrival.delivery_id
    delivered = sandbox.emitter.deliveries[-1]
    assert (delivered.id, delivered.event.event_type) == (arrival.delivery_id, "test.created")


def test_test_webhook_with_the_wrong_secret_is_refused(tmp_path, healthie, sandbox):
    runtime = demo_runtime(tmp_path, webhook_secret="whsec_not_the_one")
    integration = runtime.integrations["demo-clinic"]
    try:
        with serve_in_thread(engine_app(runtime)) as base:
            (created,) = webhooks_sync(healthie, integration, base)
            test = send_test(healthie, created.webhook_id, receiver_url=base)
            arrival = confirm_arrival(healthie, test, receiver_url=base, timeout=5, interval=0.05)
            url = engine_webhook_url(base, integration.id)
            warnings = webhook_warnings(
                healthie,
                integration,
                url=url,
                since=SINCE,
                accepted_secrets=runtime.webhook_secrets(integration.id),
            )
    finally:
        runtime.close()
    assert not test.sent
    assert (arrival.verdict, arrival.http_status) == ("signature_refused", "401")
    assert arrival.receiver_delta == {"rejected_signature": 1}
    assert f"webhook {created.webhook_id} signs with a secret that none" in " ".join(warnings)
    assert "whsec_" not in " ".join(warnings)


def test_confirm_arrival_reports_a_delivery_it_never_sees(healthie, sandbox):
    hook = sandbox.register_webhook("https://engine.example/hook", ["patient.updated"])
    sandbox.set_webhook_failing(hook.id, 503)
    test = send_test(healthie, hook.id)
    other = test.model_copy(update={"webhook_id": "999"})  # not the webhook that was tested
    failed = confirm_arrival(healthie, test, timeout=1)
    assert (failed.verdict, failed.http_status) == ("failed", "503")
    missed = confirm_arrival(healthie, other, timeout=0.2, interval=0.05)
    assert (missed.verdict, missed.source) == ("not_seen", "none")
    # a test delivery logged before the send (Healthie logs asynchronously) is never taken
    # for the new one's
    later = send_test(healthie, hook.id)
    assert failed.delivery_id in later.known_ids
    logged = sandbox.emitter.deliveries[-1].id
    not_yet = later.model_copy(update={"known_ids": [*later.known_ids, logged]})
    assert confirm_arrival(healthie, not_yet, timeout=0.2, interval=0.05).verdict == "not_seen"


def test_rotation_accepts_new_secret_only_once_its_ref_is_configured(
    healthie, sandbox, runtime, integration
):
    old_ref = integration.healthie.webhook_secrets[0]
    new_ref = "demo-clinic/webhook-signing-secret-next"

    def check(base: str, webhook_id: str) -> str:
        test = send_test(healthie, webhook_id, receiver_url=base)
        return confirm_arrival(healthie, test, receiver_url=base, timeout=5, interval=0.05).verdict

    with serve_in_thread(engine_app(runtime)) as base, httpx2.Client(timeout=5) as http:
        (created,) = webhooks_sync(healthie, integration, base)
        wid = created.webhook_id
        assert check(base, wid) == "verified"
        signed_with_old = sandbox.emitter.deliveries[-1]  # a retry in flight, say

        (rotation,) = rotate_secret(healthie, [wid])
        assert rotation.secret_returned
        assert rotation.new_secret is not None
        new_secret = rotation.new_secret.get_secret_value()
        assert new_secret == sandbox.emitter.webhooks[wid].secret != sandbox.webhook_secret
        assert rotation.secret_fingerprint == fingerprint(new_secret)
        assert new_secret not in rotation.model_dump_json() + repr(rotation)

        assert check(base, wid) == "signature_refused"  # only the old ref configured

        runtime.secrets.set(new_ref, new_secret)
        runtime.integrations[integration.id] = integration.model_copy(
            update={
                "healthie": integration.healthie.model_copy(
                    update={"webhook_secrets": [old_ref, new_ref]}
                )
            }
        )
        runtime.reload_secrets()
        assert check(base, wid) == "verified"  # both refs: the new signature verifies
        replay = http.post(
            signed_with_old.url, content=signed_with_old.body, headers=signed_with_old.headers
        )
        assert replay.status_code == 202  # ...and so does one signed before the expiry

    steps = rotation_steps(integration, [wid], new_ref=new_ref, base="https://engine.example")
    text = "\n".join(steps)
    assert f'["{old_ref}", "{new_ref}"]' in text
    assert f'["{new_ref}"]' in text
    assert "HEALTHIE_SYNC_SECRET_DEMO_CLINIC_WEBHOOK_SIGNING_SECRET_NEXT" in text
    assert new_secret not in text
    assert sandbox.webhook_secret not in text


def test_warnings_name_disabled_and_failing_webhooks_by_id(healthie, sandbox, integration):
    (created,) = webhooks_sync(healthie, integration, BASE)
    wid = created.webhook_id
    url = engine_webhook_url(BASE, integration.id)
    elsewhere = sandbox.register_webhook("https://other.example/hook", ["task.created"])
    sandbox.set_webhook_enabled(elsewhere.id, False)
    assert webhook_warnings(healthie, integration, url=url, since=SINCE) == []

    sandbox.set_webhook_failing(wid, 500)
    change = sandbox.update_client("1000002", first_name="Zoë")
    assert change.deliveries
    assert change.deliveries[0].failed
    sandbox.set_webhook_enabled(wid, False)
    warnings = webhook_warnings(healthie, integration, url=url, since=SINCE)
    assert warnings[0].startswith(f"webhook {wid} is disabled in Healthie")
    failing = f"webhook {wid}: 1 failed deliveries to {url} since {SINCE.isoformat()}"
    assert f"{failing}, last HTTP 500" in warnings
    assert f"drift: update webhook {wid} (disabled)" in warnings
    assert "Zoë" not in " ".join(warnings)
    assert "1000002" not in " ".join(warnings)

    everywhere = webhook_warnings(healthie, integration, since=SINCE)  # no URL: every webhook
    assert any(w.startswith(f"webhook {elsewhere.id} is disabled") for w in everywhere)
    assert lifecycle.webhooks_sync(healthie, integration, BASE)[0].kind == "update"
