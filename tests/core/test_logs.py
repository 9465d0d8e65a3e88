"""No entry data in any log, at any level: with the root logger at DEBUG (``--debug``), fetching
real entries from the sandbox over HTTP logs no patient value (gql's transport prints every
GraphQL response at INFO unless the engine holds it back)."""

from __future__ import annotations

import logging

from app.core.logs import configure
from app.healthie.client import HealthieClient
from app.service.serving import serve_in_thread
from sandbox.core import Sandbox
from sandbox.server import create_app as sandbox_app


def test_debug_logging_carries_no_patient_value(caplog):
    sb = Sandbox(patients=6, seed=3)
    ids = list(sb.org.patient_ids())[:4]
    values = []
    for patient_id in ids:
        patient = sb.org.patient(patient_id)
        assert patient is not None
        values += [patient.first_name, patient.last_name, patient.email]
    configure(logging.DEBUG)
    try:
        with serve_in_thread(sandbox_app(sb)) as url, caplog.at_level(logging.DEBUG):
            client = HealthieClient(url=f"{url}/graphql", api_key=sb.api_key)
            try:
                entries = client.fetch_entries(ids)
            finally:
                client.close()
    finally:
        configure(logging.WARNING)
    assert all(entries[i] for i in ids)  # the entries really came back
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records, "DEBUG logging produced nothing: the test would prove nothing"
    leaked = [v for v in values if v and v in logged]
    assert leaked == [], f"{len(leaked)} patient values in the logs"
