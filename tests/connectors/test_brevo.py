"""The Brevo connector: request shapes Prism accepts against Brevo's published API v3 definition
(every Prism test ends with no violation logged), per-contact failures, imports, pacing per
request at Brevo's published rate, 429 with Brevo's reset header honoured, and no patient value
in any error. The contract suite runs it too (``tests/contracts/targets_crm.py``)."""

from __future__ import annotations

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
    UpstreamUnavailable,
)
from app.resilience.guard import Guard
from app.resilience.ratelimit import TokenBucket
from app.resilience.retry import Backoff, RetryPolicy
from connectors.base import Scope, Write
from connectors.brevo import BrevoConnector
from tests.contracts.targets_crm import (
    Recorder,
    assert_valid_since,
    brevo_contacts,
    brevo_refusal,
    refusing,
)
from tests.servers.prism import Prism, prism_brevo  # noqa: F401 - the session fixture

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
EMAIL = "ann.patient@example.com"


def scope(patient: str) -> Scope:
    return Scope("clinic-a", patient, "run-1", AT)


def contact(connector: BrevoConnector, patient: str, **args: Any) -> Write:
    merged = {"patient_id": patient, "email": f"p{patient}@example.com", **args}
    return Write(
        scope(patient), "upsert_contact", connector.validate("upsert_contact", merged, patient)
    )


def connect(transport: httpx2.BaseTransport, **options: Any) -> BrevoConnector:
    built = BrevoConnector.from_config(
        "crm", {"base_url": "http://brevo.test", **options}, {"api_key": "test-key"}
    )
    assert isinstance(built, BrevoConnector)
    built.client = httpx2.Client(transport=transport, headers={"api-key": "test-key"})
    return built


@pytest.fixture
def prism(prism_brevo: Prism) -> Iterator[tuple[Prism, Recorder]]:  # noqa: F811
    mark = prism_brevo.mark()
    recorder = Recorder(prism_brevo)
    yield prism_brevo, recorder
    recorder.inner.close()
    assert_valid_since(prism_brevo, mark)


def on_prism(prism: tuple[Prism, Recorder], **options: Any) -> BrevoConnector:
    server, recorder = prism
    return connect(recorder, **{"base_url": server.url, **options})


def test_upserts_add_and_remove_lists_in_shapes_brevos_definition_accepts(prism):
    connector = on_prism(prism)
    writes = [
        contact(
            connector,
            "1",
            email=EMAIL,
            attributes={"FIRSTNAME": "Ann", "AGE": 40},
            lists_add=[3],
            lists_remove=[9],
        ),
        contact(
            connector,
            "2",
            attributes={"FIRSTNAME": "Bo", "VIP": True, "SCORE": 1.5, "NICK": None},
            lists_remove=[9],
        ),
    ]
    results = connector.execute_batch(writes)
    assert [r.error for r in results] == [None, None]
    assert [r.key for r in results] == ["1", "2"]  # the patient id, never the address
    sent = prism[1].sent
    assert [(s.method, s.path) for s in sent] == [
        ("POST", "/contacts"),
        ("POST", "/contacts"),
        ("POST", "/contacts/lists/9/contacts/remove"),
    ]
    assert sent[0].body == {
        "email": EMAIL,
        "attributes": {"FIRSTNAME": "Ann", "AGE": 40, "HEALTHIE_ID": "1"},
        "listIds": [3],
        "updateEnabled": True,
    }
    assert sent[2].body == {"emails": [EMAIL, "p2@example.com"]}
    held = brevo_contacts(sent)
    assert held[EMAIL]["lists"] == {3}
    assert held["p2@example.com"]["attributes"]["HEALTHIE_ID"] == "2"
    assert connector.http_requests == 3
    assert connector.requests == 1  # one chunk


def test_the_patient_attribute_is_configurable_and_always_the_scopes(prism):
    connector = on_prism(prism, patient_attribute="EHR_PATIENT")
    (result,) = connector.execute_batch([contact(connector, "7", attributes={"HEALTHIE_ID": "x"})])
    assert result.error is None
    assert prism[1].sent[0].body["attributes"] == {"HEALTHIE_ID": "x", "EHR_PATIENT": "7"}
    with pytest.raises(PlanValidationError, match="EHR_PATIENT: set by the connector"):
        contact(connector, "7", attributes={"EHR_PATIENT": "8"})


def test_import_mode_sends_one_import_per_group_of_shared_lists(prism):
    connector = on_prism(prism, bulk="import")
    writes = [contact(connector, str(p), lists_add=[4, 3]) for p in range(1, 6)]
    writes += [contact(connector, "6", lists_add=[5]), contact(connector, "7")]
    results = connector.execute_batch(writes)
    assert all(r.error is None for r in results)
    sent = prism[1].sent
    assert [s.path for s in sent] == ["/contacts/import", "/contacts", "/contacts"]
    imported = sent[0].body
    assert imported["listIds"] == [3, 4]
    assert imported["updateExistingContacts"] is True
    assert [i["attributes"]["HEALTHIE_ID"] for i in imported["jsonBody"]] == list("12345")
    assert sent[1].body["listIds"] == [5]  # a group of one is a plain upsert
    assert "listIds" not in sent[2].body  # no list: an import cannot take it
    assert connector.http_requests == 3


