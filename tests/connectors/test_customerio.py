"""The customer.io connector: request shapes Prism accepts against customer.io's published Track
API definition (every Prism test ends with no violation logged), /v2/entity below the batch
threshold and /v2/batch above it (split under 500 KB), per-item failures from a 207, event ids
that deduplicate replays, 429 honoured, regions, and no patient value in any error. The
contract suite runs it too (``tests/contracts/targets_crm.py``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx2
import pytest

from app.core.errors import (
    ConfigurationError,
    FatalError,
    PlanValidationError,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)
from app.resilience.retry import Backoff, RetryPolicy
from connectors.base import Scope, Write
from connectors.customerio import CustomerIoConnector
from tests.contracts.targets_crm import (
    Recorder,
    assert_valid_since,
    customerio_events,
    customerio_people,
)
from tests.servers.prism import Prism, prism_customerio  # noqa: F401 - the session fixture

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def scope(patient: str, integration: str = "clinic-a") -> Scope:
    return Scope(integration, patient, "run-1", AT)


def identify(connector: CustomerIoConnector, patient: str, **attributes: Any) -> Write:
    args = connector.validate(
        "identify", {"patient_id": patient, "attributes": attributes}, patient
    )
    return Write(scope(patient), "identify", args)


def event(
    connector: CustomerIoConnector,
    patient: str,
    key: str,
    name: str = "appointment_booked",
    integration: str = "clinic-a",
    **more: Any,
) -> Write:
    args = connector.validate(
        "track_event", {"patient_id": patient, "key": key, "name": name, **more}, patient
    )
    return Write(scope(patient, integration), "track_event", args)


def connect(transport: httpx2.BaseTransport, **options: Any) -> CustomerIoConnector:
    built = CustomerIoConnector.from_config(
        "crm", {"base_url": "http://cio.test", **options}, {"site_id": "site", "api_key": "key"}
    )
    assert isinstance(built, CustomerIoConnector)
    built.client = httpx2.Client(transport=transport, auth=("site", "key"))
    return built


@pytest.fixture
def prism(prism_customerio: Prism) -> Iterator[tuple[Prism, Recorder]]:  # noqa: F811
    mark = prism_customerio.mark()
    recorder = Recorder(prism_customerio)
    yield prism_customerio, recorder
    recorder.inner.close()
    assert_valid_since(prism_customerio, mark)


def on_prism(prism: tuple[Prism, Recorder], **options: Any) -> CustomerIoConnector:
    server, recorder = prism
    return connect(recorder, **{"base_url": server.url, **options})


def test_identify_and_events_one_entity_request_each_in_shapes_the_definition_accepts(prism):
    connector = on_prism(prism)
    writes = [
        identify(connector, "1", first_name="Ann", age=40, vip=True, score=1.5, nickname=None),
        event(
            connector,
            "1",
            "appt-9",
            timestamp="2026-12-01T09:00:00+00:00",
            data={"starts_at": "2026-12-02T10:00:00Z", "fee": 12.5, "room": None},
        ),
    ]
    results = connector.execute_batch(writes)
    assert [r.error for r in results] == [None, None]
    assert [r.key for r in results] == ["1", "appt-9"]
    sent = prism[1].sent
    assert [s.path for s in sent] == ["/api/v2/entity", "/api/v2/entity"]
    assert sent[0].body == {
        "type": "person",
        "identifiers": {"id": "1"},
        "action": "identify",
        # the definition types identify attributes string | integer | boolean
        "attributes": {"first_name": "Ann", "age": 40, "vip": True, "score": "1.5", "nickname": ""},
    }
    tracked = sent[1].body
    assert tracked["action"] == "event"
    assert tracked["name"] == "appointment_booked"
    assert tracked["timestamp"] == 1_796_115_600
    assert ULID.match(tracked["id"])
    assert customerio_people(sent)["1"] == {
        "first_name": "Ann",
        "age": 40,
        "vip": True,
        "score": "1.5",
    }


def test_a_chunk_at_the_threshold_is_one_batch_request(prism):
    connector = on_prism(prism, batch_from=3)
    writes = [identify(connector, str(p), plan="basic") for p in range(1, 4)]
    writes += [event(connector, str(p), f"tag-{p}", name="tag_applied") for p in range(1, 4)]
    results = connector.execute_batch(writes)
    assert all(r.error is None for r in results)
    sent = prism[1].sent
    assert [s.path for s in sent] == ["/api/v2/batch", "/api/v2/batch"]  # one per operation
    assert [i["identifiers"]["id"] for i in sent[0].body["batch"]] == ["1", "2", "3"]
    assert len(customerio_events(sent)) == 3
    assert connector.http_requests == 2


def test_batches_stay_under_500_kb_and_items_under_32_kb(prism):
    connector = on_prism(prism, batch_from=2)
    big = {f"a{i}": "x" * 900 for i in range(30)}  # ~28 KB per item
    writes = [identify(connector, str(p), **big) for p in range(1, 41)]
    assert all(r.error is None for r in connector.execute_batch(writes))
    sizes = [len(json.dumps(s.body).encode()) for s in prism[1].sent]
    assert len(sizes) >= 3
    assert max(sizes) < 500_000
    assert sum(len(s.body["batch"]) for s in prism[1].sent) == 40
    with pytest.raises(PlanValidationError, match="exceed 32 KB"):
        identify(connector, "1", **{f"a{i}": "x" * 900 for i in range(40)})


def test_a_207_fails_only_the_items_it_names():
    def answer(request: httpx2.Request) -> httpx2.Response:
        errors = [
            {
                "batch_index": 1,
                "reason": "invalid",
                "field": "name",
                "message": "Mallory is not a valid value",
            }
        ]
        return httpx2.Response(207, json={"errors": errors})

    connector = connect(httpx2.MockTransport(answer), batch_from=2)
    writes = [event(connector, p, f"k{p}") for p in ("1", "2", "3")]
    results = connector.execute_batch(writes)
    assert results[0].error is None
    assert results[2].error is None
    assert isinstance(results[1].error, TargetRejected)
    assert str(results[1].error) == (
        "customer.io POST /api/v2/batch: HTTP 207, item 1 refused (field name)"
    )


def test_event_ids_deduplicate_replays_and_differ_per_object_and_integration():
    connector = connect(httpx2.MockTransport(lambda _r: httpx2.Response(200)))
    first = connector.event_id(event(connector, "1", "appt-9"))
    assert first == connector.event_id(event(connector, "1", "appt-9"))
    assert first != connector.event_id(event(connector, "1", "appt-10"))
    assert first != connector.event_id(event(connector, "1", "appt-9", integration="clinic-b"))
    assert first != connector.event_id(
        event(connector, "1", "appt-9", name="appointment_cancelled")
    )
    stamped = connector.event_id(event(connector, "1", "appt-9", timestamp="2026-12-01T09:00:00Z"))
    assert ULID.match(stamped)
    assert stamped[:10] != first[:10]  # the ULID's time part is the event's


def test_429_honours_retry_after_then_succeeds():
    answers = iter([httpx2.Response(429, headers={"retry-after": "2"}), httpx2.Response(200)])
    slept: list[float] = []
    connector = connect(httpx2.MockTransport(lambda _r: next(answers)))
    connector.retry = RetryPolicy(
        max_attempts=3, backoff=Backoff(initial=0.1, jitter=0), max_wait=60, sleep=slept.append
    )
    (result,) = connector.execute_batch([identify(connector, "1", plan="basic")])
    assert result.error is None
    assert slept == [2.0]


def test_persistent_429_is_rate_limited_with_the_wait_for_the_queue():
    connector = connect(
        httpx2.MockTransport(lambda _r: httpx2.Response(429, headers={"retry-after": "90"}))
    )
    connector.retry = RetryPolicy(max_attempts=3, max_wait=30, sleep=lambda _s: None)
    (result,) = connector.execute_batch([identify(connector, "1")])
    assert isinstance(result.error, RateLimited)
    assert result.error.retry_after == 90.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, ConfigurationError), (400, FatalError), (502, UpstreamUnavailable)],
)
def test_errors_name_status_and_path_never_a_patient_value(status, kind):
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, json={"meta": {"errors": [request.content.decode()]}})

    connector = connect(httpx2.MockTransport(answer))
    connector.retry = RetryPolicy(max_attempts=1)
    (result,) = connector.execute_batch([identify(connector, "1", last_name="Mallory")])
    assert isinstance(result.error, kind)
    assert "Mallory" not in str(result.error)
    assert str(result.error) == f"customer.io POST /api/v2/entity: HTTP {status}"


def test_regions_and_the_base_url_option():
    def built(**options: Any) -> str:
        made = CustomerIoConnector.from_config("crm", options, {"site_id": "s", "api_key": "k"})
        assert isinstance(made, CustomerIoConnector)
        return made.base_url

    assert built() == "https://track.customer.io"
    assert built(region="eu") == "https://track-eu.customer.io"
    assert built(region="eu", base_url="http://127.0.0.1:9/") == "http://127.0.0.1:9"
    with pytest.raises(ConfigurationError, match="options.region"):
        built(region="apac")
    with pytest.raises(ConfigurationError, match="site_id"):
        CustomerIoConnector.from_config("crm", {}, {"api_key": "k"})


@pytest.mark.parametrize(
    ("operation", "args"),
    [
        ("identify", {"patient_id": "1", "attributes": {"id": "2"}}),
        ("identify", {"patient_id": "1", "attributes": {"cio_id": "cio_1"}}),
        ("identify", {"patient_id": "1", "attributes": {"_timestamp": 1}}),
        ("identify", {"patient_id": "1", "attributes": {"note": "Mallory " * 200}}),
        ("track_event", {"patient_id": "1", "key": "a", "name": "booked\nMallory"}),
    ],
)
def test_identity_changes_and_oversized_values_are_refused_before_any_io(operation, args):
    seen: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200)

    connector = connect(httpx2.MockTransport(answer))
    with pytest.raises(PlanValidationError) as refused:
        connector.validate(operation, args, "1")
    assert "Mallory" not in str(refused.value)
    assert seen == []
