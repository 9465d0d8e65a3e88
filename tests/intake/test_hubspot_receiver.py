"""``POST /webhooks/hubspot/{integration_id}`` over real HTTP (uvicorn on loopback): a signed
delivery is answered 202 and becomes one contact change per contact on the reverse topic;
a bad, stale or missing signature is 401 and publishes nothing; unknown integration 404,
oversized 413, malformed 400, unreadable secret and queue down 503."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette

from app.core.errors import QueueUnavailable
from app.intake import hubspot_receiver
from app.intake.hubspot_receiver import REVERSE_SUBSCRIPTION, ContactChange
from app.intake.hubspot_signature import sign
from app.service.runtime import Runtime
from app.service.serving import serve_in_thread
from tests.workers.test_reverse_fixtures import (
    CLIENT_SECRET,
    example_integration,
    example_runtime,
)

URL = "https://sync.example.com/webhooks/hubspot/hubspot-clinic"
PATH = "/webhooks/hubspot/hubspot-clinic"


def event(object_id: int, prop: str | None = "phone", kind: str = "contact.propertyChange") -> dict:
    out: dict[str, Any] = {
        "eventId": object_id * 10,
        "subscriptionId": 7,
        "portalId": 62515,
        "appId": 1160452,
        "occurredAt": int(time.time() * 1000) - 2000,
        "subscriptionType": kind,
        "attemptNumber": 0,
        "objectId": object_id,
        "changeSource": "CRM",
    }
    if prop is not None:
        out |= {"propertyName": prop, "propertyValue": "a value that is never kept"}
    return out


def headers(body: bytes, *, uri: str = URL, secret: str = CLIENT_SECRET, age_ms: int = 1000):
    ts = str(int(time.time() * 1000) - age_ms)
    return {
        "content-type": "application/json",
        "X-HubSpot-Request-Timestamp": ts,
        "X-HubSpot-Signature-v3": sign(secret, method="POST", uri=uri, body=body, timestamp=ts),
    }


class Served:
    def __init__(self, runtime: Runtime, url: str) -> None:
        self.runtime, self.url = runtime, url

    def post(self, body: bytes, path: str = PATH, **kw: Any) -> httpx2.Response:
        hdrs = kw.pop("hdrs", None) or headers(body, **kw)
        return httpx2.post(self.url + path, content=body, headers=hdrs)

    def published(self) -> list[ContactChange]:
        messages = self.runtime.queue.pull(REVERSE_SUBSCRIPTION, 100)
        self.runtime.queue.ack(REVERSE_SUBSCRIPTION, [m.ack_id for m in messages])
        assert all(m.attributes == {"integration": "hubspot-clinic"} for m in messages)
        return sorted(
            (ContactChange.model_validate_json(m.data) for m in messages),
            key=lambda c: c.contact_id,
        )


def serve(runtime: Runtime) -> Iterator[Served]:
    app = Starlette(routes=hubspot_receiver.build_router(runtime).routes)
    with serve_in_thread(app) as url:
        yield Served(runtime, url)


@pytest.fixture
def served(tmp_path) -> Iterator[Served]:
    runtime = example_runtime(tmp_path, example_integration())
    yield from serve(runtime)
    runtime.close()


def test_a_signed_delivery_is_accepted_and_marks_each_contact_once(served):
    body = json.dumps(
        [
            event(50001, "phone"),
            event(50001, "email"),
            event(50002, "firstname"),
            event(50003, "lifecyclestage"),
            event(50004, None, "contact.creation"),
        ]
    ).encode()
    response = served.post(body)
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "accepted", "marks": 3}
    changes = served.published()
    assert [(c.contact_id, c.properties) for c in changes] == [
        ("50001", ("email", "phone")),
        ("50002", ("firstname",)),
        ("50004", None),  # a new contact: every property
    ]  # 50003 changed only a property the reverse rules do not read
    assert all(c.integration_id == "hubspot-clinic" for c in changes)
    assert "never kept" not in changes[0].model_dump_json()


def test_bad_stale_or_missing_signatures_are_refused_and_publish_nothing(served):
    body = json.dumps([event(50001)]).encode()
    local = served.url + PATH  # the URL the request arrives at, not the one HubSpot signs
    assert served.post(body, uri=local).status_code == 401
    assert served.post(body, secret="wrong").status_code == 401
    assert served.post(body, age_ms=301_000).status_code == 401
    tampered = headers(body)
    assert served.post(body.replace(b"50001", b"50009"), hdrs=tampered).status_code == 401
    assert served.post(body, hdrs={"content-type": "application/json"}).status_code == 401
    assert served.published() == []
    assert served.runtime.stats.outcomes["rejected_hubspot_signature"] == 5


def test_without_webhook_url_the_arrival_url_is_what_is_signed(tmp_path):
    runtime = example_runtime(tmp_path, example_integration(webhook_url=None))
    for s in serve(runtime):
        body = json.dumps([event(50001)]).encode()
        assert s.post(body, uri=s.url + PATH).status_code == 202
        assert s.post(body, uri=URL).status_code == 401
    runtime.close()


def test_unknown_integration_oversize_malformed_and_ignored(served):
    body = json.dumps([event(50001)]).encode()
    assert served.post(body, path="/webhooks/hubspot/nobody").status_code == 404
    big = b"[" + b" " * (served.runtime.settings.max_webhook_body_bytes + 1) + b"]"
    assert served.post(big).status_code == 413
    assert served.post(b'{"not": "an array"}').status_code == 400
    assert served.post(b"[1, 2]").status_code == 400
    hdrs = headers(body) | {"content-type": "text/plain"}
    assert served.post(body, hdrs=hdrs).status_code == 415
    other = json.dumps([event(7, None, "deal.creation")]).encode()
    response = served.post(other)
    assert (response.status_code, response.json()["status"]) == (202, "ignored")
    assert served.published() == []


def test_an_unreadable_secret_or_a_down_queue_is_503(tmp_path, monkeypatch):
    runtime = example_runtime(tmp_path, example_integration(), client_secret=False)
    body = json.dumps([event(50001)]).encode()
    for s in serve(runtime):
        assert s.post(body).status_code == 503
    runtime.close()

    runtime = example_runtime(tmp_path, example_integration())

    def fail(*_args: Any, **_kw: Any) -> Any:
        raise QueueUnavailable("down")

    def failed_future(*_args: Any, **_kw: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_exception(QueueUnavailable("down"))
        return future

    for s in serve(runtime):
        monkeypatch.setattr(runtime.queue, "publish_many", fail)
        monkeypatch.setattr(runtime.queue, "submit_many", failed_future)
        assert s.post(body).status_code == 503
    runtime.close()