def test_a_contact_brevo_refuses_fails_only_its_own_patient(prism):
    connector = on_prism(prism)
    writes = [
        contact(connector, "1"),
        contact(connector, "2", email="kpoison@example.com", lists_remove=[9]),
        contact(connector, "3", lists_remove=[9]),
    ]
    with refusing(prism[1], brevo_refusal):
        results = connector.execute_batch(writes)
    assert results[0].error is None
    assert results[2].error is None
    assert isinstance(results[1].error, FatalError)
    assert "kpoison" not in str(results[1].error)
    assert str(results[1].error) == "Brevo POST /contacts: HTTP 400"
    removed = [s.body for s in prism[1].sent if s.path.endswith("/remove")]
    assert removed == [{"emails": ["p3@example.com"]}]  # the refused contact leaves no list


@pytest.mark.parametrize(
    "args",
    [
        {"email": "ann@"},
        {"email": "ann patient@example.com"},
        {"email": "ann@example"},
        {"email": "ann@example.com\r\nbcc: x"},
        {"email": "a" * 65 + "@example.com"},
    ],
)
def test_an_invalid_email_is_refused_before_any_io_without_its_value(args):
    seen: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(201)

    connector = connect(httpx2.MockTransport(answer))
    with pytest.raises(PlanValidationError) as refused:
        connector.validate("upsert_contact", {"patient_id": "1", **args}, "1")
    assert str(refused.value) == "invalid arguments for crm.upsert_contact: email"
    assert seen == []
    assert connector.requests == 0


def test_429_waits_for_brevos_reset_header_then_succeeds():
    answers = iter(
        [
            httpx2.Response(429, headers={"x-sib-ratelimit-reset": "3"}),
            httpx2.Response(201, json={"id": 1}),
        ]
    )
    slept: list[float] = []
    connector = connect(httpx2.MockTransport(lambda _r: next(answers)))
    connector.retry = RetryPolicy(
        max_attempts=3, backoff=Backoff(initial=0.1, jitter=0), max_wait=60, sleep=slept.append
    )
    (result,) = connector.execute_batch([contact(connector, "1")])
    assert result.error is None
    assert slept == [3.0]


def test_retry_after_wins_over_the_reset_header_and_a_long_wait_goes_back_to_the_queue():
    answer = httpx2.Response(429, headers={"retry-after": "120", "x-sib-ratelimit-reset": "3"})
    slept: list[float] = []
    connector = connect(httpx2.MockTransport(lambda _r: answer))
    connector.retry = RetryPolicy(max_attempts=3, max_wait=60, sleep=slept.append)
    (result,) = connector.execute_batch([contact(connector, "1")])
    assert isinstance(result.error, RateLimited)
    assert result.error.retry_after == 120.0  # the queue's redelivery waits at least this
    assert slept == []


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, ConfigurationError),
        (403, ConfigurationError),
        (500, UpstreamUnavailable),
        (400, FatalError),
    ],
)
def test_errors_name_status_and_path_never_a_patient_value(status, kind):
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            status, json={"code": "bad_request", "message": request.content.decode()}
        )

    connector = connect(httpx2.MockTransport(answer))
    connector.retry = RetryPolicy(max_attempts=1)
    write = contact(connector, "1", email=EMAIL, attributes={"LASTNAME": "Mallory"})
    (result,) = connector.execute_batch([write])
    assert isinstance(result.error, kind)
    assert "Mallory" not in str(result.error)
    assert EMAIL not in str(result.error)
    assert str(result.error) == f"Brevo POST /contacts: HTTP {status}"


def test_a_connection_failure_is_upstream_unavailable_without_the_url():
    def broken(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    connector = connect(httpx2.MockTransport(broken))
    connector.retry = RetryPolicy(max_attempts=1)
    (result,) = connector.execute_batch([contact(connector, "1")])
    assert isinstance(result.error, UpstreamUnavailable)
    assert str(result.error) == "Brevo POST /contacts: ConnectError"


def test_every_request_of_a_chunk_is_paced_at_brevos_rate():
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    bucket = TokenBucket(BrevoConnector.rate_limit or 0, clock=lambda: now[0], sleep=sleep)
    connector = connect(httpx2.MockTransport(lambda _r: httpx2.Response(201, json={"id": 1})))
    connector.guard = Guard(bucket=bucket)
    writes = [contact(connector, str(p)) for p in range(1, 31)]
    assert all(r.error is None for r in connector.execute_batch(writes))
    assert connector.http_requests == 30
    # 30 requests at 10 per second: at least about 2 seconds of waiting, whatever the chunking
    assert now[0] >= 1.9


def test_bad_options_and_a_missing_key_are_configuration_errors():
    with pytest.raises(ConfigurationError, match="options.bulk"):
        BrevoConnector.from_config("crm", {"bulk": "batch"}, {"api_key": "k"})
    with pytest.raises(ConfigurationError, match="options.patient_attribute"):
        BrevoConnector.from_config("crm", {"patient_attribute": "healthie id"}, {"api_key": "k"})
    with pytest.raises(ConfigurationError, match="api_key"):
        BrevoConnector.from_config("crm", {}, {})
