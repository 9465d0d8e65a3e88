"""SQL target writes: the connector's execute_batch vs the driver's own bare batch insert.

For SQLite (a temp file) and PostgreSQL (a throwaway server, started as the tests start one;
skipped when PostgreSQL is not installed), N rows of 10 value columns are written three ways:

* ``connector``: ``execute_batch`` in calls the size the pipeline makes (50 patients x 4 rows),
  each call one transaction of one multi-row ON CONFLICT statement with RETURNING;
* ``bare``: the driver alone, every row in one transaction (sqlite3 ``executemany`` / psycopg
  ``executemany``) into a table of the same shape (primary key and patient index): the target
  the ratio is measured against;
* ``bare_per_call``: the driver alone, one transaction per pipeline call (the same commits the
  connector makes), to tell the connector's own cost from the cost of committing per call.

Rounds alternate (connector, bare, bare per call, connector, ...) on fresh tables so machine
noise hits all alike; rates are medians, ratios the median of each round's ratio (target
``connector / bare >= 0.8``). Also reported: the target requests 1,000 patients x 4 rows
cost. The last line is one JSON object.

    python -m bench.sql_writes [--rows 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from connectors.base import Connector, Scope, Write
from connectors.sql import PostgresConnector, RedshiftConnector, SqlConnector, SqliteConnector

COLUMNS = {
    "first_name": "text",
    "last_name": "text",
    "email": "text",
    "city": "text",
    "age": "integer",
    "visits": "integer",
    "balance": "number",
    "active": "boolean",
    "dob": "date",
    "seen_at": "timestamp",
}
TABLES = {"patients": COLUMNS}
PATIENTS_PER_CALL, ROWS_PER_PATIENT = 50, 4
AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def _values(patient: int, row: int) -> dict[str, Any]:
    return {
        "first_name": f"First{patient}",
        "last_name": f"Last{patient} O'Brien",
        "email": f"p{patient}.{row}@example.com",
        "city": "Zürich",
        "age": 20 + patient % 60,
        "visits": row,
        "balance": patient * 1.25,
        "active": patient % 2 == 0,
        "dob": f"19{50 + patient % 50:02d}-0{1 + row % 9}-1{row % 9}",
        "seen_at": (AT + timedelta(minutes=patient)).isoformat(),
    }


def _writes(connector: Connector, rows: int) -> list[list[Write]]:
    """Validated writes, grouped in pipeline-sized calls (validation is not timed)."""
    calls: list[list[Write]] = []
    per_call = PATIENTS_PER_CALL * ROWS_PER_PATIENT
    for start in range(0, rows, per_call):
        call = []
        for n in range(start, min(rows, start + per_call)):
            patient, row = divmod(n, ROWS_PER_PATIENT)
            pid = str(100_000 + patient)
            args = connector.validate(
                "upsert_row",
                {
                    "table": "patients",
                    "key": f"{pid}-{row}",
                    "patient_id": pid,
                    "values": _values(patient, row),
                },
                pid,
            )
            call.append(Write(Scope("bench", pid, "run-1", AT), "upsert_row", args))
        calls.append(call)
    return calls


def _tuples(calls: list[list[Write]], family: str) -> list[tuple[Any, ...]]:
    from connectors.sql_schema import to_db

    out = []
    for call in calls:
        for w in call:
            values = w.args.values  # type: ignore[attr-defined]
            out.append(
                (
                    w.scope.integration_id,
                    w.scope.patient_id,
                    w.args.key,  # type: ignore[attr-defined]
                    w.scope.run_id,
                    to_db(family, "timestamp", w.scope.synced_at),
                )  # type: ignore[arg-type]
                + tuple(to_db(family, k, values[c]) for c, k in COLUMNS.items())  # type: ignore[arg-type]
            )
    return out


def _time(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _connector_round(connector: SqlConnector, calls: list[list[Write]]) -> None:
    for call in calls:
        results = connector.execute_batch(call)
        failed = [r for r in results if r.error is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} writes failed: {failed[0].error!r}")


def _ddl(table: str, family: str) -> str:
    types = {
        "sqlite": {
            "text": "TEXT",
            "integer": "INTEGER",
            "number": "REAL",
            "boolean": "BOOLEAN",
            "date": "DATE",
            "timestamp": "TIMESTAMP",
        },
        "postgres": {
            "text": "TEXT",
            "integer": "BIGINT",
            "number": "DOUBLE PRECISION",
            "boolean": "BOOLEAN",
            "date": "DATE",
            "timestamp": "TIMESTAMPTZ",
        },
    }[family]
    cols = ", ".join(f"{c} {types[k]}" for c, k in COLUMNS.items())
    ts = types["timestamp"]
    return (
        f"CREATE TABLE {table} (integration_id TEXT NOT NULL, patient_id TEXT NOT NULL, "
        f"key TEXT NOT NULL, run_id TEXT, synced_at {ts}, {cols}, "
        f"PRIMARY KEY (integration_id, patient_id, key))"
    )


def _insert_sql(table: str, marker: str) -> str:
    return f"INSERT INTO {table} VALUES ({', '.join([marker] * (5 + len(COLUMNS)))})"


Round = Callable[[int], float]


def _measure(rounds: int, rows: int, sides: dict[str, Round]) -> dict[str, Any]:
    """Alternate the sides round by round; median rows/s of each, median per-round ratios."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for n in range(rounds):
        for name, run in sides.items():
            seconds[name].append(run(n))
    result: dict[str, Any] = {
        f"{name}_rows_per_s": round(rows / statistics.median(times))
        for name, times in seconds.items()
    }
    for other in (n for n in sides if n != "connector"):
        ratios = [b / c for c, b in zip(seconds["connector"], seconds[other], strict=True)]
        result["ratio" if other == "bare" else f"ratio_vs_{other}"] = round(
            statistics.median(ratios), 3
        )
    return result


