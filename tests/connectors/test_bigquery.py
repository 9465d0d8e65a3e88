"""The BigQuery connector against the local fake (``tests.servers.bigquery``): what a chunk
costs, schema migration, configuration and auth failures, the platform's retry on 429, the
discovery validator itself, and no patient value in any error.

Every test ends with the fake's violations checked: a request the connector sends that breaks
BigQuery's discovery document fails the test that sent it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from app.core.errors import ConfigurationError, RateLimited, TargetRejected, UpstreamUnavailable
from app.resilience.retry import Backoff, RetryPolicy
from connectors.base import Scope, Write
from connectors.bigquery import BigQueryConnector
from tests.contracts.targets_bigquery import read_rows, service_account_json
from tests.servers.bigquery import PROJECT, FakeBigQuery, fresh_dataset, session_fake

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
TABLES = {
    "patients": {"first_name": "text", "age": "integer", "weight": "number", "dob": "date"},
    "appointments": {"starts_at": "timestamp", "kind": "text", "confirmed": "boolean"},
}


@pytest.fixture(scope="session")
def fake(request) -> FakeBigQuery:
    return session_fake(request.config)


@pytest.fixture
def dataset(fake) -> Iterator[str]:
    assert fake.take_violations() == []
    with fresh_dataset(fake) as name:
        yield name
    violations = fake.take_violations()
    assert violations == [], "\n".join(violations)


def connect(fake: FakeBigQuery, dataset: str, **options: Any) -> BigQueryConnector:
    config = {
        "project": PROJECT,
        "dataset": dataset,
        "api_endpoint": fake.base_url,
        "tables": TABLES,
        **options,
    }
    built = BigQueryConnector.from_config(
        "warehouse", config, {"service_account_json": service_account_json(fake)}
    )
    assert isinstance(built, BigQueryConnector)
    return built


def write(
    connector: BigQueryConnector,
    patient: str,
    key: str,
    values: dict,
    table: str = "patients",
    operation: str = "upsert_row",
) -> Write:
    args: dict[str, Any] = {"table": table, "key": key, "patient_id": patient}
    if operation == "upsert_row":
        args["values"] = values
    parsed = connector.validate(operation, args, patient)
    return Write(Scope("clinic-a", patient, "run-1", AT), operation, parsed)


def test_a_chunk_is_one_merge_and_1000_patients_x_4_rows_cost_21_requests(fake, dataset):
    connector = connect(fake, dataset)
    try:
        writes = []
        for p in range(1000):
            patient = f"p{p}"
            writes.append(write(connector, patient, patient, {"first_name": "A", "age": p}))
            writes += [
                write(connector, patient, f"a{p}-{i}", {"kind": "visit"}, table="appointments")
                for i in range(3)
            ]
        before = fake.count("bigquery.jobs.query")
        results = connector.execute_batch(writes)
        assert [r.error for r in results if r.error] == []
        # 4,000 writes in 8 chunks of 500; each chunk holds both tables: one MERGE per table
        assert fake.count("bigquery.jobs.query") - before == 16
        # + datasets.get once, tables.get and tables.insert once per table
        assert connector.requests == connector.api_calls == 16 + 1 + 2 + 2
        assert len(read_rows(connector, "patients")) == 1000
        assert len(read_rows(connector, "appointments")) == 3000
    finally:
        connector.close()


def test_1000_rows_of_one_table_are_two_jobs_query_requests(fake, dataset):
    connector = connect(fake, dataset)
    try:
        connector.execute_batch([write(connector, "1", "1", {})])  # the table exists now
        before = fake.count("bigquery.jobs.query")
        writes = [write(connector, str(p), str(p), {"first_name": "N"}) for p in range(1000)]
        assert all(r.error is None for r in connector.execute_batch(writes))
        assert fake.count("bigquery.jobs.query") - before == 2
    finally:
        connector.close()


def test_the_table_is_created_with_scope_columns_and_clustered_on_patient(fake, dataset):
    connector = connect(fake, dataset)
    try:
        connector.execute_batch([write(connector, "1", "1", {"first_name": "A"})])
        table = fake.table(PROJECT, dataset, "patients")
        assert table is not None
        assert table.clustering == ["patient_id"]
        modes = {f["name"]: (f["type"], f["mode"]) for f in table.fields}
        assert modes["key"] == ("STRING", "REQUIRED")
        assert modes["synced_at"] == ("TIMESTAMP", "REQUIRED")
        assert modes["weight"] == ("FLOAT", "NULLABLE")
    finally:
        connector.close()


def test_a_new_declared_column_patches_the_schema(fake, dataset):
    narrow = connect(fake, dataset, tables={"patients": {"first_name": "text"}})
    try:
        narrow.execute_batch([write(narrow, "1", "1", {"first_name": "Ann"})])
    finally:
        narrow.close()
    wide = connect(fake, dataset, tables={"patients": {"first_name": "text", "visits": "integer"}})
    try:
        before = fake.count("bigquery.tables.patch")
        (result,) = wide.execute_batch([write(wide, "2", "2", {"first_name": "Bo", "visits": 3})])
        assert result.error is None
        assert fake.count("bigquery.tables.patch") - before == 1
        table = fake.table(PROJECT, dataset, "patients")
        assert table is not None
        assert {"name": "visits", "type": "INTEGER", "mode": "NULLABLE"} in table.fields
        rows = {r["key"]: r for r in read_rows(wide, "patients")}
        assert rows["2"]["visits"] == 3
        assert rows["1"]["visits"] is None
        # cached: the next chunk sends no metadata request
        before_get = fake.count("bigquery.tables.get")
        wide.execute_batch([write(wide, "3", "3", {"visits": 1})])
        assert fake.count("bigquery.tables.get") == before_get
    finally:
        wide.close()


def test_typed_values_round_trip(fake, dataset):
    connector = connect(fake, dataset)
    try:
        connector.execute_batch(
            [
                write(connector, "1", "1", {"weight": 71.25, "age": 40, "dob": "1990-02-28"}),
                write(
                    connector,
                    "1",
                    "a1",
                    {"starts_at": "2026-01-02T03:04:05+02:00", "confirmed": False},
                    table="appointments",
                ),
            ]
        )
        (patient,) = read_rows(connector, "patients")
        assert (patient["weight"], patient["age"], str(patient["dob"])) == (71.25, 40, "1990-02-28")
        (visit,) = read_rows(connector, "appointments")
        assert visit["starts_at"] == datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)
        assert visit["confirmed"] is False
        assert visit["synced_at"] == AT
    finally:
        connector.close()


def test_delete_row_removes_only_the_patients_row(fake, dataset):
    connector = connect(fake, dataset)
    try:
        connector.execute_batch([write(connector, "1", "x", {}), write(connector, "2", "x", {})])
        (gone,) = connector.execute_batch([write(connector, "1", "x", {}, operation="delete_row")])
        assert gone.error is None
        assert gone.changed
        assert [(r["patient_id"], r["key"]) for r in read_rows(connector, "patients")] == [
            ("2", "x")
        ]
        (again,) = connector.execute_batch([write(connector, "1", "x", {}, operation="delete_row")])
        assert again.error is None
        assert not again.changed
        (absent,) = connector.execute_batch(
            [write(connector, "1", "y", {}, table="appointments", operation="delete_row")]
        )
        assert absent.error is None
        assert not absent.changed  # no table, nothing to delete
        assert fake.table(PROJECT, dataset, "appointments") is None
    finally:
        connector.close()


def test_a_missing_dataset_is_a_configuration_error(fake, dataset):
    connector = connect(fake, dataset + "_missing")
    try:
        (result,) = connector.execute_batch([write(connector, "1", "1", {"first_name": "A"})])
        assert isinstance(result.error, ConfigurationError)
        assert "not found" in str(result.error)
    finally:
        connector.close()


def test_a_dataset_in_another_location_is_a_configuration_error(fake, dataset):
    connector = connect(fake, dataset, location="EU")
    try:
        (result,) = connector.execute_batch([write(connector, "1", "1", {})])
        assert isinstance(result.error, ConfigurationError)
        assert "EU" in str(result.error)
    finally:
        connector.close()


def test_a_refused_token_request_is_a_configuration_error(fake, dataset):
    connector = connect(fake, dataset)
    try:
        before = fake.count("bigquery.datasets.get")
        with fake.token_refused(401):
            (result,) = connector.execute_batch([write(connector, "1", "1", {})])
        assert isinstance(result.error, ConfigurationError)
        assert "token" in str(result.error)
        assert fake.count("bigquery.datasets.get") == before  # no request went out without one
    finally:
        connector.close()


@pytest.mark.parametrize(
    "secret", ["not json", json.dumps({"type": "authorized_user"}), json.dumps({"type": "x"})]
)
def test_a_malformed_key_fails_when_the_connector_is_built(fake, secret):
    with pytest.raises(ConfigurationError) as refused:
        BigQueryConnector.from_config(
            "warehouse",
            {"project": PROJECT, "dataset": "d", "tables": TABLES},
            {"service_account_json": secret},
        )
    assert "service_account_json" in str(refused.value)
    assert secret not in str(refused.value)


def test_429_with_retry_after_is_retried_by_the_platform_then_succeeds(fake, dataset):
    connector = connect(fake, dataset)
    waits: list[float] = []
    connector.retry = RetryPolicy(
        max_attempts=3, backoff=Backoff(initial=0.01, jitter=0.0), sleep=waits.append
    )
    try:
        with fake.failing(429, times=1, retry_after="7"):
            (result,) = connector.execute_batch([write(connector, "1", "1", {"first_name": "A"})])
        assert result.error is None
        assert waits == [7.0]  # Retry-After honoured; the library itself did not retry
        assert [r["first_name"] for r in read_rows(connector, "patients")] == ["A"]
    finally:
        connector.close()


@pytest.mark.parametrize(
    ("status", "reason", "kind"),
    [
        (429, None, RateLimited),
        (500, None, UpstreamUnavailable),
        (503, None, UpstreamUnavailable),
        (403, None, ConfigurationError),  # accessDenied
        (403, "rateLimitExceeded", RateLimited),  # BigQuery's documented rate-limit answer
        (403, "quotaExceeded", RateLimited),
    ],
)
def test_statuses_map_to_engine_errors_with_one_request_per_attempt(
    fake, dataset, status, reason, kind
):
    connector = connect(fake, dataset)
    connector.retry = RetryPolicy(
        max_attempts=2, backoff=Backoff(initial=0.0), sleep=lambda s: None
    )
    try:
        before = len(fake.calls)
        with fake.failing(status, reason=reason):
            (result,) = connector.execute_batch([write(connector, "1", "1", {})])
        assert isinstance(result.error, kind)
        api = [c for c in fake.calls[before:] if c.startswith("bigquery.")]
        assert len(api) == (2 if kind is not ConfigurationError else 1)  # no library retries
    finally:
        connector.close()


def test_an_unreachable_endpoint_is_upstream_unavailable(fake, dataset):
    connector = connect(fake, dataset, api_endpoint="http://127.0.0.1:9")
    connector.retry = RetryPolicy(max_attempts=1)
    try:  # the token still comes from the fake; nothing listens on the API endpoint
        (result,) = connector.execute_batch([write(connector, "1", "1", {})])
        assert isinstance(result.error, UpstreamUnavailable)
    finally:
        connector.close()


def test_no_row_value_appears_in_any_error_message(fake, dataset):
    connector = connect(fake, dataset)
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
        # BigQuery's message quoted the row (the fake's does too); the engine error does not
        assert "Mallory-Secret" in str(error.__cause__)
        assert "Mallory-Secret" not in str(error)
        assert "invalidQuery" in str(error)
        for result in results:
            assert "Alice-1" not in str(result.error or "")
    finally:
        connector.close()


# -- the discovery validator itself -------------------------------------------------------
def test_the_validator_rejects_an_unknown_field_and_a_wrong_type(fake):
    check = fake.discovery.check_body
    assert check("QueryRequest", {"query": "SELECT 1", "useLegacySql": False}) == []
    assert any("unknown field 'bogus'" in p for p in check("QueryRequest", {"bogus": 1}))
    assert any("expected a boolean" in p for p in check("QueryRequest", {"useLegacySql": "no"}))
    nested = {"queryParameters": [{"parameterValue": {"value": 1.5}}]}
    assert any("expected a string" in p for p in check("QueryRequest", nested))
    assert any("int64" in p for p in check("QueryRequest", {"maximumBytesBilled": "lots"}))
    assert any("enum" in p for p in check("QueryRequest", {"jobCreationMode": "SOMETIMES"}))
    table = {"schema": {"fields": [{"name": "a", "mode": "NULLABLE", "tpye": "STRING"}]}}
    assert any("unknown field 'tpye'" in p for p in check("Table", table))
    # answers too: the fake's own responses go through the same check
    assert any("expected a boolean" in p for p in check("QueryResponse", {"jobComplete": "y"}))
    assert any("int64" in p for p in check("QueryResponse", {"numDmlAffectedRows": "1.5"}))


def test_routes_match_the_documents_path_templates(fake):
    match = fake.discovery.match
    found = match("POST", f"/bigquery/v2/projects/{PROJECT}/queries")
    assert found is not None
    assert found[0].id == "bigquery.jobs.query"
    assert found[1] == {"projectId": PROJECT}
    table = match("PATCH", f"/bigquery/v2/projects/{PROJECT}/datasets/d/tables/t")
    assert table is not None
    assert table[0].id == "bigquery.tables.patch"
    assert match("GET", f"/bigquery/v2/projects/{PROJECT}/datasets/d/tables/t/extra") is None
    assert match("PUT", f"/bigquery/v2/projects/{PROJECT}/queries") is None


def test_the_fake_answers_400_and_records_a_nonconforming_request(fake, dataset):
    url = f"{fake.base_url}/bigquery/v2/projects/{PROJECT}/queries"
    bad = requests.post(url, json={"query": "SELECT 1", "useLegacySQL": False}, timeout=10)
    assert bad.status_code == 400
    unknown = requests.get(f"{fake.base_url}/bigquery/v2/nowhere", timeout=10)
    assert unknown.status_code == 400
    wrong_param = requests.get(
        f"{fake.base_url}/bigquery/v2/projects/{PROJECT}/datasets/{dataset}",
        params={"maxResults": "3"},
        timeout=10,
    )
    assert wrong_param.status_code == 400
    recorded = fake.take_violations()
    assert any("unknown field 'useLegacySQL'" in v for v in recorded)
    assert any("no method of the discovery document" in v for v in recorded)
    assert any("'maxResults' is not declared by bigquery.datasets.get" in v for v in recorded)


def test_the_fake_refuses_statements_the_connector_does_not_write(fake, dataset):
    connector = connect(fake, dataset)
    try:
        connector.execute_batch([write(connector, "1", "1", {})])  # a token and a table
        with pytest.raises(TargetRejected):
            connector._dml("probe", "patients", f"SELECT * FROM `{PROJECT}.{dataset}.x`", [])
    finally:
        connector.close()
