"""What the SQL family does beyond the contract suite: tables of the old connector refused with
a one-line fix, credentials and outages as the right kinds, quoting, the patient index, the
Redshift MERGE path matching the ON CONFLICT path, statements split under the parameter limit,
and concurrent writers on one SQLite file.

``db`` runs a test on SQLite (a file under ``tmp_path``), PostgreSQL and the Redshift connector
on PostgreSQL 15, each in a database (or schema) of the test's own."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import (
    ConfigurationError,
    RetriableError,
    TargetRejected,
    UpstreamUnavailable,
)
from connectors import sql_dialects
from connectors.base import Scope, Write
from connectors.registry import load
from connectors.sql import PostgresConnector, RedshiftConnector, SqlConnector, SqliteConnector
from tests.conftest import require_service
from tests.servers.postgres import (
    PostgresServer,
    postgres_bin,
    postgres_server,  # noqa: F401 - the session fixture
    running_postgres,
)

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
TABLES = {"patients": {"first_name": "text", "age": "integer", "active": "boolean", "dob": "date"}}


@dataclass
class Db:
    """One test's database: build a connector on it, run SQL on it as its owner."""

    kind: str
    build: Callable[..., SqlConnector]
    execute: Callable[[str], list[tuple[Any, ...]]]
    schema: str | None = None

    def name(self, table: str) -> str:
        """``table`` as raw SQL names it."""
        return f'"{self.schema}"."{table}"' if self.schema else f'"{table}"'


def _sqlite_db(tmp_path: Path) -> Db:
    path = tmp_path / "warehouse.db"

    def build(credentials: dict | None = None, **options: Any) -> SqlConnector:
        options = {"tables": TABLES, "path": str(path), **options}
        built = SqliteConnector.from_config("warehouse", options, credentials or {})
        assert isinstance(built, SqlConnector)
        return built

    def execute(sql: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            rows = conn.execute(sql).fetchall()
            conn.commit()
            return rows

    return Db("sqlite", build, execute)


def _server_db(server: PostgresServer, cls: type[PostgresConnector], schema: str) -> Db:
    def build(credentials: dict | None = None, **options: Any) -> SqlConnector:
        options = {"tables": TABLES, "dsn": server.dsn(), "schema": schema, **options}
        secrets = {"password": server.password} if credentials is None else credentials
        built = cls.from_config("warehouse", options, secrets)
        assert isinstance(built, SqlConnector)
        return built

    def execute(sql: str) -> list[tuple[Any, ...]]:
        with server.connect() as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    return Db(cls.kind, build, execute, schema)


@pytest.fixture
def server(request: Any) -> PostgresServer:
    """The session's PostgreSQL server."""
    return request.getfixturevalue("postgres_server")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("redshift", marks=pytest.mark.postgres),
    ]
)
def db(request: Any, tmp_path: Path) -> Iterator[Db]:
    if request.param == "sqlite":
        yield _sqlite_db(tmp_path)
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with server.connect() as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    cls = PostgresConnector if request.param == "postgres" else RedshiftConnector
    try:
        yield _server_db(server, cls, schema)
    finally:
        with server.connect() as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def upsert(
    connector: SqlConnector,
    patient: str,
    key: str,
    values: dict,
    table: str = "patients",
    **scope: Any,
) -> Write:
    args = connector.validate(
        "upsert_row", {"table": table, "key": key, "patient_id": patient, "values": values}, patient
    )
    return Write(
        Scope(scope.get("integration", "clinic-a"), patient, "run-1", AT), "upsert_row", args
    )


def delete(connector: SqlConnector, patient: str, key: str, table: str = "patients") -> Write:
    args = connector.validate(
        "delete_row", {"table": table, "key": key, "patient_id": patient}, patient
    )
    return Write(Scope("clinic-a", patient, "run-1", AT), "delete_row", args)


