"""The pipeline's write stage on its own: the security boundary before any I/O, one batch per
target for many patients, mirror pruning, and staging copies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

import pytest

from app.core.config import TargetConfig
from app.core.errors import PlanValidationError
from app.core.models import Entry, WorkItem, WriteOperation, WritePlan
from app.state.sqlite import SqliteStateStore
from connectors.memory import MemoryConnector
from tests.helpers import demo_runtime
from workers.pipeline import Prepared, validate, write

NOW = datetime(2026, 12, 1, tzinfo=UTC)
TABLES = {"patients": {"first_name": "text"}, "appointments": {"kind": "text"}}


def prepared(patient_id: str = "1") -> Prepared:
    item = WorkItem(
        integration_id="demo-clinic", patient_id=patient_id, flush_id="f1", dirty_since=NOW
    )
    entry = Entry(
        integration_id="demo-clinic",
        patient_id=patient_id,
        data={"id": patient_id},
        content_hash="h",
        fetched_at=NOW,
    )
    return Prepared(item, entry, None)


def row(patient_id: str, key: str | None = None, table: str = "patients") -> WriteOperation:
    return WriteOperation(
        target="warehouse",
        operation="upsert_row",
        args={"table": table, "key": key or patient_id, "patient_id": patient_id, "values": {}},
    )


def warehouse(**options) -> MemoryConnector:
    built = MemoryConnector.from_config("warehouse", {"tables": TABLES, **options}, {})
    return cast(MemoryConnector, built)


def test_a_plan_for_another_patient_is_refused_before_any_write():
    # Internally consistent (the plan and its rows all name patient 2), but the entry is
    # patient 1's: only the write stage's plan check stands between it and patient 2's rows.
    target = warehouse()
    plan = WritePlan(patient_id="2", operations=(row("2"),))
    with pytest.raises(PlanValidationError):
        validate({"warehouse": target}, prepared("1"), plan)
    assert target.rows == {}
    assert target.calls == []


def test_an_undeclared_target_or_table_is_refused_before_any_write():
    target = warehouse()
    crm = row("1").model_copy(update={"target": "crm"})
    with pytest.raises(PlanValidationError):
        validate({"warehouse": target}, prepared(), WritePlan(patient_id="1", operations=(crm,)))
    secret = row("1", table="secrets")
    with pytest.raises(PlanValidationError):
        validate({"warehouse": target}, prepared(), WritePlan(patient_id="1", operations=(secret,)))
    assert target.calls == []


def test_writes_are_scoped_to_the_integration_patient_and_run():
    (w,) = validate(
        {"warehouse": warehouse()},
        prepared("1"),
        WritePlan(patient_id="1", operations=(row("1", key="appt-9"),)),
    )
    assert (w.scope.integration_id, w.scope.patient_id, w.scope.run_id) == (
        "demo-clinic",
        "1",
        "f1-demo-clinic",
    )
    assert w.target == "warehouse"


def test_many_patients_are_written_in_one_batch_per_target():
    target = warehouse()
    batches = []
    original = target.execute_batch

    def recording(writes):
        batches.append(len(writes))
        return original(writes)

    target.execute_batch = recording  # type: ignore[method-assign]
    per_item = [
        validate({"warehouse": target}, prepared(p), WritePlan(patient_id=p, operations=(row(p),)))
        for p in ("1", "2", "3")
    ]
    errors = write(lambda: {"warehouse": target}, per_item)
    assert errors == [[], [], []]
    assert batches == [3]
    assert sorted(target.table("patients")) == ["1", "2", "3"]


def test_nothing_to_write_builds_no_connector():
    built: list[str] = []

    def connectors():
        built.append("built")
        return {}

    assert write(connectors, [[], []]) == [[], []]
    assert built == []


def test_mirror_mode_prunes_rows_of_items_gone_from_the_entry():
    target = warehouse(mode="mirror")
    targets = {"warehouse": target}
    first = WritePlan(
        patient_id="1",
        operations=(row("1"), row("1", "a1", "appointments"), row("1", "a2", "appointments")),
    )
    write(lambda: targets, [validate(targets, prepared("1"), first)])
    assert sorted(target.table("appointments")) == ["a1", "a2"]
    second = WritePlan(patient_id="1", operations=(row("1"), row("1", "a2", "appointments")))
    write(lambda: targets, [validate(targets, prepared("1"), second)])
    assert sorted(target.table("appointments")) == ["a2"]
    assert sorted(target.table("patients")) == ["1"]


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


def test_staging_writes_to_the_declared_copy_only(tmp_path):
    runtime = demo_runtime(tmp_path, target="sqlite")
    integration = runtime.integrations["demo-clinic"]
    live = {"path": str(tmp_path / "live.db")}
    copy = {"path": str(tmp_path / "staging.db")}
    runtime.integrations["demo-clinic"] = integration.model_copy(
        update={
            "mode": "staging",
            "targets": [
                TargetConfig(name="warehouse", connector="sqlite", options=live, staging=copy)
            ],
        }
    )
    try:
        built = runtime.connectors("demo-clinic")["warehouse"]
        assert built.options.path == copy["path"]  # type: ignore[attr-defined]
    finally:
        runtime.close()


def test_staging_without_a_declared_copy_is_refused_at_load():
    from app.core.config import Integration

    integration = demo_runtime_integration()
    with pytest.raises(ValueError, match="staging"):
        Integration.model_validate({**integration.model_dump(), "mode": "staging"})


def demo_runtime_integration():
    from app.core.config import load_integration
    from tests.helpers import REPO

    return load_integration(REPO / "config" / "integrations" / "demo-clinic.toml")


def test_mirror_mode_drops_every_row_of_a_patient_healthie_no_longer_has(tmp_path):
    import httpx2

    from tests.workers.test_workers import FakeHealthie, work
    from workers.consumer import drain

    fake = FakeHealthie()
    runtime = demo_runtime(tmp_path, http_transport=httpx2.MockTransport(fake))
    integration = runtime.integrations["demo-clinic"]
    (target,) = integration.targets
    mirrored = target.model_copy(update={"options": {**target.options, "mode": "mirror"}})
    runtime.integrations["demo-clinic"] = integration.model_copy(update={"targets": [mirrored]})
    try:
        work(runtime, "1", "2")
        assert drain(runtime).processed == 2
        warehouse = cast(MemoryConnector, runtime.connectors("demo-clinic")["warehouse"])
        assert sorted(warehouse.table("patients")) == ["1", "2"]
        del fake.patients["1"]  # deleted in Healthie, or merged into another patient
        work(runtime, "1")
        drain(runtime)
        assert sorted(warehouse.table("patients")) == ["2"]
        audit = cast(SqliteStateStore, runtime.state).list_audit("demo-clinic", "1")
        assert audit[-1].outcome == ("skipped:patient_not_found")
    finally:
        runtime.close()


def test_a_compiled_plan_declares_what_it_writes_and_nothing_else_passes(tmp_path):
    runtime = demo_runtime(tmp_path, target="sqlite")
    try:
        targets = runtime.clients("demo-clinic").targets
        tables = targets["warehouse"].options.tables  # type: ignore[attr-defined]
        assert set(tables) == {"patients", "appointments"}
        assert tables["patients"]["active"] == "boolean"
        extra = WriteOperation(
            target="warehouse",
            operation="upsert_row",
            args={"table": "patients", "key": "1", "patient_id": "1", "values": {"ssn": "x"}},
        )
        with pytest.raises(PlanValidationError):
            validate(targets, prepared(), WritePlan(patient_id="1", operations=(extra,)))
    finally:
        runtime.close()


def test_the_claude_backend_writes_only_declared_tables(tmp_path):
    from app.core.errors import ConfigurationError

    runtime = demo_runtime(tmp_path, target="sqlite")
    integration = runtime.integrations["demo-clinic"]
    runtime.integrations["demo-clinic"] = integration.model_copy(
        update={"agent": integration.agent.model_copy(update={"backend": "claude"})}
    )
    try:
        with pytest.raises(ConfigurationError, match="declared tables"):
            _ = runtime.clients("demo-clinic").targets
    finally:
        runtime.close()
