"""The pipeline's stages on their own: the write stage is the security boundary, staging
writes nothing, and asking for an agent opens no target."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.core.errors import PlanValidationError
from app.core.models import Entry, WriteOperation, WritePlan
from connectors.memory import MemoryConnector
from tests.helpers import demo_runtime
from workers.pipeline import write

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def entry(patient_id: str = "1") -> Entry:
    return Entry(
        integration_id="demo-clinic",
        patient_id=patient_id,
        data={"id": patient_id},
        content_hash="h",
        fetched_at=NOW,
    )


def row_for(patient_id: str) -> WriteOperation:
    return WriteOperation(
        target="warehouse",
        operation="upsert_row",
        args={"table": "patients", "key": patient_id, "patient_id": patient_id, "values": {}},
    )


def test_a_plan_for_another_patient_is_refused_before_any_write():
    # Internally consistent (the plan and its rows all name patient 2), but the entry is
    # patient 1's: only the write stage's plan check stands between it and patient 2's rows.
    warehouse = MemoryConnector("warehouse")
    plan = WritePlan(patient_id="2", operations=(row_for("2"),))
    with pytest.raises(PlanValidationError):
        write({"warehouse": warehouse}, lambda: {"warehouse": warehouse}, "live", entry("1"), plan)
    assert warehouse.rows == {}
    assert warehouse.calls == []


def test_an_operation_on_an_undeclared_target_is_refused_before_any_write():
    warehouse = MemoryConnector("warehouse")
    op = row_for("1").model_copy(update={"target": "crm"})
    plan = WritePlan(patient_id="1", operations=(row_for("1"), op))
    with pytest.raises(PlanValidationError):
        write({"warehouse": warehouse}, lambda: {"warehouse": warehouse}, "live", entry(), plan)
    assert warehouse.calls == []


def test_staging_validates_but_writes_nothing_and_builds_no_connector():
    built: list[str] = []

    def connectors():
        built.append("built")
        return {"warehouse": MemoryConnector("warehouse")}

    schemas = {"warehouse": MemoryConnector.schema("warehouse")}
    plan = WritePlan(patient_id="1", operations=(row_for("1"),))
    assert write(schemas, connectors, "staging", entry(), plan) == 0
    assert built == []
    with pytest.raises(PlanValidationError):
        write(schemas, connectors, "staging", entry("1"), WritePlan(patient_id="2"))


def test_live_writes_each_operation_once():
    warehouse = MemoryConnector("warehouse")
    plan = WritePlan(patient_id="1", operations=(row_for("1"),))
    assert (
        write({"warehouse": warehouse}, lambda: {"warehouse": warehouse}, "live", entry(), plan)
        == 1
    )
    assert warehouse.calls == [("upsert_row", "1")]


def test_asking_for_the_agent_opens_no_target(tmp_path):
    runtime = demo_runtime(tmp_path, target="sqlite")
    try:
        clients = runtime.clients("demo-clinic")
        assert clients.agent is not None
        assert sorted(clients.targets) == ["warehouse"]
        assert not (tmp_path / "warehouse.db").exists()
        assert clients.connectors["warehouse"] is not None
        assert (tmp_path / "warehouse.db").exists()
    finally:
        runtime.close()
