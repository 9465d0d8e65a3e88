"""The FHIR connector against the local FHIR R4 server (``tests.servers.fhir``), which validates
every resource with HL7's official FHIR R4 JSON schema; each test ends with no violation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, get_args, get_origin

import httpx2
import pytest
from pydantic import BaseModel

from app.core.errors import (
    ConfigurationError,
    FatalError,
    PlanValidationError,
    RateLimited,
    TargetRejected,
)
from connectors import fhir_resources
from connectors.base import Scope, Write
from connectors.fhir import FhirConnector, _wait
from connectors.fhir_args import UpsertPatient
from tests.contracts.targets_fhir import build_connector
from tests.servers.fhir import FhirServer, schema_errors

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
SECRET = "Mallory"  # a patient value: it must never appear in an error


@pytest.fixture
def server(shared_dir) -> Iterator[FhirServer]:
    started = FhirServer()
    started.start()
    try:
        yield started
        assert started.take_violations() == []
    finally:
        started.stop()


def connector(server: FhirServer, **options: Any) -> FhirConnector:
    built = build_connector(server, options, None)
    assert isinstance(built, FhirConnector)
    return built


def write(c: FhirConnector, operation: str, patient: str, integration: str = "clinic-a", **args):
    parsed = c.validate(operation, {"patient_id": patient, **args}, patient)
    return Write(Scope(integration, patient, "run-1", AT), operation, parsed)


def entry(c: FhirConnector, patient: str, integration: str = "clinic-a") -> list[Write]:
    """One patient's writes, as a plan for a full entry would make them (appointment first)."""
    return [
        write(
            c,
            "upsert_appointment",
            patient,
            integration,
            key=f"ap{patient}",
            status="booked",
            start="2026-12-02T09:00:00-05:00",
            end="2026-12-02T09:30:00-05:00",
            appointment_type="Initial consult",
            practitioner_id="77",
        ),
        write(c, "upsert_practitioner", patient, integration, key="77", last_name="Osler"),
        write(
            c,
            "upsert_coverage",
            patient,
            integration,
            key=f"pol{patient}",
            payer_name="Aetna",
            member_id="M-1",
            group_number="G-9",
            relationship="self",
            priority=1,
        ),
        write(
            c,
            "upsert_patient",
            patient,
            integration,
            first_name=f"Ann{patient}",
            last_name=SECRET,
            birth_date="1990-02-28",
            gender="female",
            email="ann@example.com",
            address={"line1": "1 Main St", "city": "Boston", "state": "MA"},
        ),
    ]


def test_conditional_update_creates_then_updates_and_a_retry_makes_no_duplicate(server):
    c = connector(server)
    writes = entry(c, "1")
    first = c.execute_batch(writes)
    assert [r.error for r in first] == [None] * 4
    assert [r.key for r in first] == ["ap1", "77", "pol1", "1"]
    again = c.execute_batch(writes)  # a redelivered item: the same bundle once more
    assert [r.error for r in again] == [None] * 4
    for kind in ("Patient", "Practitioner", "Coverage", "Appointment"):
        (held,) = server.resources(kind)
        assert held["meta"]["versionId"] == "2", kind
    patient = server.resources("Patient")[0]
    (appointment,) = server.resources("Appointment")
    actors = [p["actor"]["reference"] for p in appointment["participant"]]
    practitioner = server.resources("Practitioner")[0]
    assert actors == [f"Patient/{patient['id']}", f"Practitioner/{practitioner['id']}"]
    assert server.resources("Coverage")[0]["beneficiary"]["reference"] == f"Patient/{patient['id']}"
    assert server.count("POST", "/fhir/R4") == 2  # one bundle per batch
    assert server.count("POST", "/oauth2/token") == 1  # the token is kept
    c.close()


def test_one_bad_resource_fails_only_its_patient(server):
    c = connector(server)
    writes = [w for p in "123" for w in entry(c, p)]
    refused = lambda r: r["resourceType"] == "Patient" and r["name"][0]["given"] == ["Ann2"]  # noqa: E731
    with server.poisoned(refused):
        results = c.execute_batch(writes)
    by_patient = {
        p: [r for r, w in zip(results, writes, strict=True) if w.scope.patient_id == p]
        for p in "123"
    }
    assert all(r.error is None for r in by_patient["1"] + by_patient["3"])
    failed = [r for r in by_patient["2"] if r.error is not None]
    # the Patient itself; its Coverage and Appointment reference a Patient that does not exist
    assert {r.operation for r in failed} == {
        "upsert_patient",
        "upsert_coverage",
        "upsert_appointment",
    }
    assert all(isinstance(r.error, FatalError) for r in failed)
    assert SECRET not in str([r.error for r in failed])
    assert "Ann2" not in str(failed)
    assert {p["name"][0]["given"][0] for p in server.resources("Patient")} == {"Ann1", "Ann3"}
    assert server.count("POST", "/fhir/R4") == 1  # refused entries answered per entry
    c.close()


