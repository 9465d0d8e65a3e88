"""The HubSpot connector against the router of ``tests.servers.hubspot`` in front of Prism
(HubSpot's contacts and properties definitions): every request is validated by Prism and each
test ends with no violation logged; the router keeps the contacts and properties Prism cannot.

Proven here: a patient change is one batch upsert keyed by the unique id property; a chunk of
patients is one request; properties are created once with their declared types (the id property
unique); a plan cannot write an undeclared property, a value of the wrong type or the id
property (refused before any I/O); 429 is honoured by policy (TEN_SECONDLY_ROLLING retried
after Retry-After, DAILY handed to the queue); a 207 fails only the refused contact and a
whole-batch 400 is bisected to it; no patient value reaches an error. Matching is in
``test_matching.py``; the contract suite runs the connector too (``targets_hubspot``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.core.errors import (
    ConfigurationError,
    FatalError,
    PlanValidationError,
    RateLimited,
    TargetRejected,
)
from app.resilience.retry import Backoff, RetryPolicy
from connectors.base import Scope, Write
from connectors.hubspot import HubSpotConnector
from tests.servers.hubspot import (  # noqa: F401 - the fixtures
    HubSpotRouter,
    hubspot,
    hubspot_server,
    prism_hubspot_contacts,
    prism_hubspot_properties,
)

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
PROPERTIES = {
    "age": {"type": "number"},
    "active": {"type": "bool"},
    "dob": {"type": "date"},
    "plan": {"type": "enumeration", "options": ["basic", "plus"]},
}


@pytest.fixture
def router(hubspot: HubSpotRouter) -> HubSpotRouter:  # noqa: F811 - the imported fixture
    """The emptied router in front of Prism, for one test."""
    return hubspot


def connect(
    router: HubSpotRouter, retry: RetryPolicy | None = None, **options: Any
) -> HubSpotConnector:
    built = HubSpotConnector.from_config(
        "crm",
        {"api_url": router.url, "properties": PROPERTIES, **options},
        {"access_token": "pat-test"},
    )
    assert isinstance(built, HubSpotConnector)
    if retry is not None:
        built.retry = retry
    return built


def upsert(connector: HubSpotConnector, patient: str, **properties: Any) -> Write:
    args = connector.validate(
        "upsert_contact", {"patient_id": patient, "properties": properties}, patient
    )
    return Write(Scope("clinic-a", patient, "run-1", AT), "upsert_contact", args)


def bodies(router: HubSpotRouter, path_end: str) -> list[Any]:
    return [s.body for s in router.sent if s.path.endswith(path_end)]


def test_a_patient_change_produces_one_upsert_in_a_batch(router):
    connector = connect(router)
    try:
        first = upsert(connector, "1001", email="Ann@Example.com", firstname="Ann", age=41)
        (result,) = connector.execute_batch([first])
        assert result.error is None
        assert result.key == "1001"
        (body,) = bodies(router, "/contacts/batch/upsert")
        assert body == {
            "inputs": [
                {
                    "id": "1001",
                    "idProperty": "healthie_patient_id",
                    "properties": {
                        "email": "Ann@Example.com",
                        "firstname": "Ann",
                        "age": "41",
                        "healthie_patient_id": "1001",
                    },
                }
            ]
        }
        (contact,) = router.records.values()
        assert contact["healthie_patient_id"] == "1001"
        assert contact["firstname"] == "Ann"
        # The next change of the same patient: one request, the upsert, updating that contact.
        router.sent.clear()
        (again,) = connector.execute_batch([upsert(connector, "1001", firstname="Anne")])
        assert again.error is None
        assert [s.path for s in router.sent] == ["/crm/v3/objects/contacts/batch/upsert"]
        (contact,) = router.records.values()
        assert contact["firstname"] == "Anne"
    finally:
        connector.close()


def test_a_chunk_of_patients_is_one_upsert_request_and_properties_are_made_once(router):
    connector = connect(router, match=[])
    try:
        writes = [
            upsert(connector, str(2000 + n), firstname=f"P{n}", active=n % 2 == 0, dob="1990-02-28")
            for n in range(120)
        ]
        results = connector.execute_batch(writes)
        assert [r.error for r in results] == [None] * 120
        sizes = [len(b["inputs"]) for b in bodies(router, "/contacts/batch/upsert")]
        assert sizes == [100, 20]  # HubSpot's batch cap
        assert router.count("/search") == 0  # matching off: no lookups
        assert router.count("/properties/contacts/batch/create") == 1
        (created,) = bodies(router, "/properties/contacts/batch/create")
        by_name = {p["name"]: p for p in created["inputs"]}
        assert by_name["healthie_patient_id"]["hasUniqueValue"] is True
        assert (by_name["age"]["type"], by_name["age"]["fieldType"]) == ("number", "number")
        assert by_name["active"]["type"] == "bool"
        assert [o["value"] for o in by_name["active"]["options"]] == ["true", "false"]
        assert [o["value"] for o in by_name["plan"]["options"]] == ["basic", "plus"]
        assert by_name["dob"]["type"] == "date"
        assert len(router.records) == 120
        row = next(p for p in router.records.values() if p["healthie_patient_id"] == "2000")
        assert (row["active"], row["dob"]) == ("true", "1990-02-28")
        # A second connector (a new process) finds the properties and creates none.
        other = connect(router, match=[])
        other.execute_batch([upsert(other, "2000", firstname="Q")])
        assert router.count("/properties/contacts/batch/create") == 1
        other.close()
    finally:
        connector.close()


def test_an_existing_id_property_without_unique_values_is_a_configuration_error(router):
    router.props["healthie_patient_id"] = {
        "name": "healthie_patient_id",
        "type": "string",
        "fieldType": "text",
        "groupName": "contactinformation",
        "label": "Healthie",
        "description": "",
        "options": [],
        "hasUniqueValue": False,
    }
    connector = connect(router)
    try:
        (result,) = connector.execute_batch([upsert(connector, "1", firstname="A")])
        assert isinstance(result.error, ConfigurationError)
        assert "unique" in str(result.error)
        assert router.count("/batch/upsert") == 0
    finally:
        connector.close()


@pytest.mark.parametrize(
    ("properties", "where"),
    [
        ({"nickname": "Mallory"}, "properties.nickname: not declared"),
        ({"healthie_patient_id": "2"}, "set by the connector"),
        ({"age": "forty"}, "properties.age: not a number"),
        ({"active": "Mallory"}, "properties.active: not a boolean"),
        ({"dob": "Mallory 1990"}, "properties.dob: not an ISO 8601 date"),
        ({"plan": "Mallory"}, "properties.plan: not one of the declared options"),
        ({"email": "mallory@"}, "properties.email: not an email address"),
        ({"firstname": "x" * 70_000}, "properties.firstname: not text"),
        ({"Mallory": "x"}, "properties: names match"),
        ({"hs_lead_status": "x"}, "properties: names match"),
    ],
)
def test_bad_properties_are_refused_before_any_io_without_their_values(properties, where):
    connector = HubSpotConnector.from_config(
        "crm", {"properties": PROPERTIES}, {"access_token": "pat-test"}
    )
    with pytest.raises(PlanValidationError) as refused:
        connector.validate("upsert_contact", {"patient_id": "1", "properties": properties}, "1")
    assert where in str(refused.value)
    assert "mallory" not in str(refused.value).lower()
    assert "forty" not in str(refused.value)
    assert connector.requests == 0


def test_another_patients_id_is_refused():
    connector = HubSpotConnector.from_config("crm", {}, {"access_token": "pat-test"})
    with pytest.raises(PlanValidationError):
        connector.validate("upsert_contact", {"patient_id": "2", "properties": {}}, "1")


def test_an_oauth_refresh_token_is_not_supported():
    with pytest.raises(ConfigurationError, match="refresh tokens are not supported"):
        HubSpotConnector.from_config("crm", {}, {"access_token": "pat-test", "refresh_token": "r"})
    with pytest.raises(ConfigurationError, match="access_token"):
        HubSpotConnector.from_config("crm", {}, {})


def test_a_ten_secondly_429_is_retried_after_retry_after(router):
    slept: list[float] = []
    retry = RetryPolicy(max_attempts=3, backoff=Backoff(initial=0.01, cap=0.1), sleep=slept.append)
    connector = connect(router, retry=retry, match=[])
    try:
        router.fail_next(
            429,
            policy="TEN_SECONDLY_ROLLING",
            retry_after="2",
            path="/crm/v3/objects/contacts/batch/upsert",
        )
        (result,) = connector.execute_batch([upsert(connector, "1", firstname="A")])
        assert result.error is None
        assert slept
        assert slept[0] >= 2.0  # never sooner than HubSpot asked
        assert router.count("/batch/upsert") == 2
    finally:
        connector.close()


def test_a_daily_429_is_left_to_the_queue(router):
    slept: list[float] = []
    retry = RetryPolicy(max_attempts=3, max_wait=30.0, sleep=slept.append)
    connector = connect(router, retry=retry, match=[])
    try:
        router.fail_next(429, policy="DAILY", path="/crm/v3/objects/contacts/batch/upsert")
        (result,) = connector.execute_batch([upsert(connector, "1", firstname="A")])
        assert isinstance(result.error, RateLimited)
        assert "DAILY" in str(result.error)
        assert result.error.retry_after is not None
        assert result.error.retry_after >= 3600
        assert slept == []  # an hour is not slept in a worker
        assert router.count("/batch/upsert") == 1
    finally:
        connector.close()


def test_a_207_fails_only_the_refused_contact_and_quotes_no_value(router):
    connector = connect(router, match=[])
    try:
        writes = [upsert(connector, p, firstname=f"Name{p}") for p in ("1", "2", "3")]
        with router.poisoned(lambda item: item["properties"].get("firstname") == "Name2"):
            results = connector.execute_batch(writes)
        assert results[0].error is None
        assert results[2].error is None
        assert isinstance(results[1].error, TargetRejected)
        assert "207" in str(results[1].error)
        assert "Name2" not in str(results[1].error)
        assert router.count("/batch/upsert") == 1  # one request, per-contact answers
        owners = {p["healthie_patient_id"] for p in router.records.values()}
        assert owners == {"1", "3"}
    finally:
        connector.close()


def test_a_whole_batch_400_is_bisected_to_the_bad_contact(router):
    connector = connect(router, match=[])
    try:
        writes = [upsert(connector, p, firstname=f"Name{p}") for p in ("1", "2", "3", "4")]
        with router.poisoned(
            lambda item: item["properties"].get("firstname") == "Name3", whole=True
        ):
            results = connector.execute_batch(writes)
        assert [r.error is None for r in results] == [True, True, False, True]
        assert isinstance(results[2].error, FatalError)
        assert "Name3" not in str(results[2].error)
        assert "VALIDATION_ERROR" in str(results[2].error)
        owners = {p["healthie_patient_id"] for p in router.records.values()}
        assert owners == {"1", "2", "4"}
    finally:
        connector.close()
