"""The contract every target meets, run on each with its real server or validating mock
(``tests.contracts.targets_*``): idempotent writes, the security boundary before any I/O,
failures of the right kind and of the right patient, migrations, and faithful round trips.

Table targets are written with ``upsert_row`` into the declared table ``patients``; record
targets (CRMs) with the primary write their backend supplies (``TargetBackend.write``), read
back keyed by (integration, patient, key). A test whose premise does not hold for a target
skips with a one-line reason (``fault is None``, ``poison is None``, ``tables`` False, or the
backend's ``skips``)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import (
    ConfigurationError,
    FatalError,
    PlanValidationError,
    RateLimited,
    UpstreamUnavailable,
)
from connectors.base import Connector, Scope, Write
from tests.contracts.targets import TargetBackend
from tests.contracts.targets_memory import memory_backend


def _families() -> dict[str, Any]:
    """Every backend registered by a ``tests/contracts/targets_<family>.py`` module (each
    exports ``<FAMILY>_BACKENDS``): a new connector joins the suite by adding its module."""
    found: dict[str, Any] = {"memory": memory_backend}
    for path in sorted(Path(__file__).parent.glob("targets_*.py")):
        module = importlib.import_module(f"tests.contracts.{path.stem}")
        for name, value in vars(module).items():
            if name.endswith("_BACKENDS") and isinstance(value, dict):
                found.update(value)
    return found


FACTORIES: dict[str, Any] = _families()

TABLES = {
    "patients": {"first_name": "text", "age": "integer", "active": "boolean", "dob": "date"},
    "appointments": {"starts_at": "timestamp", "kind": "text"},
}
AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


@pytest.fixture(params=sorted(FACTORIES))
def target(request: Any) -> Iterator[TargetBackend]:
    factory = FACTORIES[request.param]
    yield from factory(request)


def scope(patient: str = "1", integration: str = "clinic-a", run: str = "run-1") -> Scope:
    return Scope(integration, patient, run, AT)


def upsert(
    target: TargetBackend,
    connector: Connector,
    patient: str,
    key: str,
    values: dict,
    **scope_kw: Any,
) -> Write:
    """The target's primary write, validated exactly as the pipeline validates one."""
    if target.write is not None:
        return target.write(connector, scope(patient, **scope_kw), key, values)
    args = connector.validate(
        "upsert_row",
        {"table": "patients", "key": key, "patient_id": patient, "values": values},
        patient,
    )
    return Write(scope(patient, **scope_kw), "upsert_row", args)


def rows_by_key(target: TargetBackend, connector: Connector, table: str = "patients") -> dict:
    return {
        (r["integration_id"], r["patient_id"], r["key"]): r for r in target.read(connector, table)
    }


def options(target: TargetBackend, tables: dict = TABLES, **more: Any) -> dict[str, Any]:
    """Options for the suite's connectors (declared tables for table targets only)."""
    return {"tables": tables, **more} if target.tables else dict(more)


def build(target: TargetBackend, **more: Any) -> Connector:
    return target.build(options(target, **more), None)


def skip_unless_applies(target: TargetBackend, test: str) -> None:
    """Skip ``test`` for a target whose backend says its premise does not hold."""
    if test in target.skips:
        pytest.skip(f"{target.name}: {target.skips[test]}")


def test_the_same_writes_twice_leave_the_target_as_after_once(target):
    connector = build(target)
    try:
        writes = [
            upsert(target, connector, p, p, {"first_name": f"P{p}", "age": 40}) for p in "123"
        ]
        first = connector.execute_batch(writes)
        assert [r.error for r in first] == [None, None, None]
        once = rows_by_key(target, connector)
        second = connector.execute_batch(writes)
        assert [r.error for r in second] == [None, None, None]
        if target.reports_unchanged:
            assert [r.changed for r in second] == [False, False, False]
        assert rows_by_key(target, connector).keys() == once.keys()
        assert len(target.read(connector, "patients")) == 3
    finally:
        connector.close()