@contextlib.contextmanager
def connected(connector: SqlConnector) -> Iterator[SqlConnector]:
    try:
        yield connector
    finally:
        connector.close()


# -- schema -------------------------------------------------------------------------------------


def test_a_table_of_the_old_connector_is_refused_with_a_one_line_fix(db):
    db.execute(
        f"CREATE TABLE {db.name('patients')} (key TEXT PRIMARY KEY, patient_id TEXT, "
        "first_name TEXT)"
    )
    with connected(db.build()) as connector:
        (result,) = connector.execute_batch([upsert(connector, "1", "1", {"first_name": "A"})])
        assert isinstance(result.error, ConfigurationError)
        message = str(result.error)
        assert "\n" not in message
        assert "'patients' predates row scoping" in message
        assert "healthie-sync demo --reset" in message
        with pytest.raises(ConfigurationError, match="predates row scoping"):
            connector.ensure_tables()


def test_a_declared_column_added_later_is_migrated_and_the_old_rows_keep_theirs(db):
    with connected(db.build(tables={"patients": {"first_name": "text"}})) as first:
        first.execute_batch([upsert(first, "1", "1", {"first_name": "Ann"})])
    wide = {"patients": {"first_name": "text", "visits": "integer", "seen": "timestamp"}}
    with connected(db.build(tables=wide)) as second:
        (result,) = second.execute_batch(
            [
                upsert(
                    second,
                    "2",
                    "2",
                    {"first_name": "Bo", "visits": 3, "seen": "2026-01-02T03:04:05+01:00"},
                )
            ]
        )
        assert result.error is None
        rows = {r["key"]: r for r in second.fetch_rows("patients")}
        assert rows["1"]["first_name"] == "Ann"
        assert rows["1"]["visits"] is None
        assert rows["2"]["visits"] == 3
        assert str(rows["2"]["seen"]).replace(" ", "T").startswith("2026-01-02T02:04:05")


def test_the_patient_id_index_exists(db):
    if db.kind == "redshift":
        pytest.skip("Redshift has no indexes (its tables are sorted instead)")
    with connected(db.build()) as connector:
        connector.ensure_tables()
    if db.kind == "sqlite":
        (info,) = [
            i
            for i in db.execute("PRAGMA index_list('patients')")
            if i[1] == "patients_patient_id_idx"
        ]
        columns = [c[2] for c in db.execute("PRAGMA index_info('patients_patient_id_idx')")]
    else:
        (definition,) = db.execute(
            f"SELECT indexdef FROM pg_indexes WHERE schemaname = '{db.schema}' "
            "AND tablename = 'patients' AND indexname = 'patients_patient_id_idx'"
        )[0]
        columns = [definition.rsplit("(", 1)[1].rstrip(")")]
    assert columns == ["patient_id"]


def test_a_table_dropped_behind_the_connectors_back_is_created_again(db):
    with connected(db.build()) as connector:
        connector.execute_batch([upsert(connector, "1", "1", {"first_name": "A"})])
        db.execute(f"DROP TABLE {db.name('patients')}")
        (result,) = connector.execute_batch([upsert(connector, "2", "2", {"first_name": "B"})])
        assert result.error is None
        assert [r["key"] for r in connector.fetch_rows("patients")] == ["2"]


# -- values and names ---------------------------------------------------------------------------


def test_values_with_sql_quotes_round_trip_and_reserved_words_are_quoted(db):
    tables = {"order": {"select": "text", "group": "integer", "user": "boolean"}}
    hostile = "O'Brien\"; DROP TABLE \"order\"; -- ' OR '1'='1 \\ %s %(x)s $1 ?"
    with connected(db.build(tables=tables)) as connector:
        writes = [
            upsert(
                connector, "1", "k'1", {"select": hostile, "group": 2, "user": False}, table="order"
            )
        ]
        (result,) = connector.execute_batch(writes)
        assert result.error is None
        (row,) = connector.fetch_rows("order")
        assert row["key"] == "k'1"
        assert row["select"] == hostile
        assert row["group"] == 2
        assert row["user"] is False