def test_a_resource_failing_the_structural_check_is_not_sent_and_fails_alone(server):
    c = connector(server)
    good = write(c, "upsert_patient", "1", first_name="Ann")
    # what a connector bug would build: a value outside FHIR's value set, past the arguments
    bad_args = UpsertPatient.model_construct(patient_id="2", gender=SECRET)
    bad = Write(Scope("clinic-a", "2", "run-1", AT), "upsert_patient", bad_args)
    results = c.execute_batch([good, bad])
    assert results[0].error is None
    assert isinstance(results[1].error, FatalError)
    assert "gender" in str(results[1].error)
    assert SECRET not in str(results[1].error)
    assert [p["identifier"][0]["value"] for p in server.resources("Patient")] == ["1"]
    assert all(r.get("gender") != SECRET for r in server.received)
    c.close()


def test_several_resources_holding_the_identifier_fail_that_write_as_rejected(server):
    c = connector(server)
    system = fhir_resources.system(c.fhir.identifier_base, "clinic-a", "user")
    for _ in range(2):
        server.seed({"resourceType": "Patient", "identifier": [{"system": system, "value": "5"}]})
    results = c.execute_batch([write(c, "upsert_patient", p, first_name=SECRET) for p in "456"])
    assert [r.error is None for r in results] == [True, False, True]
    assert isinstance(results[1].error, TargetRejected)
    assert "412" in str(results[1].error)
    assert SECRET not in str(results[1].error)
    c.close()


def test_two_integrations_never_collide(server):
    c = connector(server)
    results = c.execute_batch(entry(c, "1000", "clinic-a") + entry(c, "1000", "clinic-b"))
    assert [r.error for r in results] == [None] * 8
    patients = {p["identifier"][0]["system"]: p for p in server.resources("Patient")}
    assert sorted(patients) == [
        "https://gethealthie.com/fhir/identifier/clinic-a/user",
        "https://gethealthie.com/fhir/identifier/clinic-b/user",
    ]
    assert len(server.resources("Practitioner")) == 2  # one per clinic, though both say "77"
    for appointment in server.resources("Appointment"):
        clinic = appointment["identifier"][0]["system"].split("/")[-2]
        patient = patients[f"https://gethealthie.com/fhir/identifier/{clinic}/user"]
        assert appointment["participant"][0]["actor"]["reference"] == f"Patient/{patient['id']}"
    c.close()


def test_every_resource_sent_is_valid_under_the_official_schema(server):
    c = connector(server)
    c.execute_batch(entry(c, "1") + [write(c, "upsert_patient", "2")])  # a sparse one too
    assert len(server.received) == 5
    for resource in server.received:
        assert schema_errors(resource) == [], resource["resourceType"]
    c.close()


def test_the_official_schema_and_the_structural_check_both_refuse_a_broken_resource(shared_dir):
    base = "https://gethealthie.com/fhir/identifier/a/user"
    ok = {
        "resourceType": "Coverage",
        "identifier": [{"system": base, "value": "p"}],
        "status": "active",
        "beneficiary": {"reference": f"Patient?identifier={base}|1"},
        "payor": [{"display": "Aetna"}],
    }
    assert schema_errors(ok) == []
    fhir_resources.check(ok)
    missing = {k: v for k, v in ok.items() if k != "payor"}  # payor is 1..* in FHIR
    misnamed = {**ok, "beneficiary": None, "Beneficiary": ok["beneficiary"]}
    misnamed.pop("beneficiary")
    for broken in (missing, misnamed):
        assert schema_errors(broken) != []
        with pytest.raises(FatalError) as refused:
            fhir_resources.check(broken)
        assert "Aetna" not in str(refused.value)


def _definition(model: type[BaseModel]) -> str:
    names = {"Participant": "Appointment_Participant", "CoverageClass": "Coverage_Class"}
    return names.get(model.__name__, model.__name__)


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models(a)] if get_origin(annotation) else []


