"""Candid Health connector against the local fake (``tests.servers.candid``), which validates
every request against Candid's published OpenAPI file: each test also fails when any request
broke the contract (the ``fake_candid`` fixture)."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from app.core.errors import ConfigurationError, PlanValidationError, TargetRejected
from connectors.base import Scope, Write
from connectors.candid import CandidConnector
from connectors.candid_auth import forget_tokens
from tests.servers.candid import REF, FakeCandid, fake_candid, load_contract

__all__ = ["fake_candid"]

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
PHI = "Zelda-Quux"  # a patient value that must never reach an error
ADDRESS = {"line": ["1 Main St"], "city": "Springfield", "state": "IL", "postal_code": "62701"}
SHORT = {"address1": "1 Main St", "city": "Springfield", "state": "IL", "zip_code": "62701"}
ENCOUNTER: dict[str, Any] = {
    "patient_authorized_release": True,
    "benefits_assigned_to_provider": True,
    "provider_accepts_assignment": True,
    "billable_status": "BILLABLE",
    "responsible_party": "INSURANCE_PAY",
    "patient": {
        "first_name": PHI,
        "last_name": "Test",
        "gender": "female",
        "date_of_birth": "1980-01-01",
        "address": SHORT,
    },
    "billing_provider": {
        "organization_name": "Clinic",
        "address": {**SHORT, "zip_plus_four_code": "1234"},
        "tax_id": "123456789",
        "npi": "1234567893",
    },
    "rendering_provider": {"first_name": "Doc", "last_name": "Tor", "npi": "1234567893"},
    "diagnoses": [{"code_type": "ABK", "code": "F41.1"}],
    "place_of_service_code": "02",
    "date_of_service": "2026-11-30",
    "service_lines": [
        {"procedure_code": "90834", "quantity": "1", "units": "UN", "diagnosis_pointers": [0]}
    ],
    "subscriber_primary": {
        "first_name": PHI,
        "last_name": "Test",
        "gender": "female",
        "patient_relationship_to_subscriber_code": "18",
        "insurance_card": {"member_id": "W123", "payer_name": "Aetna", "payer_id": "60054"},
    },
}


def connector(fake: FakeCandid, **options: Any) -> CandidConnector:
    built = CandidConnector.from_config(
        "billing",
        {"api_url": fake.url, **options},
        {"client_id": fake.client_id, "client_secret": fake.client_secret},
    )
    assert isinstance(built, CandidConnector)
    return built


def write(c: CandidConnector, operation: str, args: dict[str, Any], patient: str = "1") -> Write:
    return Write(
        Scope("clinic-a", patient, "run-1", AT), operation, c.validate(operation, args, patient)
    )


def patient_args(patient: str = "1", **more: Any) -> dict[str, Any]:
    return {
        "patient_id": patient,
        "first_name": PHI,
        "last_name": "Test",
        "birth_date": "1980-01-01",
        "biological_sex": "FEMALE",
        "address": ADDRESS,
        **more,
    }


def coverage_args(**more: Any) -> dict[str, Any]:
    return {
        "patient_id": "1",
        "key": "policy-1",
        "member_id": "W123",
        "payer_id": "60054",
        "payer_name": "Aetna",
        **more,
    }


def test_a_patient_is_created_once_and_updated_by_its_healthie_id(fake_candid):
    c = connector(fake_candid)
    try:
        (first,) = c.execute_batch([write(c, "upsert_patient", patient_args())])
        (again,) = c.execute_batch([write(c, "upsert_patient", patient_args())])  # a retry
        assert first.error is None
        assert first.changed
        assert again.error is None
        assert not again.changed
        assert len(fake_candid.patients) == 1
        (patient,) = fake_candid.patients.values()
        assert patient["mrn"] == "1"
        assert patient["external_provenance"] == {"external_id": "1", "system_name": "Healthie"}
        # Someone in Candid adds a contact; the next sync changes the name and keeps it.
        patient["contacts"] = [
            {"relationship": ["SPOUSE"], "name": patient["name"], "telecoms": [], "addresses": []}
        ]
        (changed,) = c.execute_batch([write(c, "upsert_patient", patient_args(last_name="New"))])
        assert changed.error is None
        assert changed.changed
        (patient,) = fake_candid.patients.values()
        assert patient["name"]["family"] == "New"
        assert patient["version"] == 2
        assert len(patient["contacts"]) == 1
        assert fake_candid.count("POST", "/patients/v1/with_mrn") == 1
        assert fake_candid.count("PUT", "/patients/v1/{id}/{version}") == 1
    finally:
        c.close()


def test_a_concurrent_create_of_the_same_patient_becomes_an_update(fake_candid):
    c = connector(fake_candid)
    try:
        raced = False

        def race(method: str, template: str, body: Any) -> bool:
            nonlocal raced
            if template == "/patients/v1/with_mrn" and not raced:
                raced = True  # another worker's create lands first (same MRN, external id)
                fake_candid.create_patient(
                    [], {}, {**body, "name": {**body["name"], "family": "A"}}
                )
            return False

        with fake_candid.refusing(race):
            (result,) = c.execute_batch([write(c, "upsert_patient", patient_args(last_name="B"))])
        assert result.error is None
        assert result.changed
        assert len(fake_candid.patients) == 1
        assert next(iter(fake_candid.patients.values()))["name"]["family"] == "B"
        assert [s for m, t, s in fake_candid.calls if t == "/patients/v1/with_mrn"] == [409]
    finally:
        c.close()


def test_a_coverage_is_upserted_by_payer_and_member_id_and_filed_once(fake_candid):
    c = connector(fake_candid)
    try:
        c.execute_batch([write(c, "upsert_patient", patient_args())])
        (first,) = c.execute_batch([write(c, "upsert_coverage", coverage_args())])
        (again,) = c.execute_batch([write(c, "upsert_coverage", coverage_args())])
        assert first.error is None
        assert first.changed
        assert first.key == "policy-1"
        assert again.error is None
        assert not again.changed
        (coverage,) = fake_candid.coverages.values()
        (patient,) = fake_candid.patients.values()
        assert coverage["subscriber"]["name"]["given"] == [PHI]  # SELF: the patient's own
        assert coverage["patient"] == patient["id"]
        assert patient["filing_order"]["coverages"] == [coverage["id"]]
        (changed,) = c.execute_batch(
            [write(c, "upsert_coverage", coverage_args(group_number="G1"))]
        )
        assert changed.changed
        assert len(fake_candid.coverages) == 1
        assert next(iter(fake_candid.coverages.values()))["insurance_plan"]["group_number"] == "G1"
    finally:
        c.close()


def test_a_coverage_before_its_patient_is_refused_for_that_patient_only(fake_candid):
    c = connector(fake_candid)
    try:
        (result,) = c.execute_batch([write(c, "upsert_coverage", coverage_args())])
        assert isinstance(result.error, TargetRejected)
        assert "upsert_patient" in str(result.error)
        assert fake_candid.coverages == {}
    finally:
        c.close()


def test_an_encounter_is_created_once_from_a_complete_claim(fake_candid):
    c = connector(fake_candid, encounters=True)
    try:
        args = {"patient_id": "1", "key": "appt-9", "encounter": ENCOUNTER}
        (first,) = c.execute_batch([write(c, "create_encounter", args)])
        (again,) = c.execute_batch([write(c, "create_encounter", args)])  # a redelivery
        assert first.error is None
        assert first.changed
        assert again.error is None
        assert not again.changed
        assert list(fake_candid.encounters) == ["healthie-appt-9"]
        sent = fake_candid.encounters["healthie-appt-9"]
        assert sent["patient"]["external_id"] == "1"
        assert fake_candid.count("POST", "/api/encounters/v4") == 1
    finally:
        c.close()


def _required_paths(contract: Any, schema: dict[str, Any], prefix: str) -> list[str]:
    """Every required property path of ``schema`` (a component of Candid's file), through the
    objects it references, as dotted paths (lists as ``.0``)."""
    paths = []
    node = schema
    while "$ref" in node:
        name = node["$ref"][len(REF) :].replace("~1", "/").replace("~0", "~")
        node = contract.doc["components"]["schemas"][name]
    if node.get("type") == "array":
        return _required_paths(contract, node["items"], prefix + ".0")
    for name in node.get("required", []):
        here = f"{prefix}.{name}" if prefix else name
        paths.append(here)
        paths += _required_paths(contract, node["properties"][name], here)
    return paths


def _without(body: dict[str, Any], path: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node: Any = out
    *parents, last = path.split(".")
    for step in parents:
        node = node[int(step)] if isinstance(node, list) else node[step]
    del node[last]
    return out


def _contract_required() -> list[str]:
    contract = load_contract()
    schema = {"$ref": REF + "type_encounters~1v4:EncounterCreate"}
    # The connector sets the two identifiers itself; the plan may not.
    found = _required_paths(contract, schema, "")
    return [p for p in found if p not in ("external_id", "patient.external_id")]


def test_the_claim_model_requires_every_field_candids_contract_requires():
    required = _contract_required()
    # Present in the complete example, and each one refused when missing.
    assert {"billing_provider.npi", "patient.address.zip_code", "diagnoses.0.code"} <= set(required)
    for path in required:
        broken = _without(
            {"patient_id": "1", "key": "a", "encounter": ENCOUNTER}, "encounter." + path
        )
        with pytest.raises(PlanValidationError) as refused:
            CandidConnector.schema(
                "billing", CandidConnector.parse_options("b", {"encounters": True})
            ).validate("create_encounter", broken, "1")
        assert f"create_encounter.encounter.{path}: missing" in str(refused.value), path
        assert PHI not in str(refused.value)


def test_an_entry_missing_a_field_a_claim_requires_is_refused_per_patient_with_no_request(
    fake_candid,
):
    c = connector(fake_candid, encounters=True)
    try:
        incomplete = _without(ENCOUNTER, "billing_provider.npi")
        with pytest.raises(PlanValidationError) as refused:
            c.validate(
                "create_encounter", {"patient_id": "2", "key": "a", "encounter": incomplete}, "2"
            )
        assert "create_encounter.encounter.billing_provider.npi: missing" in str(refused.value)
        no_subscriber = _without(ENCOUNTER, "subscriber_primary")
        with pytest.raises(PlanValidationError) as insured:
            c.validate(
                "create_encounter", {"patient_id": "2", "key": "a", "encounter": no_subscriber}, "2"
            )
        assert "encounter.subscriber_primary: required when responsible_party" in str(insured.value)
        # The other patient's complete claim goes; the refused one sent nothing.
        ok = c.validate(
            "create_encounter", {"patient_id": "1", "key": "b", "encounter": ENCOUNTER}, "1"
        )
        (result,) = c.execute_batch(
            [Write(Scope("clinic-a", "1", "run-1", AT), "create_encounter", ok)]
        )
        assert result.error is None
        assert list(fake_candid.encounters) == ["healthie-b"]
        assert [t for _, t, _ in fake_candid.calls if "encounters" in t] == [
            "/api/encounters/v4",
            "/api/encounters/v4",
        ]
    finally:
        c.close()


def test_encounters_are_refused_unless_the_target_allows_them(fake_candid):
    c = connector(fake_candid)
    with pytest.raises(PlanValidationError, match="options.encounters"):
        c.validate("create_encounter", {"patient_id": "1", "key": "a", "encounter": ENCOUNTER}, "1")
    assert c.requests == 0


def test_the_token_is_reused_and_refreshed_once_when_candid_refuses_it(fake_candid):
    forget_tokens()
    a, b = connector(fake_candid), connector(fake_candid)
    try:
        a.execute_batch([write(a, "upsert_patient", patient_args("1"))])
        b.execute_batch([write(b, "upsert_patient", patient_args("2"), "2")])
        assert fake_candid.count("POST", "/api/auth/v2/token") == 1  # one token for both
        fake_candid.expire_tokens()
        (result,) = a.execute_batch([write(a, "upsert_patient", patient_args("3"), "3")])
        assert result.error is None
        assert fake_candid.count("POST", "/api/auth/v2/token") == 2
        assert [s for _, _, s in fake_candid.calls].count(401) == 1  # refreshed once, resent
    finally:
        a.close()
        b.close()


def test_wrong_credentials_are_a_configuration_error_without_the_secret(fake_candid):
    forget_tokens()
    c = CandidConnector.from_config(
        "billing", {"api_url": fake_candid.url}, {"client_id": "x", "client_secret": "s3cr3t-value"}
    )
    assert isinstance(c, CandidConnector)
    try:
        (result,) = c.execute_batch([write(c, "upsert_patient", patient_args())])
        assert isinstance(result.error, ConfigurationError)
        assert "s3cr3t-value" not in str(result.error)
    finally:
        c.close()
        forget_tokens()


def test_no_patient_value_reaches_an_error(fake_candid):
    c = connector(fake_candid)
    try:
        c.execute_batch([write(c, "upsert_patient", patient_args())])
        refuse = lambda method, template, body: PHI in str(body)  # noqa: E731
        with fake_candid.refusing(refuse):
            (result,) = c.execute_batch(
                [write(c, "upsert_patient", patient_args(last_name="Other"))]
            )
        assert result.error is not None
        assert PHI not in str(result.error)
        assert "Other" not in str(result.error)
        assert re.search(r"HTTP 400", str(result.error))
        with pytest.raises(PlanValidationError) as refused:
            c.validate("upsert_patient", patient_args(birth_date=PHI), "1")
        assert PHI not in str(refused.value)
    finally:
        c.close()


def test_a_misspelt_field_is_a_contract_violation(fake_candid):
    """The fake's own strictness (what the breaks below rely on): a body with a field name the
    contract does not define is recorded, and answered 400."""
    c = connector(fake_candid)
    try:
        session = c.session()
        session.begin_chunk()
        response = session.request(
            "POST", f"{fake_candid.url}/coverages/v1", "POST /coverages/v1",
            json={"status": "ACTIVE", "subscriber": {}, "relationship": "SELF", "patient": "x",
                  "insurance_plan": {}, "verified": False, "verifed": True},
            passes=(400,),
        )  # fmt: skip
        assert response.status_code == 400
        found = fake_candid.take_violations()
        assert any("verifed" in v for v in found)
    finally:
        c.close()