def test_undeclared_tables_take_any_identifier_as_text_and_mirror_prunes_them(db):
    with connected(db.build(tables=None, mode="mirror")) as connector:
        results = connector.execute_batch(
            [
                upsert(connector, "1", "a", {"note": "x"}, table="notes"),
                upsert(connector, "1", "b", {"note": "y", "extra": 5}, table="notes"),
                upsert(connector, "2", "a", {"note": "z"}, table="notes"),
                upsert(connector, "1", "m", {"dose": "1 mg"}, table="meds"),
            ]
        )
        assert [r.error for r in results] == [None] * 4
        rows = {(r["patient_id"], r["key"]): r for r in connector.fetch_rows("notes")}
        assert rows[("1", "b")]["extra"] == "5"
        assert rows[("1", "a")]["extra"] is None
        connector.prune(Scope("clinic-a", "1", "run-2", AT), {"notes": {"a"}})
        assert sorted((r["patient_id"], r["key"]) for r in connector.fetch_rows("notes")) == [
            ("1", "a"),
            ("2", "a"),
        ]
        assert connector.fetch_rows("meds") == []


def test_the_same_row_twice_in_one_batch_applies_in_order(db):
    with connected(db.build()) as connector:
        results = connector.execute_batch(
            [
                upsert(connector, "1", "1", {"first_name": "A"}),
                upsert(connector, "1", "1", {"first_name": "B"}),
                upsert(connector, "1", "1", {"first_name": "B"}),
                delete(connector, "1", "1"),
                delete(connector, "1", "1"),
            ]
        )
        assert [(r.error, r.changed) for r in results] == [
            (None, True),
            (None, True),
            (None, False),
            (None, True),
            (None, False),
        ]
        assert connector.fetch_rows("patients") == []


def test_deleting_from_a_table_never_written_changes_nothing(db):
    with connected(db.build()) as connector:
        (result,) = connector.execute_batch([delete(connector, "1", "1")])
        assert result.error is None
        assert not result.changed


def test_a_wide_batch_is_split_under_the_bound_parameter_limit(db):
    columns = {f"c{n:03d}": "integer" for n in range(120)}
    with connected(db.build(tables={"wide": columns})) as connector:
        values = {c: n for n, c in enumerate(columns)}
        writes = [upsert(connector, str(p), str(p), values, table="wide") for p in range(500)]
        results = connector.execute_batch(writes)
        assert [r.error for r in results] == [None] * 500
        assert all(r.changed for r in results)
        assert len(connector.fetch_rows("wide")) == 500
        again = connector.execute_batch(writes)
        assert not any(r.changed for r in again)


def test_a_refused_row_names_the_code_never_the_value(db):
    if db.kind == "sqlite":
        db.execute(
            "CREATE TABLE patients (integration_id TEXT, patient_id TEXT, key TEXT, "
            "run_id TEXT, synced_at TIMESTAMP, first_name TEXT CHECK (first_name <> "
            "'Mallory'), PRIMARY KEY (integration_id, patient_id, key))"
        )
    else:
        with connected(db.build(tables={"patients": {"first_name": "text"}})) as connector:
            connector.ensure_tables()
        db.execute(
            f"ALTER TABLE {db.name('patients')} ADD CONSTRAINT no_mallory "
            "CHECK (first_name <> 'Mallory')"
        )
    with connected(db.build(tables={"patients": {"first_name": "text"}})) as connector:
        (result,) = connector.execute_batch(
            [upsert(connector, "1", "1", {"first_name": "Mallory"})]
        )
        assert isinstance(result.error, TargetRejected)
        assert "Mallory" not in str(result.error)
        assert "SQLSTATE 23514" in str(result.error) or "SQLITE_CONSTRAINT" in str(result.error)


