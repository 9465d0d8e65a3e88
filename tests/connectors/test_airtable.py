"""The Airtable connector against the local mock (``tests.servers.airtable``; Airtable publishes
no machine-readable contract, so the mock follows its documented answers): 10 records per
request, pacing at 5 requests/s per base (on a fake clock), 429 -> RateLimited with Airtable's
30 s, retries only through the platform, deletes by looked-up record id, schema creation and
migration through the metadata API, and no patient value in any error.

Every test ends with the mock's violations checked: a request Airtable would refuse as
malformed (a wrong field name, more than 10 records, an unknown formula shape) fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from app.core.errors import ConfigurationError, RateLimited, TargetRejected
from app.resilience.guard import Guard
from app.resilience.ratelimit import TokenBucket
from app.resilience.retry import Backoff, RetryPolicy
from connectors.airtable import AirtableConnector
from connectors.base import Scope, Write
from tests.contracts.targets_airtable import read_rows
from tests.servers.airtable import MockAirtable, parse_formula, session_mock

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
TABLES = {
    "patients": {"first_name": "text", "age": "integer", "active": "boolean"},
    "appointments": {"starts_at": "timestamp", "kind": "text"},
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def mock(request) -> MockAirtable:
    return session_mock(request.config)


@pytest.fixture
def base(mock) -> Iterator[str]:
    assert mock.take_violations() == []
    name = mock.add_base()
    yield name
    violations = mock.take_violations()
    assert violations == [], "\n".join(violations)


def connect(
    mock: MockAirtable, base: str, bucket: TokenBucket | None = None, **options: Any
) -> AirtableConnector:
    config = {"base_id": base, "api_url": mock.base_url, "tables": TABLES, **options}
    built = AirtableConnector.from_config(
        "crm",
        config,
        {"token": mock.token},
        guard=Guard(bucket=bucket or TokenBucket(10_000)),  # fast unless a test paces
    )
    assert isinstance(built, AirtableConnector)
    return built


def write(
    connector: AirtableConnector,
    patient: str,
    key: str,
    values: dict | None = None,
    table: str = "patients",
    operation: str = "upsert_row",
) -> Write:
    args: dict[str, Any] = {"table": table, "key": key, "patient_id": patient}
    if operation == "upsert_row":
        args["values"] = values or {}
    parsed = connector.validate(operation, args, patient)
    return Write(Scope("clinic-a", patient, "run-1", AT), operation, parsed)


def patients_x4(connector: AirtableConnector, n: int) -> list[Write]:
    out = []
    for p in range(n):
        out.append(write(connector, f"p{p}", f"p{p}", {"first_name": "A", "age": p}))
        out += [
            write(connector, f"p{p}", f"a{p}-{i}", {"kind": "visit"}, table="appointments")
            for i in range(3)
        ]
    return out


def test_1000_patients_x_4_rows_cost_403_requests_of_at_most_10_records(mock, base):
    connector = connect(mock, base)
    try:
        results = connector.execute_batch(patients_x4(connector, 1000))
        assert [r.error for r in results if r.error] == []
        upserts = [c for c in mock.calls if c[2] == base and c[1] == "records.update"]
        # grouped by table: 1,000 rows -> 100 requests, 3,000 -> 300; every one full
        assert len(upserts) == 400
        assert {c[3] for c in upserts} == {10}
        # + the base schema once and one create-table per table
        assert connector.api_calls == 403
        assert mock.count("meta.create_table") >= 2
        assert len(read_rows(mock, connector, "patients")) == 1000
        assert len(read_rows(mock, connector, "appointments")) == 3000
    finally:
        connector.close()


def test_requests_are_paced_at_5_per_second_on_a_fake_clock(mock, base):
    clock = FakeClock()
    bucket = TokenBucket(5.0, clock=clock, sleep=clock.sleep)
    connector = connect(mock, base, bucket=bucket)
    sent: list[float] = []
    connector._count = lambda: sent.append(clock.now)  # type: ignore[method-assign]
    try:
        writes = [write(connector, str(p), str(p), {"first_name": "N"}) for p in range(200)]
        assert all(r.error is None for r in connector.execute_batch(writes))
        assert len(sent) == 22  # schema + create table + 20 upserts of 10
        # no 1-second window of the fake clock holds more than 5 requests
        busiest = max(sum(1 for t in sent if s <= t < s + 1.0) for s in sent)
        assert busiest <= 5
        # and pacing costs little: 22 requests in about 22 / 5 s (the window is 1.1 s)
        assert 3.8 <= sent[-1] - sent[0] <= 5.2
    finally:
        connector.close()


def test_429_is_rate_limited_with_airtables_30_seconds_and_sent_once(mock, base):
    clock = FakeClock()
    bucket = TokenBucket(5.0, clock=clock, sleep=clock.sleep)
    connector = connect(mock, base, bucket=bucket)
    try:
        before = len(mock.calls)
        with mock.failing(429, times=1):
            (result,) = connector.execute_batch([write(connector, "1", "1", {"age": 1})])
        assert isinstance(result.error, RateLimited)
        assert result.error.retry_after == 30.0
        assert "RATE_LIMIT" not in str(result.error) or "HTTP 429" in str(result.error)
        assert len(mock.calls) - before == 1  # pyairtable did not retry it
        assert bucket.throttles == 1  # every caller of the base waits it out
        start = clock.now
        (again,) = connector.execute_batch([write(connector, "1", "1", {"age": 1})])
        assert again.error is None
        assert clock.now - start >= 30.0  # nothing was sent before the 30 s had passed
    finally:
        connector.close()


def test_a_policy_that_may_wait_30_s_retries_the_429_through_the_platform(mock, base):
    clock = FakeClock()
    connector = connect(mock, base, bucket=TokenBucket(5.0, clock=clock, sleep=clock.sleep))
    waits: list[float] = []
    connector.retry = RetryPolicy(
        max_attempts=3, backoff=Backoff(initial=0.01, jitter=0.0), max_wait=60, sleep=waits.append
    )
    try:
        before = len(mock.calls)
        with mock.failing(429, times=1):
            (result,) = connector.execute_batch([write(connector, "1", "1", {"first_name": "A"})])
        assert result.error is None
        assert waits == [30.0]
        assert len(mock.calls) - before == 4  # 429, then schema, create table, upsert
    finally:
        connector.close()


def test_pyairtables_own_retry_is_off(mock, base):
    connector = connect(mock, base)
    try:
        adapter = connector.api.session.get_adapter("http://x")
        assert adapter.max_retries.total == 0
        with mock.failing(503):
            connector.retry = RetryPolicy(max_attempts=1)
            before = len(mock.calls)
            (result,) = connector.execute_batch([write(connector, "1", "1")])
        assert len(mock.calls) - before == 1
        assert result.error is not None
    finally:
        connector.close()


def test_records_carry_the_scope_fields_and_typed_values(mock, base):
    connector = connect(mock, base, table_names={"appointments": "Appointments"})
    try:
        connector.execute_batch(
            [
                write(connector, "1", "1", {"first_name": "Ann", "age": 40, "active": False}),
                write(
                    connector,
                    "1",
                    "a1",
                    {"starts_at": "2026-01-02T03:04:05+02:00"},
                    table="appointments",
                ),
            ]
        )
        (patient,) = read_rows(mock, connector, "patients")
        assert patient["integration_id"] == "clinic-a"
        assert patient["patient_id"] == "1"
        assert (patient["first_name"], patient["age"]) == ("Ann", 40)
        assert patient["active"] is None  # Airtable leaves a false checkbox out
        assert patient["synced_at"] == "2026-12-01T09:30:00.000Z"
        assert mock.table(base, "Appointments") is not None
        (visit,) = read_rows(mock, connector, "appointments")
        assert visit["starts_at"] == "2026-01-02T01:04:05.000Z"
        table = mock.table(base, "patients")
        assert table is not None
        assert table.fields[0]["name"] == "key"  # the primary field
    finally:
        connector.close()


def test_a_wrong_field_name_is_refused_and_recorded(mock, base):
    connector = connect(mock, base)
    try:
        connector.execute_batch([write(connector, "1", "1")])  # the table exists now
        table = connector._existing("patients")
        assert table is not None
        for fields, merge in [
            ({"integration_id": "a", "patient_id": "1", "Key": "1"}, ["integration_id", "Key"]),
            ({"integration_id": "a", "patient_id": "1", "key": "1", "Age": 3}, ["key"]),
        ]:
            with pytest.raises(requests.HTTPError) as refused:
                table.batch_upsert([{"fields": fields}], key_fields=merge)
            answer = refused.value.response
            assert answer is not None
            assert answer.status_code == 422
            assert answer.json()["error"]["type"] == "UNKNOWN_FIELD_NAME"
        too_many = [{"fields": {"key": str(i)}} for i in range(11)]
        with pytest.raises(requests.HTTPError):
            connector.api.request("POST", table.urls.records, json={"records": too_many})
        recorded = mock.take_violations()
        assert any("Unknown field name" in v for v in recorded)
        assert any("at most 10 records" in v for v in recorded)
    finally:
        connector.close()


def test_deletes_look_up_record_ids_and_remove_only_the_patients_rows(mock, base):
    connector = connect(mock, base)
    try:
        keys = [f"k{i}" for i in range(12)]
        connector.execute_batch(
            [write(connector, "1", k) for k in keys] + [write(connector, "2", "k0")]
        )
        before = len(mock.calls)
        results = connector.execute_batch(
            [write(connector, "1", k, operation="delete_row") for k in keys]
        )
        assert all(r.error is None and r.changed for r in results)
        calls = [c[1:4:2] for c in mock.calls[before:]]
        assert calls == [("records.list", 0), ("records.delete", 10)] + [
            ("records.list", 0),
            ("records.delete", 2),
        ]
        assert [(r["patient_id"], r["key"]) for r in read_rows(mock, connector, "patients")] == [
            ("2", "k0")
        ]
        (again,) = connector.execute_batch([write(connector, "1", "k0", operation="delete_row")])
        assert again.error is None
        assert not again.changed
    finally:
        connector.close()


def test_mirror_prune_deletes_10_per_request_and_keeps_other_patients(mock, base):
    connector = connect(mock, base, mode="mirror")
    try:
        connector.execute_batch(
            [write(connector, "7", f"k{i}") for i in range(25)] + [write(connector, "8", "k1")]
        )
        before = len(mock.calls)
        connector.prune(Scope("clinic-a", "7", "run-2", AT), {"patients": {"k0", "k1"}})
        deletes = [c[3] for c in mock.calls[before:] if c[1] == "records.delete"]
        assert deletes == [10, 10, 3]
        left = {(r["patient_id"], r["key"]) for r in read_rows(mock, connector, "patients")}
        assert left == {("7", "k0"), ("7", "k1"), ("8", "k1")}
    finally:
        connector.close()


def test_a_new_declared_column_is_created_through_the_metadata_api(mock, base):
    narrow = connect(mock, base, tables={"patients": {"first_name": "text"}})
    try:
        narrow.execute_batch([write(narrow, "1", "1", {"first_name": "Ann"})])
    finally:
        narrow.close()
    wide = connect(mock, base, tables={"patients": {"first_name": "text", "visits": "integer"}})
    try:
        before = mock.count("meta.create_field")
        (result,) = wide.execute_batch([write(wide, "2", "2", {"visits": 3})])
        assert result.error is None
        assert mock.count("meta.create_field") - before == 1
        table = mock.table(base, "patients")
        assert table is not None
        assert table.types()["visits"] == "number"
        assert {r["key"]: r["visits"] for r in read_rows(mock, wide, "patients")} == {
            "1": None,
            "2": 3,
        }
    finally:
        wide.close()


def test_a_table_without_the_scope_fields_is_a_configuration_error(mock, base):
    connector = connect(mock, base)
    try:
        connector.api.post(
            connector.api.build_url("meta/bases", base, "tables"),
            json={"name": "patients", "fields": [{"name": "Name", "type": "singleLineText"}]},
        )
        (result,) = connector.execute_batch([write(connector, "1", "1")])
        assert isinstance(result.error, ConfigurationError)
        assert "scope fields" in str(result.error)
    finally:
        connector.close()


@pytest.mark.parametrize(
    "options",
    [
        {"base_id": "not-a-base"},
        {"table_names": {"patients": " padded "}},
        {"max_value_bytes": 10**6},  # over Airtable's 100,000-character long text
    ],
)
def test_bad_options_fail_when_the_connector_is_built(mock, options):
    config = {"base_id": "app" + "a" * 14, "tables": TABLES, **options}
    with pytest.raises(ConfigurationError):
        AirtableConnector.from_config("crm", config, {"token": "pat"})


def test_no_patient_value_appears_in_any_error_message(mock, base):
    connector = connect(mock, base)
    try:
        writes = [
            write(connector, "1", "1", {"first_name": "Alice-1"}),
            write(connector, "2", "poison", {"first_name": "Mallory-Secret"}),
        ]
        with mock.poisoned():
            results = connector.execute_batch(writes)
        assert results[0].error is None
        error = results[1].error
        assert isinstance(error, TargetRejected)
        # Airtable's message quoted the record (the mock's does too); the engine error does not
        assert "Mallory-Secret" in str(error.__cause__)
        assert "Mallory-Secret" not in str(error)
        assert "INVALID_VALUE_FOR_COLUMN" in str(error)
        assert "Alice-1" not in str(results[0].error or "")
    finally:
        connector.close()


# -- the mock itself ------------------------------------------------------------------------
def test_the_formula_grammar_is_strict(mock, base):
    assert parse_formula("AND({a}='x', {b}='y\\'s')") == (
        "AND",
        [("EQ", "a", "x"), ("EQ", "b", "y's")],
    )
    for bad in ("{a}!='x'", "SEARCH('x', {a})", "AND({a}='x'", "{a}=1", "AND({a}='x') junk"):
        with pytest.raises(ValueError, match="formula|expected|shape"):
            parse_formula(bad)
    connector = connect(mock, base)
    try:
        connector.execute_batch([write(connector, "1", "1")])
        table = connector._existing("patients")
        assert table is not None
        with pytest.raises(requests.HTTPError) as refused:
            table.all(formula="FIND('1', {key})")
        answer = refused.value.response
        assert answer is not None
        assert answer.json()["error"]["type"] == "INVALID_FILTER_BY_FORMULA"
        assert any("formula" in v for v in mock.take_violations())
    finally:
        connector.close()


def test_the_mock_refuses_a_wrong_token(mock, base):
    connector = AirtableConnector.from_config(
        "crm", {"base_id": base, "api_url": mock.base_url}, {"token": "patWRONG"}
    )
    try:
        (result,) = connector.execute_batch([write(connector, "1", "1")])  # type: ignore[arg-type]
        assert isinstance(result.error, ConfigurationError)
        assert "401" in str(result.error)
    finally:
        connector.close()
