"""The webhook receiver's answers, through the real FastAPI app."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.core.errors import QueueUnavailable
from app.core.models import Cadence
from app.queue.topology import dirty_subscription
from tests.helpers import demo_runtime

PATH = "/webhooks/healthie/demo-clinic"


def signed(body: bytes, secret: str = "whsec_test", path: str = PATH, query: str = ""):
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    data = f"post {path} {query} {digest} application/json {len(body)}"
    mac = hmac.new(secret.encode(), data.encode(), hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "Content-Digest": f"SHA-256={digest}",
        "Signature": f"sig1={mac}",
    }


@pytest.fixture
def runtime(tmp_path):
    rt = demo_runtime(tmp_path)
    yield rt
    rt.close()


@pytest.fixture
def client(runtime):
    return TestClient(create_app(runtime))


def body(**kw) -> bytes:
    payload = {
        "resource_id": "42",
        "resource_id_type": "User",
        "event_type": "patient.updated",
        "changed_fields": ["phone_number"],
        **kw,
    }
    return json.dumps(payload).encode()


def test_valid_webhook_is_accepted_and_published(client, runtime):
    b = body()
    response = client.post(PATH, content=b, headers=signed(b))
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "marks": 1}
    (message,) = runtime.queue.pull(dirty_subscription(Cadence.DAILY))
    assert message.attributes == {"integration": "demo-clinic", "cadence": "daily"}
    assert json.loads(message.data)["subject_id"] == "42"


def test_bad_signature_is_401_and_publishes_nothing(client, runtime):
    b = body()
    headers = signed(b, secret="wrong")
    assert client.post(PATH, content=b, headers=headers).status_code == 401
    assert runtime.queue.pull(dirty_subscription(Cadence.DAILY)) == []
    assert runtime.stats.rejected == 1


def test_unknown_integration_is_404_without_hints(client):
    response = client.post("/webhooks/healthie/other", content=body(), headers=signed(body()))
    assert response.status_code == 404
    assert "demo" not in response.text


def test_malformed_signed_body_is_400(client):
    b = b'{"resource_id": "1"}'
    assert client.post(PATH, content=b, headers=signed(b)).status_code == 400
    b = b"not json"
    assert client.post(PATH, content=b, headers=signed(b)).status_code == 400


def test_wrong_content_type_is_415(client):
    b = body()
    headers = {**signed(b), "Content-Type": "text/plain"}
    assert client.post(PATH, content=b, headers=headers).status_code == 415


def test_oversized_body_is_413(tmp_path):
    rt = demo_runtime(tmp_path, max_webhook_body_bytes=64)
    b = body(changed_fields=["x" * 100])
    assert TestClient(create_app(rt)).post(PATH, content=b, headers=signed(b)).status_code == 413
    rt.close()


def test_clinical_and_unknown_events_are_2xx_and_mark_nothing(client, runtime):
    for event in ("form_answer_group.created", "something.new"):
        b = body(event_type=event)
        assert client.post(PATH, content=b, headers=signed(b)).status_code == 202
    assert runtime.queue.pull(dirty_subscription(Cadence.DAILY)) == []


def test_failed_publish_is_503(client, runtime, monkeypatch):
    from concurrent.futures import Future

    def fail(*_args, **_kw):
        raise QueueUnavailable("down")

    def failed_future(*_args, **_kw):
        future: Future = Future()
        future.set_exception(QueueUnavailable("down"))
        return future

    monkeypatch.setattr(runtime.queue, "publish_many", fail)
    monkeypatch.setattr(runtime.queue, "submit_many", failed_future)
    b = body()
    assert client.post(PATH, content=b, headers=signed(b)).status_code == 503


def test_flush_route_needs_the_token(tmp_path):
    rt = demo_runtime(tmp_path, flush_token="a-real-random-token")
    c = TestClient(create_app(rt))
    assert c.post("/flush/daily").status_code == 401
    assert c.post("/flush/daily", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = c.post("/flush/daily", headers={"Authorization": "Bearer a-real-random-token"})
    assert ok.status_code == 200
    assert ok.json()["work_items"] == 0
    assert c.post("/flush/monthly", headers={"Authorization": "Bearer x"}).status_code == 422
    rt.close()


def test_missing_signing_secret_is_503_not_500(tmp_path):
    from app.secrets.stores import MemorySecretStore

    rt = demo_runtime(tmp_path)
    rt.secrets = MemorySecretStore({})
    b = body()
    response = TestClient(create_app(rt)).post(PATH, content=b, headers=signed(b))
    assert response.status_code == 503
    assert rt.check_secrets()  # names what is missing
    rt.close()


def test_identical_deliveries_within_the_window_are_dropped_when_enabled(tmp_path):
    import time

    rt = demo_runtime(tmp_path, webhook_dedupe_seconds=1)
    c = TestClient(create_app(rt))
    b, other = body(), body(resource_id="43")
    answers = [c.post(PATH, content=x, headers=signed(x)).json()["status"] for x in (b, b, other)]
    assert answers == ["accepted", "duplicate", "accepted"]
    time.sleep(1.1)  # the key expired: a later retry counts again
    assert c.post(PATH, content=b, headers=signed(b)).json()["status"] == "accepted"
    assert len(rt.queue.pull(dirty_subscription(Cadence.DAILY))) == 3
    rt.close()


def test_duplicates_are_kept_when_dedupe_is_off(client, runtime):
    b = body()
    for _ in range(2):
        assert client.post(PATH, content=b, headers=signed(b)).json()["status"] == "accepted"
    assert len(runtime.queue.pull(dirty_subscription(Cadence.DAILY))) == 2
