"""Record matching: the generic rules of ``connectors.matching`` (no server), and HubSpot's use
of them against the router in front of Prism (``tests.servers.hubspot``), whose table of
existing contacts stands for a clinic's HubSpot before the engine.

Proven here: an existing contact with the same email (any case) is linked instead of
duplicated, then by phone in E.164; two contacts (or two patients for one contact) are
ambiguous and reported per patient, never guessed, with the field path and no value; an email
held by another patient's contact is refused; the lookups are one search request per batch;
``match_preview`` decides the same without writing (for the dry-run report).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from app.core.errors import TargetRejected
from connectors import matching
from connectors.base import Scope, Write
from connectors.hubspot import HubSpotConnector
from connectors.matching import Kind
from tests.servers.hubspot import (  # noqa: F401 - the fixtures
    HubSpotRouter,
    hubspot,
    hubspot_server,
    prism_hubspot_contacts,
    prism_hubspot_properties,
)

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


# -- the rules ---------------------------------------------------------------------------


@pytest.fixture
def router(hubspot: HubSpotRouter) -> HubSpotRouter:  # noqa: F811 - the imported fixture
    """The emptied router in front of Prism, for one test."""
    return hubspot


def test_normalization():
    assert matching.normalize_email("  Ann@Example.COM ") == "ann@example.com"
    assert matching.normalize_email("not-an-address") is None
    assert matching.normalize_phone("(415) 555-2671") == "+14155552671"
    assert matching.normalize_phone("+44 20 7946 0958") == "+442079460958"
    assert matching.normalize_phone("020 7946 0958", "GB") == "+442079460958"
    assert matching.normalize_phone("12") is None
    assert matching.normalize_phone("call me") is None


def test_rules_in_order():
    free_email = matching.candidate("c1", None, ["ann@example.com"], ["+14155550100"])
    free_phone = matching.candidate("c2", None, [], ["+14155552671"])
    owned = matching.candidate("c3", "p9", ["bea@example.com"], [])
    mine = matching.candidate("c4", "p4", ["dee@example.com"], [])
    probes = [
        matching.probe("p1", "ANN@example.com", ["(415) 555-2671"]),  # email beats phone
        matching.probe("p2", None, ["415.555.2671"]),
        matching.probe("p3", "bea@example.com"),  # another patient's contact
        matching.probe("p4", "dee@example.com"),
        matching.probe("p5", "new@example.com", ["+1 415 555 0199"]),
    ]
    found = matching.match(probes, [free_email, free_phone, owned, mine])
    assert found["p1"] == matching.Outcome(Kind.MATCHED, "c1", "email")
    assert found["p2"] == matching.Outcome(Kind.MATCHED, "c2", "phone")
    assert found["p3"].kind is Kind.TAKEN
    assert found["p4"] == matching.Outcome(Kind.LINKED, "c4")
    assert found["p5"].kind is Kind.NEW


def test_two_records_or_two_claims_are_ambiguous_never_guessed():
    twins = [
        matching.candidate("c1", None, [], ["+14155552671"]),
        matching.candidate("c2", None, [], ["+14155552671"]),
    ]
    (outcome,) = matching.match([matching.probe("p1", None, ["4155552671"])], twins).values()
    assert outcome == matching.Outcome(Kind.AMBIGUOUS, None, "phone", 2)
    shared = [matching.candidate("c1", None, ["fam@example.com"], [])]
    both = matching.match(
        [matching.probe("p1", "fam@example.com"), matching.probe("p2", "fam@example.com")], shared
    )
    assert {o.kind for o in both.values()} == {Kind.AMBIGUOUS}
    error = matching.refusal(outcome, {"phone": "op.properties.phone"}, "T op")
    assert isinstance(error, TargetRejected)
    assert "ambiguous_match on op.properties.phone" in str(error)
    assert "415" not in str(error)
    household = [matching.candidate("c1", "p9", [], ["+14155552671"])]
    (alone,) = matching.match([matching.probe("p1", None, ["4155552671"])], household).values()
    assert alone.kind is Kind.NEW  # a phone another patient's contact has is not a match


# -- HubSpot -----------------------------------------------------------------------------


def connect(router: HubSpotRouter, **options: Any) -> HubSpotConnector:
    built = HubSpotConnector.from_config(
        "crm", {"api_url": router.url, **options}, {"access_token": "pat-test"}
    )
    assert isinstance(built, HubSpotConnector)
    return built


def upsert(connector: HubSpotConnector, patient: str, **properties: Any) -> Write:
    args = connector.validate(
        "upsert_contact", {"patient_id": patient, "properties": properties}, patient
    )
    return Write(Scope("clinic-a", patient, "run-1", AT), "upsert_contact", args)


def writes_sent(router: HubSpotRouter) -> list[str]:
    return [s.path for s in router.sent if s.path.endswith(("/batch/upsert", "/batch/update"))]


def test_an_existing_contact_with_the_same_email_is_linked_instead_of_duplicated(router):
    existing = router.add_contact(email="ann.lee@example.com", firstname="Ann", lifecycle="x")
    connector = connect(router)
    try:
        write = upsert(
            connector, "1001", email="Ann.Lee@Example.com", firstname="Ann", lastname="Lee"
        )
        (result,) = connector.execute_batch([write])
        assert result.error is None
        assert list(router.records) == [existing]  # no second contact
        assert router.records[existing]["healthie_patient_id"] == "1001"
        assert router.records[existing]["lastname"] == "Lee"
        assert writes_sent(router) == ["/crm/v3/objects/contacts/batch/update"]
        (update,) = [s.body for s in router.sent if s.path.endswith("/batch/update")]
        assert update["inputs"][0]["id"] == existing  # by HubSpot id
        # Later changes find it by the id property: one upsert, still one contact.
        router.sent.clear()
        connector.execute_batch([upsert(connector, "1001", firstname="Annie")])
        assert [s.path for s in router.sent] == ["/crm/v3/objects/contacts/batch/upsert"]
        assert list(router.records) == [existing]
        assert router.records[existing]["firstname"] == "Annie"
    finally:
        connector.close()


def test_then_by_phone_in_e164(router):
    existing = router.add_contact(phone="+14155552671", firstname="Bo")
    connector = connect(router)
    try:
        (result,) = connector.execute_batch(
            [upsert(connector, "7", email="bo@example.com", phone="(415) 555-2671")]
        )
        assert result.error is None
        assert list(router.records) == [existing]
        assert router.records[existing]["healthie_patient_id"] == "7"
    finally:
        connector.close()


def test_without_matching_the_existing_email_makes_the_upsert_fail(router):
    router.add_contact(email="ann@example.com")
    connector = connect(router, match=[])
    try:
        (result,) = connector.execute_batch([upsert(connector, "1", email="ann@example.com")])
        assert isinstance(result.error, TargetRejected)  # HubSpot's 409: a duplicate refused
        assert "ann@" not in str(result.error)
    finally:
        connector.close()


def test_an_ambiguous_match_is_reported_for_its_patient_and_nothing_is_guessed(router):
    first = router.add_contact(phone="+14155552671", firstname="Cy")
    second = router.add_contact(phone="+14155552671", firstname="Di")
    connector = connect(router)
    try:
        writes = [
            upsert(connector, "5", phone="415-555-2671", firstname="Eve"),
            upsert(connector, "6", email="fay@example.com", firstname="Fay"),
        ]
        preview = connector.match_preview(writes)
        assert preview["5"] == matching.Outcome(Kind.AMBIGUOUS, None, "phone", 2)
        assert preview["6"].kind is Kind.NEW
        assert writes_sent(router) == []  # the preview only searched
        results = connector.execute_batch(writes)
        assert isinstance(results[0].error, TargetRejected)
        message = str(results[0].error)
        assert "ambiguous_match on upsert_contact.properties.phone" in message
        assert "555" not in message
        assert "Eve" not in message
        assert results[1].error is None
        assert "healthie_patient_id" not in router.records[first]
        assert "healthie_patient_id" not in router.records[second]
        owners = [p.get("healthie_patient_id") for p in router.records.values()]
        assert owners.count("5") == 0
        assert owners.count("6") == 1
    finally:
        connector.close()


def test_an_email_held_by_another_patients_contact_is_refused(router):
    connector = connect(router)
    try:
        connector.execute_batch([upsert(connector, "1", email="family@example.com")])
        other = connect(router)  # a fresh process: nothing remembered
        (result,) = other.execute_batch([upsert(other, "2", email="family@example.com")])
        assert isinstance(result.error, TargetRejected)
        assert "match_taken on upsert_contact.properties.email" in str(result.error)
        assert "family" not in str(result.error)
        other.close()
    finally:
        connector.close()


def test_the_lookups_of_a_chunk_are_one_search_request(router):
    for n in range(30):
        router.add_contact(email=f"old{n}@example.com")
    connector = connect(router)
    try:
        writes = [
            upsert(connector, str(3000 + n), email=f"old{n}@example.com", phone=f"+1415555{n:04d}")
            for n in range(100)
        ]
        results = connector.execute_batch(writes)
        assert [r.error for r in results] == [None] * 100
        assert router.count("/contacts/search") == 1
        (search,) = [s.body for s in router.sent if s.path.endswith("/search")]
        assert [g["filters"][0]["propertyName"] for g in search["filterGroups"]] == [
            "healthie_patient_id",
            "email",
            "phone",
            "mobilephone",
        ]
        assert writes_sent(router) == [
            "/crm/v3/objects/contacts/batch/update",  # the 30 existing contacts, linked
            "/crm/v3/objects/contacts/batch/upsert",  # the 70 new ones
        ]
        assert len(router.records) == 100
    finally:
        connector.close()