# -- credentials and outages --------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["postgres", "redshift"])
def test_a_wrong_password_is_a_configuration_error(server, kind):
    cls = load(kind)
    connector = cls.from_config(
        "warehouse",
        {"tables": TABLES, "dsn": server.dsn()},
        {"password": "not-the-password"},
    )
    assert isinstance(connector, SqlConnector)
    with connected(connector):
        (result,) = connector.execute_batch([upsert(connector, "1", "1", {"first_name": "A"})])
    assert isinstance(result.error, ConfigurationError)
    assert "password credential" in str(result.error)
    assert "not-the-password" not in str(result.error)
    assert server.password not in str(result.error)


@pytest.mark.parametrize("kind", ["postgres", "redshift"])
def test_a_dsn_holding_a_password_is_refused_without_echoing_it(kind):
    with pytest.raises(ConfigurationError) as refused:
        load(kind).from_config(
            "warehouse", {"dsn": "postgresql://u:s3cret@db/x"}, {"password": "p"}
        )
    assert "s3cret" not in str(refused.value)
    assert "options.dsn" in str(refused.value)


@pytest.mark.postgres
def test_a_stopped_server_is_retriable_and_the_connector_recovers():
    bin_dir = postgres_bin()
    if bin_dir is None:
        require_service("postgresql", "no /usr/lib/postgresql/*/bin/initdb installed")
    assert bin_dir is not None
    with running_postgres(bin_dir) as server:
        connector = PostgresConnector.from_config(
            "warehouse", {"tables": TABLES, "dsn": server.dsn()}, {"password": server.password}
        )
        assert isinstance(connector, SqlConnector)
        with connected(connector):
            (first,) = connector.execute_batch([upsert(connector, "1", "1", {"age": 1})])
            assert first.error is None
            server.stop("fast")  # sessions terminated, committed rows kept
            (down,) = connector.execute_batch([upsert(connector, "2", "2", {"age": 2})])
            assert isinstance(down.error, UpstreamUnavailable)
            assert isinstance(down.error, RetriableError)
            server.start()
            (back,) = connector.execute_batch([upsert(connector, "2", "2", {"age": 2})])
            assert back.error is None
            assert sorted(r["key"] for r in connector.fetch_rows("patients")) == ["1", "2"]


def test_a_locked_sqlite_database_is_retriable(tmp_path):
    path = tmp_path / "locked.db"
    connector = SqliteConnector.from_config(
        "warehouse", {"tables": TABLES, "path": str(path), "busy_timeout": 0.05}, {}
    )
    assert isinstance(connector, SqlConnector)
    with connected(connector):
        connector.ensure_tables()
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            (result,) = connector.execute_batch([upsert(connector, "1", "1", {"age": 1})])
            assert isinstance(result.error, UpstreamUnavailable)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        (result,) = connector.execute_batch([upsert(connector, "1", "1", {"age": 1})])
        assert result.error is None


