"""The FHIR connector in the connector contract suite: the real connector (httpx2, OAuth client
credentials) against the local FHIR R4 server of ``tests.servers.fhir``, which validates every
resource with HL7's official FHIR R4 JSON schema and implements conditional update semantics.

The primary write is ``upsert_patient`` (a record target): the suite's values become Patient
elements (``first_name`` -> ``name[0].given[0]``, ``dob`` -> ``birthDate``, ``active``;
``age`` has no Patient element and is not written), and every Patient the server holds is read
back as a row keyed by its Healthie identifier: the integration from the identifier system
(``<base>/<integration>/user``), the patient from its value, the key being the patient itself.

``fhir-coverage`` runs the suite on a keyed write, ``upsert_coverage`` (the Healthie policy id),
so the suite's patient-boundary, poison and two-integration tests apply to a record keyed by
(integration, patient, key) as well.

Each test gets a fresh server; at its end the server must have recorded no violation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from connectors.base import Connector, Scope, Write
from connectors.fhir import FhirConnector
from tests.contracts.targets import Rows, TargetBackend
from tests.servers.fhir import FhirServer

IDENTIFIER_BASE = "https://gethealthie.com/fhir/identifier/"


def patient_rows(server: FhirServer) -> Rows:
    """Every Patient as a row (see the module docstring)."""
    rows = []
    for patient in server.resources("Patient"):
        ours = [
            i
            for i in patient.get("identifier", [])
            if str(i.get("system", "")).startswith(IDENTIFIER_BASE)
        ]
        for identifier in ours:
            integration, _, kind = identifier["system"][len(IDENTIFIER_BASE) :].partition("/")
            assert kind == "user"
            name = (patient.get("name") or [{}])[0]
            rows.append(
                {
                    "integration_id": integration,
                    "patient_id": identifier["value"],
                    "key": identifier["value"],
                    "first_name": (name.get("given") or [None])[0],
                    "active": patient.get("active"),
                    "dob": patient.get("birthDate"),
                    "age": None,
                }
            )
    return rows


def patient_write(connector: Connector, scope: Scope, key: str, values: dict[str, Any]) -> Write:
    """upsert_patient of the scope's patient (the key is the patient itself)."""
    args = {
        "patient_id": scope.patient_id,
        "first_name": values.get("first_name"),
        "active": values.get("active"),
        "birth_date": values.get("dob"),
    }
    parsed = connector.validate("upsert_patient", args, scope.patient_id)
    return Write(scope, "upsert_patient", parsed)


FHIR_INVALID: tuple[tuple[str, dict[str, Any]], ...] = (
    ("upsert_patient", {"patient_id": "2"}),  # another patient
    ("upsert_patient", {"patient_id": "1", "birth_date": "1/2/3"}),
    ("upsert_patient", {"patient_id": "1", "gender": "forty"}),
    ("upsert_patient", {"patient_id": "1", "email": "mallory@"}),
    ("upsert_patient", {"patient_id": "1", "phone": "Mallory\n"}),
    ("upsert_patient", {"patient_id": "1", "firstName": "Mallory"}),  # FHIR's name, not ours
    ("upsert_patient", {"patient_id": "1|2"}),  # search syntax in an id
    ("upsert_patient", {"patient_id": "1", "first_name": "x" * 10_001}),
    ("upsert_coverage", {"patient_id": "1", "key": "p1"}),  # no payer: FHIR requires a payor
    ("upsert_coverage", {"patient_id": "1", "key": "p1", "payer_name": ""}),
    ("upsert_coverage", {"patient_id": "1", "key": "p1", "payer_name": "A", "priority": 0}),
    ("upsert_appointment", {"patient_id": "1", "key": "a1", "status": "booked"}),  # app-3
    (
        "upsert_appointment",
        {"patient_id": "1", "key": "a1", "status": "booked", "start": "2026-12-01T09:00:00"},
    ),  # no zone, no end
    (
        "upsert_appointment",
        {
            "patient_id": "1",
            "key": "a1",
            "status": "booked",
            "start": "2026-12-01T10:00:00Z",
            "end": "2026-12-01T09:00:00Z",
        },
    ),
    ("upsert_appointment", {"patient_id": "1", "key": "a,1", "status": "proposed"}),
    ("upsert_practitioner", {"patient_id": "1", "key": "9", "npi": "forty"}),
)


def build_connector(
    server: FhirServer, options: Mapping[str, Any], credentials: Mapping[str, str] | None
) -> Connector:
    """The connector on ``server`` with the server's client credentials (or ``credentials``)."""
    secrets = (
        {"client_id": server.client_id, "client_secret": server.client_secret}
        if credentials is None
        else dict(credentials)
    )
    return FhirConnector.from_config("ehr", {"base_url": server.base_url, **options}, secrets)