def test_a_key_naming_another_patient_writes_a_row_of_the_entrys_patient_only(target):
    skip_unless_applies(target, "key_of_another_patient")
    connector = build(target)
    try:
        connector.execute_batch([upsert(target, connector, "2", "2", {"first_name": "Bea"})])
        # Patient 1's plan names patient 2's id as a row key: the row is patient 1's.
        connector.execute_batch([upsert(target, connector, "1", "2", {"first_name": "Mallory"})])
        rows = rows_by_key(target, connector)
        assert rows[("clinic-a", "2", "2")]["first_name"] == "Bea"
        assert rows[("clinic-a", "1", "2")]["first_name"] == "Mallory"
    finally:
        connector.close()


def test_two_integrations_never_overwrite_each_other(target):
    skip_unless_applies(target, "two_integrations")
    connector = build(target)
    try:
        connector.execute_batch(
            [
                upsert(
                    target, connector, "1000000", "1000000", {"first_name": "A"}, integration="a"
                ),
                upsert(
                    target, connector, "1000000", "1000000", {"first_name": "B"}, integration="b"
                ),
            ]
        )
        rows = rows_by_key(target, connector)
        assert rows[("a", "1000000", "1000000")]["first_name"] == "A"
        assert rows[("b", "1000000", "1000000")]["first_name"] == "B"
    finally:
        connector.close()


TABLE_INVALID = [
    {"table": "patients", "key": "1", "patient_id": "2", "values": {}},  # other patient
    {"table": "patients\n", "key": "1", "patient_id": "1", "values": {}},  # newline
    {"table": "Patients", "key": "1", "patient_id": "1", "values": {}},
    {"table": "secrets", "key": "1", "patient_id": "1", "values": {}},  # undeclared
    {"table": "patients", "key": "1", "patient_id": "1", "values": {"ssn": "x"}},
    {"table": "patients", "key": "1", "patient_id": "1", "values": {"age": "forty"}},
    {"table": "patients", "key": "1", "patient_id": "1", "values": {"dob": "1/2/3"}},
    {"table": "patients", "key": "1", "patient_id": "1", "values": {"patient_id": "2"}},
    {"table": "patients", "key": "", "patient_id": "1", "values": {}},
    {"table": "patients", "key": "1", "patient_id": "1", "values": {"first_name": "x" * 70000}},
]


def test_bad_arguments_are_refused_before_any_io(target):
    cases = (
        [("upsert_row", args) for args in TABLE_INVALID]
        if target.invalid is None
        else list(target.invalid)
    )
    connector = build(target)
    try:
        for n, (operation, args) in enumerate(cases):
            try:
                connector.validate(operation, args, "1")
            except PlanValidationError as refused:
                message = str(refused)
            else:
                pytest.fail(f"case {n} ({operation}) was accepted")
            assert "mallory" not in message.lower(), n
            assert "forty" not in message, n
        assert connector.requests == 0
    finally:
        connector.close()


def test_unicode_nulls_and_long_values_survive_a_round_trip(target):
    connector = build(target)
    prefix = "Zoë 😀 ñandú "
    room = 5000 if target.max_text_bytes is None else target.max_text_bytes // 2 - 10
    values = {
        "first_name": prefix + "é" * room,
        "age": None,
        "active": True,
        "dob": "1990-02-28",
    }
    try:
        (result,) = connector.execute_batch([upsert(target, connector, "1", "1", values)])
        assert result.error is None
        row = rows_by_key(target, connector)[("clinic-a", "1", "1")]
        assert row["first_name"] == values["first_name"]
        assert row.get("age") is None
        assert row["active"] in (True, "true", 1)
        assert str(row["dob"])[:10] == "1990-02-28"
    finally:
        connector.close()


