"""The Healthie target in the connector contract suite: the real connector (the engine's
Healthie client over HTTP) against the local sandbox (``sandbox.server``), which holds what is
written with Healthie's semantics.

It is a record target: the primary write is ``update_metadata`` setting the metadata key
``key`` of the patient to the values (a JSON object), and a record is one such key of one
patient's metadata. The suite's patient ids ("1", "2", ...) are not Healthie ids, so each is
mapped to the sandbox patient ``1000000 + id`` on the way in (the write's scope and arguments
both name the mapped patient, as a real entry's would) and back on the way out.

Faults are answered by a transport between the client and the sandbox (the HTTP status with an
``errors`` body, as Healthie's edge answers), and "poison" is Healthie's own refusal: HTTP 200
with ``messages`` for the updateClient whose metadata holds the key "poison".
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import httpx2

from app.healthie.client import HealthieClient
from app.service.serving import serve_in_thread
from connectors.base import Connector, Scope, Write
from connectors.healthie import HealthieConnector
from sandbox.core import Sandbox
from sandbox.ids import PATIENT_BASE
from sandbox.server import create_app
from tests.contracts.targets import Rows, TargetBackend

INTEGRATION = "clinic-a"
PATIENTS = 20


def sandbox_id(suite_patient: str) -> str:
    """The sandbox patient standing for the suite's patient id."""
    return str(PATIENT_BASE + int(suite_patient) % PATIENTS)


@dataclass
class Edge(httpx2.BaseTransport):
    """Forwards to the sandbox; answers faults and poison itself."""

    status: int | None = None
    poison: bool = False
    inner: httpx2.HTTPTransport = field(default_factory=httpx2.HTTPTransport)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        """See the module docstring."""
        if self.status is not None:
            # the sandbox's own refusal bodies (sandbox.server): a code with the 401
            code = {401: "UNAUTHENTICATED"}.get(self.status, "FAULT")
            error = {"message": "fault", "extensions": {"code": code}}
            return httpx2.Response(self.status, json={"errors": [error]})
        body = json.loads(request.content)
        metadata = ((body.get("variables") or {}).get("input") or {}).get("metadata")
        if self.poison and metadata and "poison" in json.loads(metadata):
            refused = {"field": "metadata", "message": "Metadata is invalid"}
            return httpx2.Response(
                200, json={"data": {"updateClient": {"user": None, "messages": [refused]}}}
            )
        return self.inner.handle_request(request)


@contextlib.contextmanager
def _set(edge: Edge, **state: Any) -> Iterator[None]:
    for k, v in state.items():
        setattr(edge, k, v)
    try:
        yield
    finally:
        edge.status, edge.poison = None, False


def metadata_write(connector: Connector, scope: Scope, key: str, values: dict[str, Any]) -> Write:
    """update_metadata of the mapped patient: metadata key ``key`` set to the values."""
    patient = sandbox_id(scope.patient_id)
    args = connector.validate(
        "update_metadata", {"patient_id": patient, "set": {key: values}}, patient
    )
    return Write(replace(scope, patient_id=patient), "update_metadata", args)


def metadata_rows(sb: Sandbox) -> Rows:
    """Every object-valued metadata key of every patient, as a row of the suite's patient."""
    rows = []
    for i in range(PATIENTS):
        patient = sb.org.patient(str(PATIENT_BASE + i))
        metadata = json.loads(patient.metadata or "{}") if patient else {}
        for key, value in metadata.items():
            if isinstance(value, dict):
                row = {**value, "integration_id": INTEGRATION, "patient_id": str(i), "key": key}
                rows.append(row)
    return rows


HEALTHIE_INVALID: tuple[tuple[str, dict[str, Any]], ...] = (
    ("update_metadata", {"patient_id": "2", "set": {"k": 1}}),  # another patient
    ("update_metadata", {"patient_id": "1", "set": {"k": float("nan")}}),
    ("update_metadata", {"patient_id": "1", "set": {"k": "Mallory" * 20_000}}),  # > 128,000
    ("update_metadata", {"patient_id": "1", "set": {"Mallory\nforty": 1}}),
    ("update_metadata", {"patient_id": "1"}),
    ("update_metadata", {"patient_id": "1", "set": {}, "unknown": "x"}),
    ("update_client", {"patient_id": "1", "email": "mallory@"}),
    ("update_client", {"patient_id": "1", "quick_notes": "Mallory"}),
    ("apply_tag", {"patient_id": "1", "name": "Mallory\nforty"}),
    ("create_task", {"patient_id": "1", "key": "", "content": "x"}),
    ("update_appointment", {"patient_id": "1", "appointment_id": "1", "pm_status": "forty"}),
    ("update_appointment", {"patient_id": "1", "appointment_id": "1", "notes": "Mallory"}),
)


def healthie_backend(request: Any) -> Iterator[TargetBackend]:
    """The Healthie connector on a fresh sandbox served over HTTP."""
    sb = Sandbox(patients=PATIENTS, seed=5)
    edge = Edge()
    built: list[Connector] = []
    with serve_in_thread(create_app(sb)) as base:
        url = f"{base}/graphql"

        def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
            secrets = {"api_key": sb.api_key} if credentials is None else dict(credentials)
            connector = HealthieConnector.from_config(
                "healthie", {"use_integration_key": False, "api_url": url, **options}, secrets
            )
            assert isinstance(connector, HealthieConnector)
            connector.client.close()
            # one attempt: the suite's fault tests want the kind, not the retries
            connector.client = HealthieClient(
                url=url, api_key=secrets["api_key"], http_transport=edge, max_attempts=1
            )
            built.append(connector)
            return connector

        yield TargetBackend(
            name="healthie",
            build=build,
            read=lambda _connector, _table: metadata_rows(sb),
            credential_names=("api_key",),
            fault=lambda status: _set(edge, status=status),
            poison=lambda _connector: _set(edge, poison=True),
            reports_unchanged=True,
            write=metadata_write,
            tables=False,
            invalid=HEALTHIE_INVALID,
            skips={
                "two_integrations": "one Healthie organization (API key) per integration; "
                "metadata keys carry no integration",
            },
        )
        for connector in built:
            connector.close()
    edge.inner.close()
    sb.close()


HEALTHIE_BACKENDS = {"healthie": healthie_backend}