def test_a_sqlite_path_that_cannot_be_opened_is_refused_when_the_target_is_built(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(ConfigurationError, match="options.path"):
        SqliteConnector.from_config(
            "warehouse", {"tables": TABLES, "path": str(tmp_path / "a-file" / "x.db")}, {}
        )
    (tmp_path / "not-a-db").write_text("plain text, not SQLite")
    with pytest.raises(ConfigurationError, match="SQLITE_NOTADB"):
        SqliteConnector.from_config(
            "warehouse", {"tables": TABLES, "path": str(tmp_path / "not-a-db")}, {}
        )


# -- the Redshift path --------------------------------------------------------------------------


def _story(connector: SqlConnector) -> list[list[Write]]:
    """Batches covering inserts, changes, no-ops, repeats, deletes and two integrations."""
    u = lambda p, k, v, **kw: upsert(connector, p, k, v, **kw)  # noqa: E731
    return [
        [
            u("1", "1", {"first_name": "A", "age": 30, "active": True, "dob": "1990-01-02"}),
            u("2", "2", {"first_name": "B"}),
            u("2", "x", {"age": 1}),
        ],
        [
            u("1", "1", {"first_name": "A", "age": 30, "active": True, "dob": "1990-01-02"}),
            u("2", "2", {"first_name": "B2", "active": None}),
            u("3", "3", {"age": 7}),
            u("3", "3", {"age": 8}),
            u("3", "3", {"age": 8}),
        ],
        [
            delete(connector, "2", "x"),
            delete(connector, "2", "nope"),
            u("1", "1", {"first_name": "A", "age": 31}, integration="clinic-b"),
        ],
    ]


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["upsert", "update_only", "insert_only", "mirror"])
def test_the_redshift_merge_path_leaves_the_table_the_on_conflict_path_does(server, mode):
    outcomes = []
    for cls in (PostgresConnector, RedshiftConnector):
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with server.connect() as admin:
            admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            db = _server_db(server, cls, schema)
            with connected(db.build(mode=mode)) as seed:  # update_only needs rows to update
                seed_mode = seed.table_options.mode
                if seed_mode == "update_only":
                    with connected(db.build()) as writer:
                        writer.execute_batch([upsert(writer, "1", "1", {"first_name": "old"})])
                changed = [
                    [(r.error, r.changed) for r in seed.execute_batch(batch)]
                    for batch in _story(seed)
                ]
                rows = sorted((sorted(r.items()) for r in seed.fetch_rows("patients")), key=repr)
            outcomes.append((changed, rows))
        finally:
            with server.connect() as admin:
                admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    assert outcomes[0] == outcomes[1]


# -- concurrency --------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["one-connector", "two-connectors"])
def test_two_threads_write_different_patients_to_one_sqlite_file(tmp_path, shared):
    path = tmp_path / "shared.db"

    def build() -> SqlConnector:
        built = SqliteConnector.from_config("warehouse", {"tables": TABLES, "path": str(path)}, {})
        assert isinstance(built, SqlConnector)
        return built

    first = build()
    connectors = [first, first if shared else build()]
    failures: list[Any] = []

    def work(connector: SqlConnector, offset: int) -> None:
        for n in range(20):
            patients = [str(offset + n * 10 + p) for p in range(10)]
            results = connector.execute_batch(
                [upsert(connector, p, f"{p}-{r}", {"age": r}) for p in patients for r in range(4)]
            )
            failures.extend(r.error for r in results if r.error is not None)

    threads = [
        threading.Thread(target=work, args=(c, 100_000 * (i + 1))) for i, c in enumerate(connectors)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        assert len(first.fetch_rows("patients")) == 2 * 20 * 10 * 4
    finally:
        for connector in {id(c): c for c in connectors}.values():
            connector.close()


def test_chunks_of_any_size_compile_few_statements_and_return_every_row(db):
    # A statement's SQL depends on its row count: a chunk goes in power-of-two parts, so a run
    # whose chunks vary in size compiles a few statements, not one per size, and every part's
    # RETURNING still counts (137 rows = 128 + 8 + 1: all changed, then none).
    with connected(db.build(tables={"sizes": {"n": "integer"}})) as connector:
        before = {k for k in sql_dialects._compiled if "sizes" in map(str, k)}
        for size in range(1, 138):
            writes = [
                upsert(connector, f"p{size}", str(i), {"n": i}, table="sizes") for i in range(size)
            ]
            results = connector.execute_batch(writes)
            assert all(r.changed for r in results), size
            assert not any(r.changed for r in connector.execute_batch(writes)), size
        compiled = {k for k in sql_dialects._compiled if "sizes" in map(str, k)} - before
        assert len(compiled) <= 8  # sizes 1, 2, 4, ..., 128
        assert len(connector.fetch_rows("sizes")) == sum(range(1, 138))
