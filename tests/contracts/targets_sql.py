"""The SQL targets in the connector contract suite: SQLite on a file, PostgreSQL, and the
Redshift connector's MERGE path on PostgreSQL 15 (which runs Redshift's MERGE subset).

Each test gets its own database: a fresh SQLite file under ``tmp_path``, or a fresh schema (the
connectors' ``schema`` option) on the session's PostgreSQL server, dropped afterwards. Poison
is the database's own refusal: a trigger (SQLite) or a CHECK constraint (PostgreSQL) that
rejects rows keyed 'poison' while the context lasts.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

from connectors.base import Connector
from connectors.sql import PostgresConnector, RedshiftConnector, SqlConnector, SqliteConnector
from tests.contracts.targets import Rows, TargetBackend
from tests.servers.postgres import PostgresServer, postgres_for

MODES = ("upsert", "update_only", "insert_only", "mirror")


def _read(connector: Connector, table: str) -> Rows:
    return cast(SqlConnector, connector).fetch_rows(table)


def _declared(connector: Connector) -> list[str]:
    sql = cast(SqlConnector, connector)
    sql.ensure_tables()  # the constraint needs the table to exist
    return sorted(sql.table_options.tables or {})


def sqlite_backend(request: Any) -> Iterator[TargetBackend]:
    """SQLite on a file of the test's own."""
    path: Path = request.getfixturevalue("tmp_path") / "warehouse.db"

    def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
        return SqliteConnector.from_config(
            "warehouse", {**options, "path": str(path)}, dict(credentials or {})
        )

    @contextlib.contextmanager
    def poison(connector: Connector) -> Iterator[None]:
        tables = _declared(connector)
        with contextlib.closing(sqlite3.connect(path)) as db:
            for table in tables:
                for event in ("INSERT", "UPDATE"):
                    db.execute(
                        f"CREATE TRIGGER poison_{event.lower()}_{table} BEFORE {event} ON {table} "
                        "WHEN NEW.key = 'poison' BEGIN SELECT RAISE(ABORT, 'poison'); END"
                    )
            db.commit()
        try:
            yield
        finally:
            with contextlib.closing(sqlite3.connect(path)) as db:
                for table in tables:
                    for event in ("insert", "update"):
                        db.execute(f"DROP TRIGGER IF EXISTS poison_{event}_{table}")
                db.commit()

    yield TargetBackend(name="sqlite", build=build, read=_read, modes=MODES, poison=poison)


def _server_backend(
    request: Any, name: str, cls: type[PostgresConnector]
) -> Iterator[TargetBackend]:
    server: PostgresServer = postgres_for(request)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with server.connect() as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')

    def build(options: Mapping[str, Any], credentials: Mapping[str, str] | None) -> Connector:
        secrets = {"password": server.password} if credentials is None else dict(credentials)
        return cls.from_config(
            "warehouse", {**options, "dsn": server.dsn(), "schema": schema}, secrets
        )

    @contextlib.contextmanager
    def poison(connector: Connector) -> Iterator[None]:
        tables = _declared(connector)
        with server.connect() as admin:
            for table in tables:
                admin.execute(
                    f'ALTER TABLE "{schema}"."{table}" ADD CONSTRAINT poison '
                    "CHECK (key <> 'poison') NOT VALID"
                )
        try:
            yield
        finally:
            with server.connect() as admin:
                for table in tables:
                    admin.execute(
                        f'ALTER TABLE "{schema}"."{table}" DROP CONSTRAINT IF EXISTS poison'
                    )

    try:
        yield TargetBackend(
            name=name,
            build=build,
            read=_read,
            modes=MODES,
            credential_names=("password",),
            poison=poison,
        )
    finally:
        with server.connect() as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres_backend(request: Any) -> Iterator[TargetBackend]:
    """PostgreSQL: ON CONFLICT upserts."""
    yield from _server_backend(request, "postgres", PostgresConnector)


def redshift_on_postgres_backend(request: Any) -> Iterator[TargetBackend]:
    """The Redshift connector (staging + MERGE) on PostgreSQL 15."""
    yield from _server_backend(request, "redshift-on-postgres", RedshiftConnector)


SQL_BACKENDS = {
    "sqlite": sqlite_backend,
    "postgres": postgres_backend,
    "redshift-on-postgres": redshift_on_postgres_backend,
}