def _requests_for_1000_patients(build: Callable[[], SqlConnector]) -> int:
    connector = build()
    try:
        calls = _writes(connector, 1000 * ROWS_PER_PATIENT)
        connector.ensure_tables()  # the first call's DDL is not what a steady run costs
        before = connector.requests
        _connector_round(connector, calls)
        return connector.requests - before
    finally:
        connector.close()


def bench_sqlite(rows: int, rounds: int) -> dict[str, Any]:
    """SQLite on temp files: a fresh file per round and per side."""
    with tempfile.TemporaryDirectory(prefix="bench-sql-") as tmp:
        root = Path(tmp)

        def build(path: Path) -> SqlConnector:
            c = SqliteConnector.from_config("bench", {"path": str(path), "tables": TABLES}, {})
            assert isinstance(c, SqlConnector)
            return c

        template = build(root / "template.db")
        calls = _writes(template, rows)
        template.close()
        tuples = _tuples(calls, "sqlite")

        def connector_round(n: int) -> float:
            connector = build(root / f"c{n}.db")
            connector.ensure_tables()
            try:
                return _time(lambda: _connector_round(connector, calls))
            finally:
                connector.close()

        per_call = [_tuples([call], "sqlite") for call in calls]

        def bare(path: Path, groups: list[list[tuple[Any, ...]]]) -> float:
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_ddl("patients", "sqlite"))
            db.execute("CREATE INDEX patients_patient_id_idx ON patients (patient_id)")
            sql = _insert_sql("patients", "?")

            def insert() -> None:
                for group in groups:
                    db.execute("BEGIN IMMEDIATE")
                    db.executemany(sql, group)
                    db.execute("COMMIT")

            try:
                return _time(insert)
            finally:
                db.close()

        sides: dict[str, Round] = {
            "connector": connector_round,
            "bare": lambda n: bare(root / f"b{n}.db", [tuples]),
            "bare_per_call": lambda n: bare(root / f"p{n}.db", per_call),
        }
        result = _measure(rounds, rows, sides)
        result["requests_1000_patients_x4"] = _requests_for_1000_patients(
            lambda: build(root / "requests.db")
        )
        return result


@contextlib.contextmanager
def _postgres() -> Iterator[Any]:
    from tests.servers.postgres import postgres_bin, running_postgres

    bin_dir = postgres_bin()
    if bin_dir is None:
        yield None
        return
    with running_postgres(bin_dir) as server:
        yield server


def bench_postgres(rows: int, rounds: int) -> dict[str, Any]:
    """PostgreSQL on a throwaway server: a fresh schema per round and per side."""
    with _postgres() as server:
        if server is None:
            return {"skipped": "PostgreSQL is not installed (/usr/lib/postgresql/*/bin)"}

        def build(schema: str, cls: type[SqlConnector] = PostgresConnector) -> SqlConnector:
            with server.connect() as admin:
                admin.execute(f'CREATE SCHEMA "{schema}"')
            c = cls.from_config(
                "bench",
                {"dsn": server.dsn(), "schema": schema, "tables": TABLES},
                {"password": server.password},
            )
            assert isinstance(c, SqlConnector)
            return c

        template = build("template")
        calls = _writes(template, rows)
        template.close()
        tuples = _tuples(calls, "postgres")

        def connector_round(n: int) -> float:
            connector = build(f"c{n}")
            connector.ensure_tables()
            try:
                connector.fetch_rows("patients")  # warm the pool: connecting is not writing
                return _time(lambda: _connector_round(connector, calls))
            finally:
                connector.close()

        per_call = [_tuples([call], "postgres") for call in calls]

        def bare(schema: str, groups: list[list[tuple[Any, ...]]]) -> float:
            with server.connect() as db:
                db.execute(f'CREATE SCHEMA "{schema}"')
                db.execute(_ddl(f"{schema}.patients", "postgres"))
                db.execute(f"CREATE INDEX ON {schema}.patients (patient_id)")
                db.autocommit = False
                sql = _insert_sql(f"{schema}.patients", "%s")

                def insert() -> None:
                    for group in groups:
                        with db.cursor() as cur:
                            cur.executemany(sql, group)
                        db.commit()

                return _time(insert)

        sides: dict[str, Round] = {
            "connector": connector_round,
            "bare": lambda n: bare(f"b{n}", [tuples]),
            "bare_per_call": lambda n: bare(f"p{n}", per_call),
        }
        result = _measure(rounds, rows, sides)
        result["requests_1000_patients_x4"] = _requests_for_1000_patients(
            lambda: build(f"r{uuid.uuid4().hex[:8]}")
        )
        # Redshift's idiom on the same server (not timed: PostgreSQL is not Redshift): per
        # call a SELECT, CREATE TEMP TABLE, INSERT, MERGE and DROP.
        result["redshift_requests_1000_patients_x4"] = _requests_for_1000_patients(
            lambda: build(f"s{uuid.uuid4().hex[:8]}", RedshiftConnector)
        )
        return result


def main() -> None:
    """Run both families and print the figures (one JSON line last)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "bench": "sql_writes",
        "rows": args.rows,
        "columns": len(COLUMNS),
        "call": f"{PATIENTS_PER_CALL} patients x {ROWS_PER_PATIENT} rows",
        "target_ratio": 0.8,
    }
    for name, run in (("sqlite", bench_sqlite), ("postgres", bench_postgres)):
        report[name] = run(args.rows, args.rounds)
        print(f"{name}: {report[name]}", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
