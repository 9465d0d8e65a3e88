"""Candid Health in the connector contract suite: the real connector (its OAuth token flow and
its HTTP edge) against the local fake of ``tests.servers.candid``, which checks every request
against Candid's published OpenAPI file and records each violation.

Two backends, one per record kind:

* ``candid``: ``upsert_patient``; a record is a pre-encounter patient, keyed by its MRN (the
  Healthie id), so the key is the patient and the tests that need a key of another patient or
  a refused key are skipped here and run on coverages.
* ``candid-coverages``: ``upsert_coverage`` keyed by the Healthie policy id (the suite's key),
  member id ``M<key>``; the patient is seeded in the fake first (a coverage needs one), directly
  in the fake's state and not through the connector.

Read-back maps Candid's fields to the suite's: ``first_name`` is the (subscriber's) first given
name, ``dob`` the birth date, ``active`` "not deactivated" for patients (always true: the
connector never deactivates) and "status ACTIVE" for coverages; ``age`` is not a Candid field
(always None). At the end of each test the fake must have recorded no violation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from connectors.base import Connector, Scope, Write
from tests.contracts.targets import Rows, TargetBackend
from tests.servers.candid import ORG, USER, FakeCandid, session_fake

INTEGRATION = "clinic-a"  # one Candid organisation per integration
ADDRESS = {"line": ["1 Main St"], "city": "Springfield", "state": "IL", "postal_code": "62701"}


def _build(fake: FakeCandid) -> Any:
    def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
        from connectors.candid import CandidConnector

        secrets = (
            {"client_id": fake.client_id, "client_secret": fake.client_secret}
            if credentials is None
            else dict(credentials)
        )
        return CandidConnector.from_config("billing", {"api_url": fake.url, **options}, secrets)

    return build


def patient_write(connector: Connector, scope: Scope, key: str, values: dict[str, Any]) -> Write:
    """upsert_patient of the scope's patient with the suite's first name and birth date."""
    args = {
        "patient_id": scope.patient_id,
        "first_name": values.get("first_name") or "Pat",
        "last_name": "Test",
        "birth_date": values.get("dob") or "1980-01-01",
        "biological_sex": "UNKNOWN",
        "address": ADDRESS,
    }
    return Write(
        scope, "upsert_patient", connector.validate("upsert_patient", args, scope.patient_id)
    )


def patient_rows(fake: FakeCandid) -> Rows:
    with fake.lock:
        return [
            {
                "integration_id": INTEGRATION,
                "patient_id": (p.get("external_provenance") or {}).get("external_id"),
                "key": p["mrn"],
                "first_name": p["name"]["given"][0],
                "dob": p["birth_date"],
                "active": not p["deactivated"],
                "age": None,
            }
            for p in fake.patients.values()
        ]


def seed_patient(fake: FakeCandid, patient_id: str) -> None:
    """A Candid patient with MRN and external id ``patient_id``, unless there is one."""
    with fake.lock:
        if any(p["mrn"] == patient_id for p in fake.patients.values()):
            return
        pid = f"seed-{patient_id}"
        fake.patients[pid] = {
            "id": pid,
            "mrn": patient_id,
            "version": 1,
            "organization_id": ORG,
            "deactivated": False,
            "updated_at": "2026-12-01T09:30:00.000Z",
            "updating_user_id": USER,
            "name": {"family": "Seed", "given": ["Pat"], "use": "USUAL"},
            "other_names": [],
            "birth_date": "1980-01-01",
            "biological_sex": "UNKNOWN",
            "primary_address": {**ADDRESS, "country": "US", "use": "HOME"},
            "other_addresses": [],
            "other_telecoms": [],
            "contacts": [],
            "general_practitioners": [],
            "filing_order": {"coverages": []},
            "external_provenance": {"external_id": patient_id, "system_name": "Healthie"},
        }


def coverage_write(fake: FakeCandid) -> Any:
    def write(connector: Connector, scope: Scope, key: str, values: dict[str, Any]) -> Write:
        seed_patient(fake, scope.patient_id)
        subscriber: dict[str, Any] = {
            "first_name": values.get("first_name") or "Sub",
            "last_name": "Test",
            "biological_sex": "UNKNOWN",
        }
        if values.get("dob"):
            subscriber["birth_date"] = values["dob"]
        args = {
            "patient_id": scope.patient_id,
            "key": key,
            "member_id": f"M{key}",
            "payer_id": "60054",
            "payer_name": "Aetna",
            "relationship": "SPOUSE",
            "subscriber": subscriber,
        }
        validated = connector.validate("upsert_coverage", args, scope.patient_id)
        return Write(scope, "upsert_coverage", validated)

    return write


def coverage_rows(fake: FakeCandid) -> Rows:
    with fake.lock:
        by_id = {p["id"]: p for p in fake.patients.values()}
        rows = []
        for c in fake.coverages.values():
            patient = by_id[c["patient"]]
            rows.append(
                {
                    "integration_id": INTEGRATION,
                    "patient_id": patient["external_provenance"]["external_id"],
                    "key": c["insurance_plan"]["member_id"].removeprefix("M"),
                    "first_name": c["subscriber"]["name"]["given"][0],
                    "dob": c["subscriber"].get("date_of_birth"),
                    "active": c["status"] == "ACTIVE",
                    "age": None,
                }
            )
        return rows


def _poison(method: str, template: str, body: Any) -> bool:
    plan = (body or {}).get("insurance_plan") or {}
    return template.startswith("/coverages/v1") and plan.get("member_id") == "Mpoison"


_Case = tuple[str, dict[str, Any], dict[str, Any]]
CANDID_INVALID: tuple[tuple[str, dict[str, Any]], ...] = tuple(
    (operation, {**base, **args})
    for operation, base, args in list[_Case](
        [
            *(
                (
                    "upsert_patient",
                    {
                        "patient_id": "1",
                        "first_name": "A",
                        "last_name": "B",
                        "birth_date": "1980-01-01",
                        "biological_sex": "FEMALE",
                        "address": ADDRESS,
                    },
                    args,
                )
                for args in (
                    {"patient_id": "2"},  # another patient
                    {"birth_date": "forty"},
                    {"biological_sex": "Mallory"},
                    {"address": {**ADDRESS, "state": "Mallory"}},
                    {"email": "mallory@"},
                    {"first_name": "Mallory" * 10_000},
                    {"ssn": "123-45-6789"},
                    {"patient_id": "1" * 21},
                )
            ),
            ("upsert_patient", {"patient_id": "1", "first_name": "Mallory"}, {}),  # no birth date
            *(
                (
                    "upsert_coverage",
                    {
                        "patient_id": "1",
                        "key": "p1",
                        "member_id": "M1",
                        "payer_id": "60054",
                        "payer_name": "Aetna",
                    },
                    args,
                )
                for args in ({"relationship": "SPOUSE"}, {"key": ""}, {"status": "forty"})
            ),
            # encounters are off unless the target's options say encounters = true
            ("create_encounter", {"patient_id": "1", "key": "a1", "encounter": {}}, {}),
        ]
    )
)


def candid_backend(request: Any) -> Iterator[TargetBackend]:
    """Candid pre-encounter patients on the fake."""
    fake = session_fake()
    fake.reset()
    yield TargetBackend(
        name="candid",
        build=_build(fake),
        read=lambda _c, _t: patient_rows(fake),
        credential_names=("client_id", "client_secret"),
        fault=fake.failing,
        write=patient_write,
        tables=False,
        invalid=CANDID_INVALID,
        max_text_bytes=200,
        skips={
            "key_of_another_patient": "a patient is keyed by its own Healthie id (the MRN); "
            "keys of another patient run on candid-coverages",
            "row_refused": "upsert_patient has no key but the patient; per-write refusals run "
            "on candid-coverages and in tests/connectors/test_candid.py",
            "two_integrations": "one Candid organisation (credentials) per integration; MRNs "
            "carry no integration (options.mrn_prefix separates two that share one)",
        },
    )
    violations = fake.take_violations()
    assert violations == [], "requests that break Candid's contract:\n" + "\n".join(violations)


def candid_coverages_backend(request: Any) -> Iterator[TargetBackend]:
    """Candid coverages on the fake, keyed by the Healthie policy id."""
    fake = session_fake()
    fake.reset()
    yield TargetBackend(
        name="candid-coverages",
        build=_build(fake),
        read=lambda _c, _t: coverage_rows(fake),
        credential_names=("client_id", "client_secret"),
        fault=fake.failing,
        poison=lambda _c: fake.refusing(_poison),
        write=coverage_write(fake),
        tables=False,
        invalid=CANDID_INVALID,
        max_text_bytes=200,
        skips={
            "two_integrations": "one Candid organisation (credentials) per integration; "
            "patients' MRNs carry no integration",
        },
    )
    violations = fake.take_violations()
    assert violations == [], "requests that break Candid's contract:\n" + "\n".join(violations)


CANDID_BACKENDS = {"candid": candid_backend, "candid-coverages": candid_coverages_backend}
