"""What the MongoDB connector does beyond the contract suite: the commands a chunk costs (one
digest read and at most one unordered bulk_write per collection, the identity index created
once), per-write mapping of a BulkWriteError (no bisection, no value in any error), documents
keyed by the scope, BSON types, driver failures as the engine's kinds, and a real server when
``HEALTHIE_SYNC_TEST_MONGODB_URL`` names one.

The connector runs on mongomock through its client factory (``CountingClient`` records every
command sent); the unreachable-server test uses the real pymongo client on a closed port.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import mongomock
import pymongo
import pytest
from pymongo import errors as perr

from app.core.errors import (
    ConfigurationError,
    PlanValidationError,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)
from app.resilience.retry import Backoff, RetryPolicy
from connectors.base import Scope, Write
from connectors.mongodb import DIGEST, MongoConnector
from connectors.mongodb_errors import INDEX_NAME
from tests.contracts.targets_mongodb import MOCK_URI, REAL_URL_VARIABLE, CountingClient

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
TABLES = {
    "patients": {"first_name": "text", "age": "integer", "active": "boolean", "dob": "date"},
    "appointments": {"starts_at": "timestamp", "kind": "text"},
}
SECRET_VALUE = "Mallory-7f3a"  # a patient value that must never reach an error text


def build(counting: CountingClient, **options: Any) -> MongoConnector:
    built = MongoConnector.from_config(
        "warehouse",
        {"tables": TABLES, "database": "healthie", **options},
        {"uri": MOCK_URI},
        client_factory=counting.factory,
    )
    assert isinstance(built, MongoConnector)
    built.retry = RetryPolicy(max_attempts=1, backoff=Backoff(initial=0.01, cap=0.01))
    return built


def write(
    connector: MongoConnector,
    patient: str,
    key: str,
    values: dict[str, Any],
    table: str = "patients",
    integration: str = "clinic-a",
) -> Write:
    args = connector.validate(
        "upsert_row", {"table": table, "key": key, "patient_id": patient, "values": values}, patient
    )
    return Write(Scope(integration, patient, "run-1", AT), "upsert_row", args)


def delete(connector: MongoConnector, patient: str, key: str, table: str = "patients") -> Write:
    args = connector.validate(
        "delete_row", {"table": table, "key": key, "patient_id": patient}, patient
    )
    return Write(Scope("clinic-a", patient, "run-1", AT), "delete_row", args)


@pytest.fixture
def counting() -> CountingClient:
    return CountingClient()


def docs(counting: CountingClient, table: str = "patients") -> list[dict[str, Any]]:
    return list(counting.client["healthie"][table].find({}, {"_id": 0}))


def test_a_chunk_costs_one_read_and_one_bulk_write_per_collection(counting):
    connector = build(counting)
    batch = [
        write(connector, p, p, {"first_name": f"P{p}", "age": 40}) for p in ("1", "2", "3")
    ] + [write(connector, p, f"a{p}", {"kind": "intake"}, "appointments") for p in ("1", "2")]
    assert [r.error for r in connector.execute_batch(batch)] == [None] * 5
    assert counting.names() == [
        "create_index",
        "find",
        "bulk_write",
        "create_index",
        "find",
        "bulk_write",
    ]
    assert [n for c, _, n in counting.calls if c == "bulk_write"] == [3, 2]
    assert connector.requests == 6

    # The same writes again: the digests match, nothing is sent but the reads; no index again.
    counting.calls.clear()
    again = connector.execute_batch(batch)
    assert [r.changed for r in again] == [False] * 5
    assert counting.names() == ["find", "find"]

    # One row changed: one bulk_write of one operation, on its collection only.
    counting.calls.clear()
    batch[1] = write(connector, "2", "2", {"first_name": "P2b", "age": 40})
    third = connector.execute_batch(batch)
    assert [r.changed for r in third] == [False, True, False, False, False]
    assert counting.calls == [
        ("find", "patients", 0),
        ("bulk_write", "patients", 1),
        ("find", "appointments", 0),
    ]


def test_the_identity_index_is_unique_and_created_once_per_collection(counting):
    connector = build(counting)
    for n in range(3):
        connector.execute_batch([write(connector, "1", "1", {"age": n})])
    assert counting.names("create_index") == ["patients"]
    index = counting.client["healthie"]["patients"].index_information()[INDEX_NAME]
    assert index["unique"] is True
    assert index["key"] == [("integration_id", 1), ("patient_id", 1), ("key", 1)]
    with pytest.raises(perr.DuplicateKeyError):
        counting.client["healthie"]["patients"].insert_one(
            {"integration_id": "clinic-a", "patient_id": "1", "key": "1"}
        )


def test_documents_are_keyed_by_the_scope_not_the_plan(counting):
    connector = build(counting)
    connector.execute_batch(
        [
            write(connector, "1", "1", {"first_name": "A"}, integration="a"),
            write(connector, "1", "1", {"first_name": "B"}, integration="b"),
            write(connector, "2", "1", {"first_name": "C"}, integration="a"),
        ]
    )
    stored = {(d["integration_id"], d["patient_id"], d["key"]): d for d in docs(counting)}
    assert {k: d["first_name"] for k, d in stored.items()} == {
        ("a", "1", "1"): "A",
        ("b", "1", "1"): "B",
        ("a", "2", "1"): "C",
    }
    # a later write of integration a's row leaves b's alone
    connector.execute_batch([write(connector, "1", "1", {"first_name": "A2"}, integration="a")])
    stored = {(d["integration_id"], d["patient_id"], d["key"]): d for d in docs(counting)}
    assert stored[("b", "1", "1")]["first_name"] == "B"
    assert stored[("a", "1", "1")]["first_name"] == "A2"


def _poison(counting: CountingClient) -> None:
    coll = counting.client["healthie"]["patients"]
    coll.create_index(
        [("key", 1)], unique=True, name="poison", partialFilterExpression={"key": "poison"}
    )
    coll.insert_one({"integration_id": "sentinel", "patient_id": "0", "key": "poison"})


def test_a_refused_document_fails_only_its_write_without_bisecting(counting):
    connector = build(counting)
    _poison(counting)
    batch = [
        write(connector, "1", "1", {"first_name": "A"}),
        write(connector, "2", "poison", {"first_name": SECRET_VALUE}),
        write(connector, "3", "3", {"first_name": "C"}),
    ]
    results = connector.execute_batch(batch)
    assert [r.error is None for r in results] == [True, False, True]
    assert [r.changed for r in results] == [True, False, True]
    error = results[1].error
    assert isinstance(error, TargetRejected)
    assert "code 11000" in str(error)
    assert SECRET_VALUE not in str(error)
    assert "poison" not in str(error)  # MongoDB's message quotes the duplicate key's value
    assert error.__cause__ is None
    # the unordered bulk applied the others in the same call: no second bulk_write
    assert counting.names("bulk_write") == ["patients"]
    assert {d["key"] for d in docs(counting)} == {"1", "3", "poison"}


def test_a_row_named_twice_in_a_chunk_ends_with_its_last_content(counting):
    connector = build(counting)
    batch = [
        write(connector, "1", "1", {"first_name": "old"}),
        write(connector, "1", "1", {"first_name": "new"}),
    ]
    results = connector.execute_batch(batch)
    assert [r.changed for r in results] == [True, True]
    assert [n for c, _, n in counting.calls if c == "bulk_write"] == [1]
    assert [d["first_name"] for d in docs(counting)] == ["new"]


def test_values_are_stored_as_bson_types(counting):
    connector = build(counting)
    connector.execute_batch(
        [
            write(connector, "1", "1", {"first_name": "Zoë", "age": 7, "active": False}),
            write(
                connector,
                "1",
                "a1",
                {"starts_at": "2026-03-04T10:15:30.123456+02:00", "kind": None},
                "appointments",
            ),
            write(connector, "2", "a2", {"starts_at": "2026-03-04T10:15:30"}, "appointments"),
        ]
    )
    (patient,) = docs(counting)
    assert patient["age"] == 7
    assert patient["active"] is False
    assert patient["dob"] is None  # declared, not written: null, as the other targets
    assert patient["synced_at"] == AT
    assert isinstance(patient[DIGEST], str)
    first, second = sorted(docs(counting, "appointments"), key=lambda d: d["key"])
    assert first["starts_at"] == datetime(2026, 3, 4, 8, 15, 30, 123000, tzinfo=UTC)
    assert first["kind"] is None
    assert second["starts_at"] == datetime(2026, 3, 4, 10, 15, 30, tzinfo=UTC)  # naive: UTC
    connector.execute_batch([write(connector, "3", "3", {"dob": "1990-02-28"})])
    (dob,) = [d["dob"] for d in docs(counting) if d["key"] == "3"]
    assert dob == datetime(1990, 2, 28, tzinfo=UTC)


def test_a_row_gone_between_the_read_and_the_write_is_not_recreated_by_update_only(counting):
    connector = build(counting, mode="update_only")
    coll = counting.client["healthie"]["patients"]
    coll.insert_one({"integration_id": "clinic-a", "patient_id": "1", "key": "1", "age": 1})
    counting.after["find"] = lambda: coll.delete_many({})  # another writer deletes it
    (result,) = connector.execute_batch([write(connector, "1", "1", {"age": 2})])
    assert result.error is None
    assert docs(counting) == []


def test_a_row_inserted_between_the_read_and_the_write_is_kept_by_insert_only(counting):
    connector = build(counting, mode="insert_only")
    coll = counting.client["healthie"]["patients"]
    theirs = {"integration_id": "clinic-a", "patient_id": "1", "key": "1", "age": 1}
    counting.after["find"] = lambda: coll.insert_one(dict(theirs))  # another writer's insert
    (result,) = connector.execute_batch([write(connector, "1", "1", {"age": 2})])
    assert result.error is None
    assert [d["age"] for d in docs(counting)] == [1]


def test_undeclared_tables_hold_text(counting):
    connector = build(counting, tables=None)
    connector.execute_batch([write(connector, "1", "1", {"age": 40, "vip": True}, "notes")])
    (doc,) = docs(counting, "notes")
    assert (doc["age"], doc["vip"]) == ("40", "true")


def test_deletes_report_what_existed(counting):
    connector = build(counting)
    connector.execute_batch([write(connector, "1", "1", {"age": 1})])
    counting.calls.clear()
    results = connector.execute_batch(
        [delete(connector, "1", "1"), delete(connector, "1", "gone"), delete(connector, "1", "1")]
    )
    assert [r.changed for r in results] == [True, False, False]
    assert counting.calls == [("find", "patients", 0), ("bulk_write", "patients", 1)]
    assert docs(counting) == []


def test_prune_touches_only_the_scope(counting):
    connector = build(counting, mode="mirror")
    connector.execute_batch(
        [
            write(connector, "7", "7", {"age": 1}, integration="a"),
            write(connector, "7", "x", {"age": 1}, integration="a"),
            write(connector, "7", "x", {"age": 1}, integration="b"),
            write(connector, "8", "x", {"age": 1}, integration="a"),
        ]
    )
    connector.prune(Scope("a", "7", "run-2", AT), {"patients": {"7"}})
    left = sorted((d["integration_id"], d["patient_id"], d["key"]) for d in docs(counting))
    assert left == [("a", "7", "7"), ("a", "8", "x"), ("b", "7", "x")]


def test_prune_of_undeclared_tables_skips_collections_not_written_by_the_connector(counting):
    connector = build(counting, tables=None, mode="mirror")
    connector.execute_batch([write(connector, "7", "7", {"note": "n"}, "notes")])
    foreign = counting.client["healthie"]["other"]
    foreign.insert_one({"integration_id": "clinic-a", "patient_id": "7", "key": "z"})
    fresh = build(counting, tables=None, mode="mirror")  # knows no collection yet
    fresh.prune(Scope("clinic-a", "7", "run-2", AT), {})
    assert docs(counting, "notes") == []
    assert foreign.count_documents({}) == 1


def test_values_bson_cannot_hold_are_refused_before_any_io(counting):
    connector = build(counting)
    with pytest.raises(PlanValidationError) as refused:
        write(connector, "1", "1", {"age": 2**63})
    assert "64-bit" in str(refused.value)
    assert str(2**63) not in str(refused.value)
    assert counting.calls == []


class _Raising:
    """A client whose collection command ``on`` (any, if None) raises ``error``; the others
    answer as on an empty database."""

    def __init__(self, error: Exception, on: str | None) -> None:
        self.error, self.on = error, on

    def __getitem__(self, name: str) -> Any:
        return self

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            if self.on in (None, name):
                raise self.error
            return [] if name == "find" else None

        return fail

    def close(self) -> None:
        """Nothing to close."""


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (perr.ServerSelectionTimeoutError("no servers"), UpstreamUnavailable),
        (perr.AutoReconnect("connection reset"), UpstreamUnavailable),
        (perr.NotPrimaryError("not primary"), UpstreamUnavailable),
        (perr.OperationFailure("Authentication failed.", code=18), ConfigurationError),
        (perr.OperationFailure("not authorized on healthie", code=13), ConfigurationError),
        (
            perr.OperationFailure("Index already exists with different options", 85),
            ConfigurationError,
        ),
        (perr.OperationFailure("Document failed validation", code=121), TargetRejected),
        (perr.DuplicateKeyError(f"dup key: {{ key: {SECRET_VALUE!r} }}", 11000), TargetRejected),
        (perr.OperationFailure("primary stepped down", code=189), UpstreamUnavailable),
        (perr.OperationFailure("Request rate is large", code=16500), RateLimited),
        (perr.InvalidURI(f"bad uri mongodb://u:{SECRET_VALUE}@h"), ConfigurationError),
    ],
)
def test_driver_failures_become_the_engines_kinds_without_their_text(error, kind):
    _fails_as(error, kind, None)


@pytest.mark.parametrize(
    ("details", "kind"),
    [
        (
            {"writeErrors": [], "writeConcernErrors": [{"code": 64, "errmsg": "w"}]},
            UpstreamUnavailable,
        ),
        ({"writeErrors": [{"index": 0, "code": 112, "errmsg": SECRET_VALUE}]}, UpstreamUnavailable),
        ({"writeErrors": [{"index": 0, "code": 13, "errmsg": SECRET_VALUE}]}, ConfigurationError),
        ({"writeErrors": [{"index": 0, "code": 121, "errmsg": SECRET_VALUE}]}, TargetRejected),
        ({"writeErrors": [{"index": 0, "errmsg": SECRET_VALUE}]}, TargetRejected),
    ],
)
def test_bulk_write_errors_become_each_writes_kind(details, kind):
    _fails_as(perr.BulkWriteError(details), kind, "bulk_write")


def _fails_as(error: Exception, kind: type[Exception], on: str | None) -> None:
    connector = MongoConnector.from_config(
        "warehouse",
        {"tables": TABLES, "database": "healthie"},
        {"uri": MOCK_URI},
        client_factory=lambda *a, **k: _Raising(error, on),
    )
    assert isinstance(connector, MongoConnector)
    connector.retry = RetryPolicy(max_attempts=1, backoff=Backoff(initial=0.01, cap=0.01))
    (result,) = connector.execute_batch([write(connector, "1", "1", {"first_name": "A"})])
    assert isinstance(result.error, kind)
    assert SECRET_VALUE not in str(result.error)
    assert "stepped down" not in str(result.error)  # codes and kinds, not the server's text


def test_an_unreachable_server_is_upstream_unavailable_with_the_real_driver():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connector = MongoConnector.from_config(
        "warehouse",
        {"tables": TABLES, "database": "healthie", "server_selection_timeout_ms": 200},
        {"uri": f"mongodb://user:{SECRET_VALUE}@127.0.0.1:{port}/"},
    )
    assert isinstance(connector, MongoConnector)
    connector.retry = RetryPolicy(max_attempts=1, backoff=Backoff(initial=0.01, cap=0.01))
    try:
        (result,) = connector.execute_batch([write(connector, "1", "1", {"first_name": "A"})])
    finally:
        connector.close()
    assert isinstance(result.error, UpstreamUnavailable)
    assert "ServerSelectionTimeoutError" in str(result.error)
    assert SECRET_VALUE not in str(result.error)


@pytest.mark.parametrize(
    ("options", "credentials", "field"),
    [
        ({"database": "a/b"}, {"uri": MOCK_URI}, "options.database"),
        ({"database": "h", "server_selection_timeout_ms": 600_000}, {"uri": MOCK_URI}, "server_"),
        ({"database": "h", "dsn": "x"}, {"uri": MOCK_URI}, "options.dsn"),
        ({"database": "h"}, {"uri": f"postgres://u:{SECRET_VALUE}@h"}, "credentials.uri"),
        ({"database": "h"}, {}, "uri"),
    ],
)
def test_bad_configuration_fails_when_the_target_is_built(options, credentials, field):
    with pytest.raises(ConfigurationError) as refused:
        MongoConnector.from_config("warehouse", options, credentials)
    assert field in str(refused.value)
    assert SECRET_VALUE not in str(refused.value)


def test_the_probe_reads_and_fails_as_a_write_would(counting):
    connector = build(counting)
    connector.execute_batch([write(connector, "1", "1", {"age": 1})])
    assert "1 found" in connector.probe()
    refused = MongoConnector.from_config(
        "warehouse",
        {"database": "h"},
        {"uri": MOCK_URI},
        client_factory=lambda *a, **k: _Raising(perr.OperationFailure("no", code=13), None),
    )
    with pytest.raises(ConfigurationError, match="code 13"):
        refused.probe()


def test_nothing_connects_before_the_first_write():
    calls: list[str] = []

    def factory(uri: str, **options: Any) -> mongomock.MongoClient:
        calls.append(uri)
        return mongomock.MongoClient(uri)

    connector = MongoConnector.from_config(
        "warehouse", {"database": "h"}, {"uri": MOCK_URI}, client_factory=factory
    )
    assert calls == []
    connector.close()


@pytest.fixture
def real_server() -> Iterator[tuple[str, str]]:
    url = os.environ.get(REAL_URL_VARIABLE)
    if not url:
        # Not require_service: no MongoDB server runs on the project's machines or in CI.
        pytest.skip(f"{REAL_URL_VARIABLE} is not set: no real MongoDB server to test against")
    database = f"hs_test_{uuid.uuid4().hex[:12]}"
    yield url, database
    admin: pymongo.MongoClient[Any]
    with pymongo.MongoClient(url, serverSelectionTimeoutMS=5_000) as admin:
        admin.drop_database(database)


def test_a_real_server_upserts_refuses_per_write_and_counts_commands(real_server):
    url, database = real_server
    started: list[str] = []

    class Listener(pymongo.monitoring.CommandListener):
        def started(self, event: Any) -> None:
            started.append(event.command_name)

        def succeeded(self, event: Any) -> None:
            pass

        def failed(self, event: Any) -> None:
            pass

    def factory(uri: str, **options: Any) -> pymongo.MongoClient[Any]:
        return pymongo.MongoClient(uri, event_listeners=[Listener()], **options)

    connector = MongoConnector.from_config(
        "warehouse", {"tables": TABLES, "database": database}, {"uri": url}, client_factory=factory
    )
    assert isinstance(connector, MongoConnector)
    try:
        connector.ensure_tables()
        admin: pymongo.MongoClient[Any]
        with pymongo.MongoClient(url, serverSelectionTimeoutMS=5_000) as admin:
            admin[database].command(
                "collMod",
                "patients",
                validator={"key": {"$ne": "poison"}},
                validationLevel="strict",
            )
        started.clear()
        batch = [
            write(connector, "1", "1", {"first_name": "A"}),
            write(connector, "2", "poison", {"first_name": SECRET_VALUE}),
        ]
        results = connector.execute_batch(batch)
        assert results[0].error is None
        assert isinstance(results[1].error, TargetRejected)
        assert "code 121" in str(results[1].error)
        assert SECRET_VALUE not in str(results[1].error)
        assert [c for c in started if c in ("find", "update")] == ["find", "update"]
        assert [r.changed for r in connector.execute_batch(batch[:1])] == [False]
    finally:
        connector.close()