def test_the_structural_models_name_only_elements_of_the_official_schema(shared_dir):
    from tests.servers.fhir import _definitions

    definitions = _definitions()
    seen: set[str] = set()

    def walk(model: type[BaseModel]) -> None:
        name = _definition(model)
        if name in seen:
            return
        seen.add(name)
        definition = definitions[name]
        for field_name, field in model.model_fields.items():
            element = field.alias or field_name
            assert element in definition["properties"], f"{name}.{element}"
            for inner in _models(field.annotation):
                walk(inner)
        for required in definition.get("required", []):
            held = next(
                (f for n, f in model.model_fields.items() if (f.alias or n) == required), None
            )
            assert held is not None, f"{name}.{required} is required"
            assert held.is_required(), f"{name}.{required} is required"

    for model in fhir_resources.MODELS.values():
        walk(model)
    assert {"Patient", "Appointment_Participant", "Coverage_Class", "HumanName"} <= seen


def test_no_patient_value_reaches_an_error(server):
    c = connector(server)
    refuse_all = lambda r: True  # noqa: E731
    with server.poisoned(refuse_all):  # 422 whose diagnostics quote the whole resource
        (result,) = c.execute_batch([write(c, "upsert_patient", "1", last_name=SECRET)])
    assert isinstance(result.error, FatalError)
    assert SECRET not in str(result.error)
    assert "diagnostics" not in str(result.error)
    assert "processing" in str(result.error)  # the issue code is kept
    wrong = build_connector(server, {}, {"client_id": SECRET, "client_secret": "nope"})
    (denied,) = wrong.execute_batch([write(c, "upsert_patient", "1", last_name=SECRET)])
    assert isinstance(denied.error, ConfigurationError)  # the token endpoint said 401
    assert SECRET not in str(denied.error)
    with pytest.raises(PlanValidationError) as refused:
        c.validate("upsert_patient", {"patient_id": "1", "email": SECRET}, "1")
    assert SECRET not in str(refused.value)
    c.close()


def test_an_expired_token_is_renewed_once_and_bearer_tokens_work(server):
    c = connector(server)
    assert c.execute_batch([write(c, "upsert_patient", "1")])[0].error is None
    server.tokens.clear()  # the server forgot the token (expired, revoked)
    assert c.execute_batch([write(c, "upsert_patient", "1")])[0].error is None
    assert server.count("POST", "/oauth2/token") == 2
    bearer = build_connector(server, {"auth": "bearer"}, {"token": server.static_token})
    assert bearer.execute_batch([write(c, "upsert_patient", "2")])[0].error is None
    with pytest.raises(ConfigurationError, match="token"):
        build_connector(server, {"auth": "bearer"}, {"client_id": "x", "client_secret": "y"})
    assert "fhirVersion 4.0.1" in c.probe()
    c.close()
    bearer.close()


def test_chunks_are_bundles_of_bundle_size_and_429_is_rate_limited(server):
    c = connector(server, bundle_size=2)
    results = c.execute_batch([write(c, "upsert_patient", str(p)) for p in range(5)])
    assert [r.error for r in results] == [None] * 5
    assert server.count("POST", "/fhir/R4") == 3
    with server.failing(429):
        (limited,) = c.execute_batch([write(c, "upsert_patient", "1")])
    assert isinstance(limited.error, RateLimited)
    c.close()


def test_medplum_ratelimit_header_gives_the_wait():
    limited = httpx2.Response(
        429, headers={"RateLimit": '"requests";r=0;t=42, "fhirInteractions";r=9;t=7'}
    )
    assert _wait(limited) == 42.0
    assert _wait(httpx2.Response(429, headers={"Retry-After": "3"})) == 3.0
    assert _wait(httpx2.Response(429)) is None


def test_a_plan_naming_another_patients_appointment_writes_its_own_patients(server):
    c = connector(server)
    times = {"start": "2026-12-02T09:00:00Z", "end": "2026-12-02T09:30:00Z"}
    c.execute_batch([write(c, "upsert_patient", p) for p in "12"])
    c.execute_batch(
        [write(c, "upsert_appointment", "2", key="88", status="booked", comment="B", **times)]
    )
    # patient 1's plan names patient 2's appointment id: it writes an Appointment of patient 1
    (result,) = c.execute_batch(
        [write(c, "upsert_appointment", "1", key="88", status="booked", comment=SECRET, **times)]
    )
    assert result.error is None
    patients = {p["identifier"][0]["value"]: p["id"] for p in server.resources("Patient")}
    held = {a["identifier"][0]["value"]: a for a in server.resources("Appointment")}
    assert sorted(held) == ["1:88", "2:88"]
    assert held["2:88"]["comment"] == "B"
    assert held["2:88"]["participant"][0]["actor"]["reference"] == f"Patient/{patients['2']}"
    assert held["1:88"]["participant"][0]["actor"]["reference"] == f"Patient/{patients['1']}"
    c.close()
