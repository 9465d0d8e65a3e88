"""Eligibility targets in the connector contract suite: Stedi (against ``tests.servers.stedi``,
which validates every request against Stedi's published OpenAPI file) and Nirvana
(experimental, against ``tests.servers.nirvana``, which follows Nirvana's documented shapes:
there is no published contract).

A check stores nothing at the vendor, so what such a target "holds" is read back from the
fake's record of the checks it answered: per (patient, policy) the latest check, as a row of
what the request carried (``first_name``, ``dob``) and what the fake answered (``active``:
the fakes answer active coverage unless the member id starts with "INACTIVE"). The suite's
primary write is a ``check_eligibility`` whose member id encodes the record key (backend
conventions, like Brevo's ``k<key>@example.com``):

* Stedi: member id ``<key>-M``; the patient comes from the request's ``externalPatientId``,
  which the connector fills from the write's *scope*, so the suite's patient-boundary test
  checks the connector, not a convention;
* Nirvana: member id ``<key>-P<patient>``: Nirvana documents no field for the caller's
  patient id, so the patient is a backend convention here and the patient-boundary test is
  skipped.

"poison": the payer refuses a member id starting "POISON" (Stedi: the file's own 400 example
with AAA code 44; Nirvana: a 400 as for a credentialing error). Tests that do not apply are
skipped with their reasons (``skips``). Each test ends with no contract violation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from connectors.base import Connector, Scope, Write
from connectors.nirvana import NirvanaConnector
from connectors.stedi import StediConnector
from tests.contracts.targets import Rows, TargetBackend
from tests.servers.nirvana import API_KEY as NIRVANA_KEY
from tests.servers.nirvana import session_fake as nirvana_fake
from tests.servers.stedi import API_KEY as STEDI_KEY
from tests.servers.stedi import session_fake as stedi_fake

INTEGRATION = "clinic-a"
NPI = "1999999984"

_CASES: tuple[dict[str, Any], ...] = (
    {"patient_id": "2"},  # another patient
    {"member_id": "mallory@"},  # outside the X12 member id characters
    {"member_id": "x"},
    {"first_name": "Mallory" * 6},  # over X12's 35
    {"date_of_birth": "forty"},
    {"date_of_service": "1/2/3"},
    {"payer_id": ""},
    {"service_type_codes": []},
    {"service_type_codes": ["forty"]},
    {"key": ""},
    {"unknown": "x"},
)
ELIGIBILITY_INVALID: tuple[tuple[str, dict[str, Any]], ...] = tuple(
    (
        "check_eligibility",
        {
            "patient_id": "1",
            "key": "1",
            "payer_id": "87726",
            "member_id": "AB12",
            "first_name": "Ann",
            "last_name": "Lee",
            "date_of_birth": "1990-01-01",
            **args,
        },
    )
    for args in _CASES
)


def _values(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "first_name": values.get("first_name") or "Test",
        "last_name": "Patient",
        "date_of_birth": values.get("dob") or "1990-01-01",
    }


def _write(connector: Connector, scope: Scope, member_id: str, key: str, values: dict) -> Write:
    args = {
        "patient_id": scope.patient_id,
        "key": key,
        "payer_id": "87726",
        "member_id": member_id,
        **_values(values),
    }
    return Write(
        scope, "check_eligibility", connector.validate("check_eligibility", args, scope.patient_id)
    )


def _iso(d8: str) -> str:
    return datetime.strptime(d8, "%Y%m%d").date().isoformat()  # noqa: DTZ007 - a date


def _latest(rows: list[dict[str, Any]]) -> Rows:
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        found[(row["integration_id"], row["patient_id"], row["key"])] = row
    return list(found.values())


@contextlib.contextmanager
def _faulty(fake: Any, status: int) -> Iterator[None]:
    fake.fail(status, times=None)
    try:
        yield
    finally:
        fake.faults.clear()


# -- Stedi ----------------------------------------------------------------------------------


def stedi_rows(fake: Any) -> Rows:
    """The latest check per (patient, policy), as the fake received it."""
    rows = []
    for body in list(fake.checks):
        subscriber = body["subscriber"]
        member = subscriber["memberId"]
        rows.append(
            {
                "integration_id": INTEGRATION,
                "patient_id": body.get("externalPatientId"),
                "key": member.removesuffix("-M"),
                "first_name": subscriber.get("firstName"),
                "dob": _iso(subscriber["dateOfBirth"]),
                "active": not member.upper().startswith("INACTIVE"),
            }
        )
    return _latest(rows)


def stedi_backend(request: Any) -> Iterator[TargetBackend]:
    """The Stedi connector on the validating fake."""
    fake = stedi_fake(request.config)
    fake.reset()

    def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
        merged = {
            "provider_npi": NPI,
            "provider_organization_name": "Provider Name",
            "api_url": fake.url,
            **options,
        }
        secrets = {"api_key": STEDI_KEY} if credentials is None else dict(credentials)
        return StediConnector.from_config("eligibility", merged, secrets)

    yield TargetBackend(
        name="stedi",
        build=build,
        read=lambda _c, _t: stedi_rows(fake),
        credential_names=("api_key",),
        fault=lambda status: _faulty(fake, status),
        poison=lambda _c: contextlib.nullcontext(),
        reports_unchanged=False,  # every check is a new (billed) 270
        write=lambda c, scope, key, values: _write(c, scope, f"{key}-M", key, values),
        tables=False,
        invalid=ELIGIBILITY_INVALID,
        max_text_bytes=35,  # X12 / Stedi: a first name is at most 35 characters
        skips={
            "two_integrations": "one Stedi account (API key) per integration; a 270 carries "
            "no integration, and checks are keyed by the scope's patient",
        },
    )
    violations = fake.take_violations()
    assert violations == [], "requests that break stedi-healthcare.json:\n" + "\n".join(violations)


# -- Nirvana --------------------------------------------------------------------------------


def nirvana_rows(fake: Any) -> Rows:
    """The latest check per (patient, policy) from the member id convention."""
    rows = []
    for _endpoint, body in list(fake.checks):
        member = body["member_id"]
        key, _, patient = member.rpartition("-P")
        rows.append(
            {
                "integration_id": INTEGRATION,
                "patient_id": patient,
                "key": key,
                "first_name": body.get("member_first_name"),
                "dob": body.get("member_dob"),
                "active": not member.upper().startswith("INACTIVE"),
            }
        )
    return _latest(rows)


def nirvana_backend(request: Any) -> Iterator[TargetBackend]:
    """The Nirvana connector on the documented-shapes fake."""
    fake = nirvana_fake(request.config)
    fake.reset()

    def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
        merged = {"provider_npi": NPI, "api_url": fake.url, **options}
        secrets = {"api_key": NIRVANA_KEY} if credentials is None else dict(credentials)
        return NirvanaConnector.from_config("coverage", merged, secrets)

    def write(c: Connector, scope: Scope, key: str, values: dict[str, Any]) -> Write:
        return _write(c, scope, f"{key}-P{scope.patient_id}", key, values)

    yield TargetBackend(
        name="nirvana",
        build=build,
        read=lambda _c, _t: nirvana_rows(fake),
        credential_names=("api_key",),
        fault=lambda status: _faulty(fake, status),
        poison=lambda _c: contextlib.nullcontext(),
        reports_unchanged=False,
        write=write,
        tables=False,
        invalid=ELIGIBILITY_INVALID,
        max_text_bytes=35,
        skips={
            "two_integrations": "one Nirvana API key per integration; a check carries no "
            "integration",
            "key_of_another_patient": "Nirvana documents no field for the caller's patient "
            "id, so this backend attributes checks by its own member-id convention; the "
            "result's attribution is the write's scope (tests/connectors/test_nirvana.py)",
        },
    )
    violations = fake.take_violations()
    assert violations == [], "requests that break Nirvana's documented shapes:\n" + "\n".join(
        violations
    )


ELIGIBILITY_BACKENDS = {"stedi": stedi_backend, "nirvana": nirvana_backend}