def fhir_backend(request: Any) -> Iterator[TargetBackend]:
    """The FHIR connector on a fresh local FHIR server."""
    request.getfixturevalue("shared_dir")  # the official schema lives there: skip without it
    server = FhirServer()
    server.start()

    try:
        yield TargetBackend(
            name="fhir",
            build=lambda options, credentials: build_connector(server, options, credentials),
            read=lambda _connector, _table: patient_rows(server),
            credential_names=("client_id", "client_secret"),
            fault=server.failing,
            reports_unchanged=False,
            write=patient_write,
            tables=False,
            invalid=FHIR_INVALID,
            skips={
                "key_of_another_patient": "a Patient is identified by the scope's patient id "
                "itself; upsert_patient has no key",
                "row_refused": "upsert_patient has no key to poison by; a refused entry failing "
                "only its patient is tested in tests/connectors/test_fhir.py",
            },
        )
        violations = server.take_violations()
        assert violations == [], "requests the FHIR server refused as malformed:\n" + "\n".join(
            violations
        )
    finally:
        server.stop()


def coverage_rows(server: FhirServer) -> Rows:
    """Every Coverage as a row: integration from the identifier system, patient and key from
    its value (``<patient>:<policy id>``), the values from the elements they were written to."""
    rows = []
    for coverage in server.resources("Coverage"):
        (identifier,) = coverage["identifier"]
        integration, _, kind = identifier["system"][len(IDENTIFIER_BASE) :].partition("/")
        assert kind == "policy"
        patient, _, key = identifier["value"].partition(":")
        rows.append(
            {
                "integration_id": integration,
                "patient_id": patient,
                "key": key,
                "first_name": coverage["payor"][0]["display"],
                "active": coverage["status"] == "active",
                "dob": (coverage.get("period") or {}).get("start"),
                "age": coverage.get("order"),
            }
        )
    return rows


def coverage_write(server: FhirServer) -> Any:
    """upsert_coverage of policy ``key``: ``first_name`` as the payer's name, ``dob`` as the
    period's start, ``active`` as the status, ``age`` as the order. The Patient it references
    is seeded on the server first (this backend's suite writes no Patients)."""

    def make(connector: Connector, scope: Scope, key: str, values: dict[str, Any]) -> Write:
        fhir = connector
        assert isinstance(fhir, FhirConnector)
        system = f"{fhir.fhir.identifier_base}/{scope.integration_id}/user"
        if not any(
            i == {"system": system, "value": scope.patient_id}
            for p in server.resources("Patient")
            for i in p["identifier"]
        ):
            server.seed(
                {
                    "resourceType": "Patient",
                    "identifier": [{"system": system, "value": scope.patient_id}],
                }
            )
        args = {
            "patient_id": scope.patient_id,
            "key": key,
            "payer_name": values.get("first_name"),
            "status": "cancelled" if values.get("active") is False else "active",
            "start_date": values.get("dob"),
            "priority": values.get("age"),
        }
        return Write(
            scope, "upsert_coverage", connector.validate("upsert_coverage", args, scope.patient_id)
        )

    return make


def coverage_backend(request: Any) -> Iterator[TargetBackend]:
    """upsert_coverage on a fresh local FHIR server: a keyed write (the policy id), poisoned
    by the server's 422 for the Coverage whose policy is "poison"."""
    request.getfixturevalue("shared_dir")
    server = FhirServer()
    server.start()

    def poisoned(coverage: dict[str, Any]) -> bool:
        return coverage["resourceType"] == "Coverage" and any(
            str(i.get("value", "")).endswith(":poison") for i in coverage["identifier"]
        )

    try:
        yield TargetBackend(
            name="fhir-coverage",
            build=lambda options, credentials: build_connector(server, options, credentials),
            read=lambda _connector, _table: coverage_rows(server),
            credential_names=("client_id", "client_secret"),
            fault=server.failing,
            poison=lambda _connector: server.poisoned(poisoned),
            reports_unchanged=False,
            write=coverage_write(server),
            tables=False,
            invalid=FHIR_INVALID,
            max_text_bytes=200,  # payer_name: at most 200 characters (fhir_args.NAME_MAX)
        )
        violations = server.take_violations()
        assert violations == [], "requests the FHIR server refused as malformed:\n" + "\n".join(
            violations
        )
    finally:
        server.stop()


FHIR_BACKENDS = {"fhir": fhir_backend, "fhir-coverage": coverage_backend}
