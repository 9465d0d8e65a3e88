"""The Google Sheets connector against the local fake (``tests.servers.sheets``): what a chunk
costs, header management and migration, deletions and mirror pruning, quota answers and
pacing, configuration and auth failures, the discovery validator itself, and no patient value
in any error.

Every test ends with the fake's violations checked: a request the connector sends that breaks
the Sheets v4 discovery document fails the test that sent it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from app.core.errors import (
    ConfigurationError,
    PlanValidationError,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)
from app.resilience.guard import Guard
from app.resilience.ratelimit import TokenBucket
from app.resilience.retry import Backoff, RetryPolicy
from connectors.base import Scope, Write
from connectors.sheets import SheetsConnector
from tests.contracts.targets_sheets import read_rows, service_account_json
from tests.servers.sheets import FakeSheets, fresh_spreadsheet, session_fake

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
TABLES = {
    "patients": {"first_name": "text", "age": "integer", "weight": "number", "dob": "date"},
    "appointments": {"starts_at": "timestamp", "kind": "text", "confirmed": "boolean"},
}
SCOPE = ["integration_id", "patient_id", "key", "run_id", "synced_at"]
GET, BATCH = "sheets.spreadsheets.get", "sheets.spreadsheets.batchUpdate"
READ, UPDATE = "sheets.spreadsheets.values.batchGet", "sheets.spreadsheets.values.batchUpdate"
APPEND = "sheets.spreadsheets.values.append"


@pytest.fixture(scope="session")
def fake(request) -> FakeSheets:
    return session_fake(request.config)


@pytest.fixture
def sheet(fake) -> Iterator[str]:
    assert fake.take_violations() == []
    with fresh_spreadsheet(fake) as sid:
        yield sid
    violations = fake.take_violations()
    assert violations == [], "\n".join(violations)


def connect(fake: FakeSheets, sid: str, **options: Any) -> SheetsConnector:
    config = {"spreadsheet_id": sid, "api_endpoint": fake.base_url, "tables": TABLES, **options}
    built = SheetsConnector.from_config(
        "sheet", config, {"service_account_json": service_account_json(fake)}
    )
    assert isinstance(built, SheetsConnector)
    return built


def write(
    connector: SheetsConnector,
    patient: str,
    key: str,
    values: dict,
    table: str = "patients",
    operation: str = "upsert_row",
    run: str = "run-1",
) -> Write:
    args: dict[str, Any] = {"table": table, "key": key, "patient_id": patient}
    if operation == "upsert_row":
        args["values"] = values
    parsed = connector.validate(operation, args, patient)
    return Write(Scope("clinic-a", patient, run, AT), operation, parsed)


def thousand_patients(connector: SheetsConnector, age: int = 40, run: str = "run-1") -> list:
    writes = []
    for p in range(1000):
        patient = f"p{p}"
        writes.append(write(connector, patient, patient, {"first_name": "A", "age": age}, run=run))
        writes += [
            write(connector, patient, f"a{p}-{i}", {"kind": "visit"}, "appointments", run=run)
            for i in range(3)
        ]
    return writes


def counts(fake: FakeSheets, since: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for call in fake.calls[since:]:
        if call != "oauth2.token":
            out[call] = out.get(call, 0) + 1
    return out


# -- batching ------------------------------------------------------------------------------
def test_1000_patients_x_4_rows_cost_15_requests_then_4_then_8(fake, sheet):
    connector = connect(fake, sheet)
    try:
        start = len(fake.calls)
        results = connector.execute_batch(thousand_patients(connector))
        assert [r.error for r in results if r.error] == []
        # 4,000 writes in 4 chunks of 1,000 (both tabs in each): a read and an append per tab
        # per chunk; the headers ride in the first chunk's values.batchUpdate; the tabs are
        # found with one spreadsheets.get and created with one spreadsheets.batchUpdate
        assert counts(fake, start) == {GET: 1, BATCH: 1, READ: 4, UPDATE: 1, APPEND: 8}
        assert connector.requests == connector.api_calls == 15
        assert len(read_rows(connector, "patients")) == 1000
        assert len(read_rows(connector, "appointments")) == 3000

        start = len(fake.calls)
        again = connector.execute_batch(thousand_patients(connector))
        assert [r.changed for r in again] == [False] * 4000  # equal rows are not written
        assert counts(fake, start) == {READ: 4}

        start = len(fake.calls)
        older = connector.execute_batch(thousand_patients(connector, age=41, run="run-2"))
        assert sum(r.changed for r in older) == 1000
        assert counts(fake, start) == {READ: 4, UPDATE: 4}  # every changed row of a chunk at once
        updates = [body for method, body in fake.bodies if method == UPDATE][-4:]
        assert [len(b["data"]) for b in updates] == [250] * 4
        assert all(b["valueInputOption"] == "RAW" for b in updates)
        rows = {r["key"]: r for r in read_rows(connector, "patients")}
        assert (rows["p7"]["age"], rows["p7"]["run_id"]) == (41, "run-2")
        assert len(rows) == 1000
    finally:
        connector.close()


def test_new_rows_of_a_chunk_are_one_append_per_tab_and_bodies_stay_under_2_mb(fake, sheet):
    connector = connect(fake, sheet, tables={"notes": {"body": "text"}})
    try:
        big = "n" * 40_000  # 50 rows of 40,000 characters: 2 MB of JSON, so two appends
        writes = [write(connector, str(p), str(p), {"body": big}, "notes") for p in range(50)]
        start = len(fake.calls)
        assert all(r.error is None for r in connector.execute_batch(writes))
        assert counts(fake, start)[APPEND] == 2
        assert len(read_rows(connector, "notes")) == 50
    finally:
        connector.close()


# -- header management ---------------------------------------------------------------------
def test_a_new_tab_gets_a_frozen_header_of_scope_and_declared_columns(fake, sheet):
    connector = connect(fake, sheet)
    try:
        connector.execute_batch([write(connector, "1", "1", {"first_name": "Ann", "age": 3})])
        tab = fake.tab(sheet, "patients")
        assert tab is not None
        assert tab.cells[0] == [*SCOPE, "first_name", "age", "weight", "dob"]
        assert tab.frozen_rows == 1
        assert tab.cells[1][:3] == ["clinic-a", "1", "1"]
        assert tab.cells[1][4] == AT.isoformat()
        assert fake.tab(sheet, "appointments") is None  # tabs are made when first written
    finally:
        connector.close()


def test_a_newly_declared_column_extends_the_header_in_the_same_write(fake, sheet):
    narrow = connect(fake, sheet, tables={"patients": {"first_name": "text"}})
    try:
        narrow.execute_batch([write(narrow, "1", "1", {"first_name": "Ann"})])
    finally:
        narrow.close()
    wide = connect(fake, sheet, tables={"patients": {"first_name": "text", "visits": "integer"}})
    try:
        start = len(fake.calls)
        (result,) = wide.execute_batch([write(wide, "2", "2", {"first_name": "Bo", "visits": 3})])
        assert result.error is None
        assert counts(fake, start) == {GET: 1, READ: 1, UPDATE: 1, APPEND: 1}
        tab = fake.tab(sheet, "patients")
        assert tab is not None
        assert tab.cells[0] == [*SCOPE, "first_name", "visits"]
        rows = {r["key"]: r for r in read_rows(wide, "patients")}
        assert rows["2"]["visits"] == 3
        assert rows["1"]["visits"] is None
    finally:
        wide.close()


def test_a_header_wider_than_the_grid_adds_columns_first(fake, sheet):
    first = connect(fake, sheet, tables={"wide": {"c0": "text"}})
    try:
        first.execute_batch([write(first, "1", "1", {"c0": "x"}, "wide")])
    finally:
        first.close()
    columns = {f"c{i}": "text" for i in range(30)}  # 5 scope + 30 > the grid's 26 columns
    second = connect(fake, sheet, tables={"wide": columns})
    try:
        start = len(fake.calls)
        (result,) = second.execute_batch([write(second, "2", "2", {"c29": "y"}, "wide")])
        assert result.error is None
        assert counts(fake, start)[BATCH] == 1
        grow = [b for m, b in fake.bodies if m == BATCH][-1]["requests"][0]["appendDimension"]
        assert (grow["dimension"], grow["length"]) == ("COLUMNS", 9)
        assert {r["key"]: r["c29"] for r in read_rows(second, "wide")} == {"1": None, "2": "y"}
    finally:
        second.close()


def test_a_persons_own_column_is_left_alone(fake, sheet):
    connector = connect(fake, sheet, tables={"patients": {"first_name": "text", "age": "integer"}})
    try:
        connector.execute_batch([write(connector, "1", "1", {"first_name": "Ann", "age": 3})])
        tab = fake.tab(sheet, "patients")
        assert tab is not None
        with fake.lock:  # a person inserts a "notes" column between first_name and age
            for line in tab.cells[:2]:
                line.insert(6, "notes" if line is tab.cells[0] else "call back")
        (result,) = connector.execute_batch(
            [write(connector, "1", "1", {"first_name": "Anne", "age": 4})]
        )
        assert result.error is None
        assert tab.cells[1][5:8] == ["Anne", "call back", 4]
        ranges = [d["range"] for d in [b for m, b in fake.bodies if m == UPDATE][-1]["data"]]
        assert ranges == ["'patients'!D2:F2", "'patients'!H2:H2"]  # run_id..first_name, age
    finally:
        connector.close()


def test_a_tab_that_does_not_start_with_the_scope_columns_is_a_configuration_error(fake, sheet):
    connector = connect(fake, sheet)
    try:
        connector.execute_batch([write(connector, "1", "1", {})])
        tab = fake.tab(sheet, "patients")
        assert tab is not None
        with fake.lock:
            tab.cells[0][1], tab.cells[0][2] = "key", "patient_id"
        (result,) = connector.execute_batch([write(connector, "1", "1", {"first_name": "Zed"})])
        assert isinstance(result.error, ConfigurationError)
        assert "patients" in str(result.error)
        assert "Zed" not in str(result.error)
    finally:
        connector.close()


# -- deletions -----------------------------------------------------------------------------
def test_delete_row_and_prune_remove_only_the_patients_rows_bottom_up(fake, sheet):
    connector = connect(fake, sheet, mode="mirror")
    try:
        writes = [write(connector, p, k, {"first_name": k}) for p in "12" for k in "abcd"]
        connector.execute_batch(writes)
        start = len(fake.calls)
        results = connector.execute_batch(
            [write(connector, "1", k, {}, operation="delete_row") for k in ("b", "c", "z")]
            + [write(connector, "2", "d", {}, operation="delete_row")]
        )
        assert [r.changed for r in results] == [True, True, False, True]
        assert counts(fake, start) == {READ: 1, BATCH: 1}
        deletes = [b for m, b in fake.bodies if m == BATCH][-1]["requests"]
        spans = [
            (d["deleteDimension"]["range"]["startIndex"], d["deleteDimension"]["range"]["endIndex"])
            for d in deletes
        ]
        assert spans == [(8, 9), (2, 4)]  # rows 9, then 3-4 in one request: bottom-up
        left = sorted((r["patient_id"], r["key"]) for r in read_rows(connector, "patients"))
        assert left == [("1", "a"), ("1", "d"), ("2", "a"), ("2", "b"), ("2", "c")]
        connector.prune(Scope("clinic-a", "1", "run-2", AT), {"patients": {"a"}})
        left = sorted((r["patient_id"], r["key"]) for r in read_rows(connector, "patients"))
        assert left == [("1", "a"), *[("2", k) for k in "abc"]]
        connector.prune(Scope("clinic-a", "1", "run-3", AT), {})
        assert {r["patient_id"] for r in read_rows(connector, "patients")} == {"2"}
    finally:
        connector.close()


# -- quotas --------------------------------------------------------------------------------
def test_429_with_retry_after_is_retried_by_the_platform_and_throttles_the_bucket(fake, sheet):
    clock = [0.0]
    bucket = TokenBucket(
        1.0, clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s)
    )
    connector = connect(fake, sheet)
    connector.guard = Guard(bucket=bucket)
    waits: list[float] = []
    connector.retry = RetryPolicy(
        max_attempts=3, backoff=Backoff(initial=0.01, jitter=0.0), sleep=waits.append
    )
    try:
        with fake.failing(429, times=1, retry_after="7"):
            (result,) = connector.execute_batch([write(connector, "1", "1", {"first_name": "A"})])
        assert result.error is None
        assert waits == [7.0]  # Retry-After honoured; the library itself did not retry
        assert bucket.throttles == 1  # every user of the credential slows down
        assert [r["first_name"] for r in read_rows(connector, "patients")] == ["A"]
    finally:
        connector.close()


def test_every_request_of_a_chunk_is_paced_by_the_credentials_bucket(fake, sheet):
    clock = [0.0]
    bucket = TokenBucket(
        1.0, clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s)
    )
    connector = connect(fake, sheet)
    connector.guard = Guard(bucket=bucket)
    try:
        writes = [write(connector, "1", "1", {}), write(connector, "1", "v", {}, "appointments")]
        connector.execute_batch(writes)
        # get, addSheet, batchGet, batchUpdate (headers), 2 appends: 6 requests at 1/s
        assert connector.api_calls == 6
        assert clock[0] >= 5 * 1.0
    finally:
        connector.close()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, RateLimited),
        (500, UpstreamUnavailable),
        (503, UpstreamUnavailable),
        (403, ConfigurationError),
        (401, ConfigurationError),
    ],
)
def test_statuses_map_to_engine_errors_with_one_request_per_attempt(fake, sheet, status, kind):
    connector = connect(fake, sheet)
    connector.retry = RetryPolicy(
        max_attempts=2, backoff=Backoff(initial=0.0), sleep=lambda s: None
    )
    try:
        start = len(fake.calls)
        with fake.failing(status):
            (result,) = connector.execute_batch([write(connector, "1", "1", {})])
        assert isinstance(result.error, kind)
        assert f"HTTP {status}" in str(result.error)
        expected = 2 if kind is not ConfigurationError else 1  # no library retries
        assert sum(counts(fake, start).values()) == expected
    finally:
        connector.close()


# -- configuration and auth ----------------------------------------------------------------
def test_a_missing_spreadsheet_is_a_configuration_error(fake, sheet):
    connector = connect(fake, "1" + "x" * 43)
    try:
        (result,) = connector.execute_batch([write(connector, "1", "1", {})])
        assert isinstance(result.error, ConfigurationError)
        assert "not shared with the service account" in str(result.error)
    finally:
        connector.close()


def test_a_refused_token_request_is_a_configuration_error_and_sends_nothing(fake, sheet):
    connector = connect(fake, sheet)
    try:
        start = len(fake.calls)
        with fake.token_refused():
            (result,) = connector.execute_batch([write(connector, "1", "1", {})])
        assert isinstance(result.error, ConfigurationError)
        assert "token" in str(result.error)
        assert counts(fake, start) == {}
    finally:
        connector.close()


@pytest.mark.parametrize("secret", ["not json", json.dumps({"type": "authorized_user"})])
def test_a_malformed_key_fails_when_the_connector_is_built(secret):
    with pytest.raises(ConfigurationError) as refused:
        SheetsConnector.from_config(
            "sheet", {"spreadsheet_id": "1" * 44}, {"service_account_json": secret}
        )
    assert "service_account_json" in str(refused.value)
    assert secret not in str(refused.value)


def test_text_longer_than_a_cell_holds_is_refused_before_any_io(fake, sheet):
    connector = connect(fake, sheet)
    try:
        with pytest.raises(PlanValidationError) as refused:
            write(connector, "1", "1", {"first_name": "y" * 50_001})
        assert "50000" in str(refused.value)
        assert connector.api_calls == 0
    finally:
        connector.close()


def test_two_threads_on_one_connector_never_lose_or_duplicate_rows(fake, sheet):
    connector = connect(fake, sheet)
    try:
        batches = [[write(connector, f"{t}-{p}", f"{t}-{p}", {}) for p in range(20)] for t in "ab"]
        threads = [threading.Thread(target=connector.execute_batch, args=(b,)) for b in batches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        keys = [r["key"] for r in read_rows(connector, "patients")]
        assert sorted(keys) == sorted(f"{t}-{p}" for t in "ab" for p in range(20))
    finally:
        connector.close()


# -- PHI -----------------------------------------------------------------------------------
def test_no_row_value_appears_in_any_error_message(fake, sheet):
    connector = connect(fake, sheet)
    try:
        writes = [
            write(connector, "1", "1", {"first_name": "Alice-1"}),
            write(connector, "2", "poison", {"first_name": "Mallory-Secret"}),
        ]
        with fake.poisoned():
            results = connector.execute_batch(writes)
        assert results[0].error is None
        error = results[1].error
        assert isinstance(error, TargetRejected)
        # Google's message quoted the row (the fake's does too); the engine error does not
        assert "Mallory-Secret" in str(error.__cause__)
        assert "Mallory-Secret" not in str(error)
        assert "INVALID_ARGUMENT" in str(error)
        for result in results:
            assert "Alice-1" not in str(result.error or "")
    finally:
        connector.close()


# -- the discovery check itself ------------------------------------------------------------
def test_the_validator_rejects_an_unknown_field_and_a_wrong_type(fake):
    check = fake.discovery.check_body
    good = {"valueInputOption": "RAW", "data": [{"range": "'t'!A1", "values": [["a", 1]]}]}
    assert check("BatchUpdateValuesRequest", good) == []
    wrong = {"valueInputOptions": "RAW", "data": []}
    assert any(
        "unknown field 'valueInputOptions'" in p for p in check("BatchUpdateValuesRequest", wrong)
    )
    assert any(
        "enum" in p for p in check("BatchUpdateValuesRequest", {"valueInputOption": "RAWISH"})
    )
    sheet = {
        "requests": [
            {"addSheet": {"properties": {"title": "t", "gridProperties": {"rowCount": "x"}}}}
        ]
    }
    assert any("expected an integer" in p for p in check("BatchUpdateSpreadsheetRequest", sheet))
    nested = {"requests": [{"deleteDimension": {"range": {"sheetID": 1}}}]}
    assert any(
        "unknown field 'sheetID'" in p for p in check("BatchUpdateSpreadsheetRequest", nested)
    )


def test_a_request_with_a_wrong_field_name_is_refused_and_recorded(fake, sheet):
    connector = connect(fake, sheet)
    try:
        connector.execute_batch([write(connector, "1", "1", {})])  # a token and a tab
        bad = {"valueInputOption": "RAW", "data": [{"range": "'patients'!F2", "value": [["x"]]}]}
        with pytest.raises(TargetRejected):
            connector._call(
                "probe",
                lambda: connector.values_api.batchUpdate(spreadsheetId=sheet, body=bad),
            )
        recorded = fake.take_violations()
        assert any("unknown field 'value'" in v for v in recorded), recorded
    finally:
        connector.close()


def test_routes_and_parameters_are_checked_against_the_document(fake, sheet):
    base = f"{fake.base_url}/v4/spreadsheets/{sheet}"
    assert requests.get(f"{base}/nowhere", timeout=10).status_code == 400
    wrong = requests.get(f"{base}/values:batchGet", params={"range": "A1"}, timeout=10)
    assert wrong.status_code == 400
    bad_enum = requests.get(
        f"{base}/values:batchGet", params={"ranges": "A1", "majorDimension": "DIAGONAL"}, timeout=10
    )
    assert bad_enum.status_code == 400
    recorded = fake.take_violations()
    assert any("no method of the discovery document" in v for v in recorded)
    assert any(
        "'range' is not declared by sheets.spreadsheets.values.batchGet" in v for v in recorded
    )
    assert any("enum" in v for v in recorded)
    found = fake.discovery.match("POST", f"/v4/spreadsheets/{sheet}/values/%27t%27%21A1:append")
    assert found is not None
    assert found[0].id == APPEND
    assert found[1] == {"spreadsheetId": sheet, "range": "'t'!A1"}