def test_a_new_declared_column_is_added_by_migration(target):
    if not target.tables:
        pytest.skip(f"{target.name} declares no tables or columns (free-form attributes)")
    narrow = {"patients": {"first_name": "text"}}
    wide = {"patients": {"first_name": "text", "nickname": "text"}}
    first = target.build({"tables": narrow}, None)
    try:
        first.execute_batch([upsert(target, first, "1", "1", {"first_name": "Ann"})])
    finally:
        first.close()
    second = target.build({"tables": wide}, None)
    try:
        (result,) = second.execute_batch(
            [upsert(target, second, "2", "2", {"first_name": "Bo", "nickname": "B"})]
        )
        assert result.error is None
        rows = rows_by_key(target, second)
        assert rows[("clinic-a", "2", "2")]["nickname"] == "B"
        assert rows[("clinic-a", "1", "1")]["first_name"] == "Ann"
    finally:
        second.close()


def test_a_row_the_target_refuses_fails_only_its_own_patient(target):
    skip_unless_applies(target, "row_refused")
    if target.poison is None:
        pytest.skip(f"{target.name} writes a batch all or nothing (no per-row refusal)")
    connector = build(target)
    try:
        writes = [
            upsert(target, connector, p, k, {"first_name": p})
            for p, k in [("1", "1"), ("2", "poison"), ("3", "3")]
        ]
        with target.poison(connector):
            results = connector.execute_batch(writes)
        assert results[0].error is None
        assert results[2].error is None
        assert isinstance(results[1].error, FatalError)
        assert set(rows_by_key(target, connector)) >= {
            ("clinic-a", "1", "1"),
            ("clinic-a", "3", "3"),
        }
    finally:
        connector.close()


@pytest.mark.parametrize(
    ("status", "kind"),
    [(429, RateLimited), (503, UpstreamUnavailable), (401, ConfigurationError)],
)
def test_http_answers_become_the_right_kinds(target, status, kind):
    if target.fault is None:
        pytest.skip(f"{target.name} is not an HTTP target")
    connector = build(target)
    try:
        write = upsert(target, connector, "1", "1", {"first_name": "A"})
        with target.fault(status):
            (result,) = connector.execute_batch([write])
        assert isinstance(result.error, kind)
    finally:
        connector.close()


def test_a_missing_credential_fails_when_the_connector_is_built(target):
    if not target.credential_names:
        pytest.skip(f"{target.name} takes no credentials")
    with pytest.raises(ConfigurationError) as missing:
        target.build(options(target), {})
    assert target.credential_names[0] in str(missing.value)


def test_sync_modes(target):
    for mode in ("update_only", "insert_only", "mirror"):
        if mode not in target.modes:
            with pytest.raises(ConfigurationError):
                build(target, mode=mode)
    if "update_only" in target.modes:
        connector = build(target, mode="update_only")
        try:
            (r,) = connector.execute_batch(
                [upsert(target, connector, "9", "9", {"first_name": "N"})]
            )
            assert r.error is None
            assert not r.changed
            assert ("clinic-a", "9", "9") not in rows_by_key(target, connector)
        finally:
            connector.close()
    if "insert_only" in target.modes:
        connector = build(target, mode="insert_only")
        try:
            connector.execute_batch([upsert(target, connector, "8", "8", {"first_name": "old"})])
            connector.execute_batch([upsert(target, connector, "8", "8", {"first_name": "new"})])
            assert rows_by_key(target, connector)[("clinic-a", "8", "8")]["first_name"] == "old"
        finally:
            connector.close()
    if "mirror" in target.modes:
        connector = build(target, mode="mirror")
        try:
            connector.execute_batch(
                [upsert(target, connector, "7", k, {"first_name": k}) for k in ("7", "a1", "a2")]
            )
            connector.prune(scope("7"), {"patients": {"7", "a1"}})
            assert {k[2] for k in rows_by_key(target, connector) if k[1] == "7"} == {"7", "a1"}
            connector.prune(scope("7"), {})
            assert [k for k in rows_by_key(target, connector) if k[1] == "7"] == []
        finally:
            connector.close()
