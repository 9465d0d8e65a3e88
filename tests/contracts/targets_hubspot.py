"""HubSpot in the connector contract suite: the real connector (httpx2, Bearer private-app
token) against the router of ``tests.servers.hubspot`` in front of Prism serving HubSpot's
contacts and properties definitions, so every request is validated (the backend asserts that
neither Prism logged a violation during the test).

Prism keeps nothing: what HubSpot "holds" is the router's table of contacts, kept with the
router's reading of HubSpot's documented semantics (see its docstring). A record is a contact
carrying the id property: the row's patient and key are that patient id (contacts are keyed by
the patient itself), its values the contact's properties with the suite's names (``firstname``
as ``first_name``) and types (``""`` read as None, booleans and numbers as HubSpot's strings
parsed back). The suite's key travels in a declared ``sync_key`` property, which is how the
poisoned record is recognised: the router refuses it with HubSpot's 207 multi-status naming
its input, so only that patient fails. Faults (429 with ``policyName``, 503, 401) are answered
by the router, as the definitions declare no such statuses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from connectors.base import Connector, Scope, Write
from connectors.hubspot import HubSpotConnector
from tests.contracts.targets import Rows, TargetBackend
from tests.servers import fixture_for
from tests.servers.hubspot import HubSpotRouter, assert_valid_since, marks

INTEGRATION = "clinic-a"  # one HubSpot account per integration: the suite's default one
PROPERTIES = {
    "age": {"type": "number"},
    "active": {"type": "bool"},
    "dob": {"type": "date"},
    "nickname": {"type": "string"},
    "sync_key": {"type": "string"},
}
RENAMED = {"first_name": "firstname"}


def hubspot_write(connector: Connector, scope: Scope, key: str, values: dict[str, Any]) -> Write:
    """upsert_contact of the scope's patient, the values as HubSpot properties and the key in
    ``sync_key``."""
    properties = {RENAMED.get(k, k): v for k, v in values.items()}
    args = connector.validate(
        "upsert_contact",
        {"patient_id": scope.patient_id, "properties": {**properties, "sync_key": key}},
        scope.patient_id,
    )
    return Write(scope, "upsert_contact", args)


def hubspot_rows(router: HubSpotRouter, id_property: str = "healthie_patient_id") -> Rows:
    """Every contact carrying the id property, as a row keyed by its patient."""
    back = {v: k for k, v in RENAMED.items()}
    rows = []
    for props in router.records.values():
        patient = props.get(id_property)
        if not patient:
            continue
        row: dict[str, Any] = {}
        for name, value in props.items():
            if name in (id_property, "sync_key", "hs_object_id"):
                continue
            row[back.get(name, name)] = _typed(name, value)
        rows.append({**row, "integration_id": INTEGRATION, "patient_id": patient, "key": patient})
    return rows


def _typed(name: str, value: str) -> Any:
    if value == "":
        return None
    if PROPERTIES.get(name, {}).get("type") == "number":
        return float(value) if "." in value else int(value)
    if PROPERTIES.get(name, {}).get("type") == "bool":
        return value == "true"
    return value


HUBSPOT_INVALID: tuple[tuple[str, dict[str, Any]], ...] = tuple(
    ("upsert_contact", {"patient_id": "1", **args})
    for args in (
        {"patient_id": "2", "properties": {}},  # another patient
        {"properties": {"healthie_patient_id": "2"}},  # the id property is the connector's
        {"properties": {"secret_notes": "Mallory"}},  # undeclared
        {"properties": {"age": "forty"}},
        {"properties": {"active": "Mallory"}},
        {"properties": {"dob": "Mallory"}},
        {"properties": {"email": "mallory@"}},
        {"properties": {"nickname": "x" * 70_000}},
        {"properties": {"age": float("nan")}},
        {"properties": {"Mallory": "x"}},
        {"properties": {}, "unknown": "x"},
        {"patient_id": "1\nforty", "properties": {}},
    )
)


def hubspot_backend(request: Any) -> Iterator[TargetBackend]:
    """The HubSpot connector on the router in front of both Prisms."""
    router: HubSpotRouter = fixture_for(request, "tests.servers.hubspot", "hubspot_server")
    router.reset()
    before = marks(router)

    def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
        secrets = {"access_token": "pat-test"} if credentials is None else dict(credentials)
        return HubSpotConnector.from_config(
            "crm", {"api_url": router.url, "properties": PROPERTIES, **options}, secrets
        )

    yield TargetBackend(
        name="hubspot",
        build=build,
        read=lambda _connector, _table: hubspot_rows(router),
        credential_names=("access_token",),
        fault=router.failing,
        poison=lambda _c: router.poisoned(
            lambda item: item["properties"].get("sync_key") == "poison"
        ),
        reports_unchanged=False,
        write=hubspot_write,
        tables=False,
        invalid=HUBSPOT_INVALID,
        skips={
            "key_of_another_patient": "contacts are keyed by the scope's patient id itself "
            "(the unique id property); upsert_contact has no other key",
            "two_integrations": "one HubSpot account (private app) per integration; contacts "
            "carry no integration",
        },
    )
    assert_valid_since(router, before)


HUBSPOT_BACKENDS = {"hubspot": hubspot_backend}
