"""The statements each SQL dialect writes a chunk with, and what its errors mean.

::

    operation        sqlite / postgres (one statement)           redshift (its own idiom)
    ─────────────    ──────────────────────────────────────────  ──────────────────────────────
    upsert           INSERT .. VALUES (..),(..) ON CONFLICT      SELECT the chunk's rows, then
                       (integration_id, patient_id, key)          CREATE TEMP TABLE (LIKE target),
                       DO UPDATE SET .. WHERE any column IS       INSERT the new and changed rows,
                       DISTINCT FROM (IS NOT) excluded            MERGE INTO target USING stage,
                       RETURNING the keys it wrote                DROP the stage
    update_only      SELECT .. FOR UPDATE the rows that exist,   as upsert, staging only the
                       then the upsert of those rows only          changed rows
    insert_only      .. ON CONFLICT DO NOTHING RETURNING         INSERT the rows not found
    delete_row       DELETE .. RETURNING                         SELECT, then DELETE
    prune            DELETE the scope's rows whose key is not kept (both)

Redshift's MERGE takes a table as its source (no subquery), no alias on the target, and both
WHEN clauses; it has no RETURNING, so what changed comes from the SELECT before it. PostgreSQL
15 runs the same MERGE, which is how it is tested.

Errors are classified from SQLSTATE codes (PostgreSQL, Redshift) or SQLite's error names,
never from driver text in a message (it may quote values): the message carries the code only.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from app.core.errors import (
    ConfigurationError,
    HealthieSyncError,
    TargetRejected,
    UpstreamUnavailable,
)
from connectors.sql_schema import KEY_COLUMNS, Family
from connectors.tables import SCOPE_COLUMNS

RowId = tuple[str, str, str]  # (integration_id, patient_id, key) within one table
Verdict = Literal["unavailable", "configuration", "rejected", "stale", "unscoped"]
Build = Callable[[list[dict[str, Any]]], Any]


def row_id(row: Sequence[Any]) -> RowId:
    """The identity of a row (scope columns first) within its table."""
    return (row[0], row[1], row[2])


def _key(table: sa.Table) -> list[sa.ColumnElement[Any]]:
    return [table.c[c] for c in KEY_COLUMNS]


class Compiled:
    """A multi-row statement compiled once for its shape (table, columns, row count), run with
    positional driver parameters: nothing is compiled or parsed again per chunk."""

    def __init__(self, statement: Any, dialect: sa.Dialect, slots: dict[str, tuple[int, int]]):
        compiled = statement.compile(dialect=dialect)
        if compiled.positiontup is None:
            raise TypeError(f"{dialect.name} binds by name; multi-row statements bind by position")
        self.sql: str = compiled.string
        order = [slots[name] for name in compiled.positiontup]
        # Placeholders in the rows' own order (row by row, each row's columns as given): the
        # parameters are the rows, flattened.
        self._natural = order == list(slots.values())
        self._order = order

    def params(self, rows: Sequence[Sequence[Any]]) -> tuple[Any, ...]:
        """The driver parameters for ``rows`` (tuples in the statement's column order)."""
        if self._natural:
            return tuple(chain.from_iterable(rows))
        return tuple(rows[i][j] for i, j in self._order)


# Compiled statements by everything their SQL depends on, shared by every connector.
_compiled: dict[tuple[Any, ...], Compiled] = {}
_compiled_lock = threading.Lock()
_COMPILED_LIMIT = 512


def multi_row(
    dialect: sa.Dialect, shape: tuple[Any, ...], columns: Sequence[str], count: int, build: Build
) -> Compiled:
    """The statement ``build`` makes of ``count`` rows of placeholders for ``columns``;
    ``shape`` names what else the SQL depends on (table, schema, statement kind)."""
    key = (dialect.name, dialect.paramstyle, *shape, tuple(columns), count)
    with _compiled_lock:
        found = _compiled.get(key)
    if found is not None:
        return found
    slots: dict[str, tuple[int, int]] = {}
    rows: list[dict[str, Any]] = []
    for i in range(count):
        row: dict[str, Any] = {}
        for j, c in enumerate(columns):
            slots[f"r{i}_{c}"] = (i, j)
            row[c] = sa.bindparam(f"r{i}_{c}")
        rows.append(row)
    compiled = Compiled(build(rows), dialect, slots)
    with _compiled_lock:
        if len(_compiled) >= _COMPILED_LIMIT:
            _compiled.pop(next(iter(_compiled)))  # the oldest: shapes are few in a steady run
        _compiled[key] = compiled
    return compiled


def run_raw(conn: sa.Connection, compiled: Compiled, rows: Sequence[Sequence[Any]]) -> list[Any]:
    """Run ``compiled`` for ``rows`` on the DBAPI cursor of ``conn``'s transaction; the rows it
    returns (none without RETURNING). Driver errors come out as SQLAlchemy's, like any other."""
    dbapi = conn.dialect.loaded_dbapi
    cursor = conn.connection.cursor()
    try:
        cursor.execute(compiled.sql, compiled.params(rows))
        return list(cursor.fetchall()) if cursor.description is not None else []
    except dbapi.Error as exc:
        raise sa.exc.DBAPIError.instance(
            compiled.sql, None, exc, dbapi.Error, hide_parameters=True, dialect=conn.dialect
        ) from exc
    finally:
        cursor.close()


def on_conflict(family: Family, table: sa.Table, columns: Sequence[str]) -> Build:
    """Upsert rows, updating only rows whose ``columns`` differ; returns the keys written."""

    def build(rows: list[dict[str, Any]]) -> Any:
        insert = _insert(family)(table).values(rows)
        if not columns:  # nothing but the key: an existing row cannot differ
            return insert.on_conflict_do_nothing(index_elements=KEY_COLUMNS).returning(*_key(table))
        excluded = insert.excluded
        # SQLAlchemy renders is_distinct_from as IS DISTINCT FROM, and as IS NOT on SQLite.
        differs = sa.or_(*(table.c[c].is_distinct_from(excluded[c]) for c in columns))
        assigned = {c: excluded[c] for c in (*columns, "run_id", "synced_at")}
        return insert.on_conflict_do_update(
            index_elements=KEY_COLUMNS, set_=assigned, where=differs
        ).returning(*_key(table))

    return build


def insert_new(family: Family, table: sa.Table) -> Build:
    """Insert the rows that do not exist; returns the keys inserted."""

    def build(rows: list[dict[str, Any]]) -> Any:
        insert = _insert(family)(table).values(rows)
        return insert.on_conflict_do_nothing(index_elements=KEY_COLUMNS).returning(*_key(table))

    return build


def insert_plain(table: sa.Table) -> Build:
    """Insert rows (Redshift's stage, or rows known not to exist)."""
    return lambda rows: sa.insert(table).values(rows)


def _insert(family: Family) -> Any:
    return postgresql.insert if family == "postgres" else sqlite.insert


def _matching(table: sa.Table, ids: Sequence[RowId]) -> sa.ColumnElement[bool]:
    # Per (integration, patient): the keys. Plain IN lists, which every dialect plans well.
    groups: dict[tuple[str, str], list[str]] = {}
    for integration, patient, key in ids:
        groups.setdefault((integration, patient), []).append(key)
    return sa.or_(
        *(
            sa.and_(
                table.c.integration_id == integration,
                table.c.patient_id == patient,
                table.c.key.in_(keys),
            )
            for (integration, patient), keys in groups.items()
        )
    )


def select_rows(
    table: sa.Table, ids: Sequence[RowId], columns: Sequence[str], *, lock: bool = False
) -> sa.Select[Any]:
    """The existing rows among ``ids`` (key columns, then ``columns``)."""
    query = sa.select(*_key(table), *(table.c[c] for c in columns)).where(_matching(table, ids))
    return query.with_for_update() if lock else query


def delete_rows(table: sa.Table, ids: Sequence[RowId], *, returning: bool) -> Any:
    """Delete the rows ``ids`` (returning the keys deleted when the dialect can)."""
    delete = sa.delete(table).where(_matching(table, ids))
    return delete.returning(*_key(table)) if returning else delete


def prune_rows(table: sa.Table, integration: str, patient: str, keep: Sequence[str]) -> Any:
    """Delete the scope's rows whose key is not in ``keep``."""
    where = sa.and_(table.c.integration_id == integration, table.c.patient_id == patient)
    if keep:
        where = sa.and_(where, table.c.key.not_in(keep))
    return sa.delete(table).where(where)


class Staging:
    """Redshift's MERGE idiom for one chunk: a temp table like the target, then MERGE. Temp
    tables belong to the session, so one name per target table serves every pooled
    connection; the stage is dropped before the chunk's transaction ends."""

    def __init__(self, conn: sa.Connection, target: sa.Table, columns: Sequence[str]) -> None:
        self.conn = conn
        self.target = target
        self.columns = [*SCOPE_COLUMNS, *columns]
        digest = hashlib.sha256(target.name.encode()).hexdigest()[:12]
        self.table = sa.Table(
            f"hs_stage_{digest}",
            sa.MetaData(),
            *(sa.Column(c, target.c[c].type, quote=True) for c in self.columns),
            quote=True,
        )
        preparer = conn.dialect.identifier_preparer
        self._q = preparer.quote_identifier
        self._target = preparer.format_table(target)
        self._stage = preparer.format_table(self.table)

    def create(self) -> None:
        """CREATE TEMP TABLE stage (LIKE target): the target's column types exactly."""
        self.conn.exec_driver_sql(f"CREATE TEMP TABLE {self._stage} (LIKE {self._target})")

    def merge(self) -> None:
        """MERGE the stage into the target (update matched rows, insert the others)."""
        q = self._q
        ref = q(self.target.name)  # the target is referred to by its bare name (no alias)
        on = " AND ".join(f"{ref}.{q(c)} = s.{q(c)}" for c in KEY_COLUMNS)
        updated = ", ".join(f"{q(c)} = s.{q(c)}" for c in self.columns if c not in KEY_COLUMNS)
        names = ", ".join(q(c) for c in self.columns)
        values = ", ".join(f"s.{q(c)}" for c in self.columns)
        self.conn.exec_driver_sql(
            f"MERGE INTO {self._target} USING {self._stage} AS s ON {on} "  # noqa: S608 - quoted
            f"WHEN MATCHED THEN UPDATE SET {updated} "
            f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})"
        )

    def drop(self) -> None:
        """Drop the stage (a temp table would otherwise live as long as the session)."""
        self.conn.exec_driver_sql(f"DROP TABLE {self._stage}")


# -- errors -------------------------------------------------------------------------------

_SQLITE: dict[str, Verdict] = {
    "SQLITE_BUSY": "unavailable",
    "SQLITE_LOCKED": "unavailable",
    "SQLITE_IOERR": "unavailable",
    "SQLITE_FULL": "unavailable",
    "SQLITE_PROTOCOL": "unavailable",
    "SQLITE_INTERRUPT": "unavailable",
    "SQLITE_CANTOPEN": "configuration",
    "SQLITE_PERM": "configuration",
    "SQLITE_READONLY": "configuration",
    "SQLITE_AUTH": "configuration",
    "SQLITE_NOTADB": "configuration",
    "SQLITE_CORRUPT": "configuration",
}
_POSTGRES_CLASSES: dict[str, Verdict] = {
    "08": "unavailable",  # connection exception
    "53": "unavailable",  # insufficient resources
    "57": "unavailable",  # operator intervention (shutdown, cancel, timeout)
    "58": "unavailable",  # system error
    "40": "unavailable",  # serialization failure, deadlock: the same work succeeds later
    "28": "configuration",  # invalid authorization
    "3D": "configuration",  # no such database
    "3F": "configuration",  # no such schema
}
_POSTGRES_CODES: dict[str, Verdict] = {
    "55P03": "unavailable",  # lock not available
    "42501": "configuration",  # insufficient privilege
    "42P10": "unscoped",  # no unique constraint matches ON CONFLICT: a table of another shape
    "42P01": "stale",  # undefined table: dropped behind our back
    "42703": "stale",  # undefined column
}
# libpq reports failed connections without a SQLSTATE: these answers of the server are
# configuration (matched to classify only; the text never reaches a message).
_CONNECT_REFUSALS = {
    "authentication failed": "28P01",
    "no pg_hba.conf entry": "28000",
    "does not exist": "3D000",  # the database or the role
}
# What to fix, by SQLSTATE class or code.
_HINTS = {
    "28": "check the password credential and the DSN's user",
    "3D": "the DSN names a database or user that does not exist",
    "3F": "options.schema names a schema that does not exist; create it first",
    "42501": "the DSN's user lacks a privilege the connector needs (CREATE, INSERT, DELETE)",
}


def hint(code: str) -> str:
    """What to fix for a configuration error of SQLSTATE ``code`` (a generic line otherwise)."""
    sqlstate = code.removeprefix("SQLSTATE ")
    return _HINTS.get(sqlstate) or _HINTS.get(sqlstate[:2]) or "check the target's options"


def classify(exc: sa.exc.DBAPIError) -> tuple[Verdict, str]:
    """What a driver error means, and a code to name it by (SQLSTATE, SQLite error name, or
    the exception's class): never the driver's text."""
    orig = exc.orig
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        return _classify_sqlite(orig, name), name
    code = getattr(orig, "sqlstate", None)
    if isinstance(code, str) and code:
        verdict = _POSTGRES_CODES.get(code) or _POSTGRES_CLASSES.get(code[:2], "rejected")
        return verdict, f"SQLSTATE {code}"
    label = type(orig).__name__ if orig is not None else type(exc).__name__
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        text = str(orig).lower()
        for refusal, sqlstate in _CONNECT_REFUSALS.items():
            if refusal in text:
                return "configuration", f"SQLSTATE {sqlstate}"
        return "unavailable", label
    if exc.connection_invalidated:
        return "unavailable", label
    return "rejected", label


def _classify_sqlite(orig: BaseException | None, name: str) -> Verdict:
    base = "_".join(name.split("_")[:2])  # SQLITE_CONSTRAINT_CHECK -> SQLITE_CONSTRAINT
    if base == "SQLITE_CONSTRAINT" or base in ("SQLITE_MISMATCH", "SQLITE_TOOBIG", "SQLITE_RANGE"):
        return "rejected"
    found = _SQLITE.get(base)
    if found is not None:
        return found
    text = str(orig).lower()
    if "no such table" in text or "no such column" in text or "has no column named" in text:
        return "stale"
    if "on conflict clause does not match" in text:
        return "unscoped"
    if "database is locked" in text:
        return "unavailable"
    return "rejected"


@contextmanager
def mapped(where: str, on_stale: Callable[[], None]) -> Iterator[None]:
    """Driver exceptions inside as the engine's kinds, named by ``where`` and a code only (the
    driver's text may quote values). A table changed behind our back (``stale``) calls
    ``on_stale`` and is retriable: the retry reflects it again."""
    try:
        yield
    except HealthieSyncError:
        raise
    except sa.exc.DBAPIError as exc:
        verdict, code = classify(exc)
        if verdict == "unavailable":
            raise UpstreamUnavailable(f"{where}: the database is unavailable ({code})") from exc
        if verdict == "configuration":
            raise ConfigurationError(f"{where}: refused ({code}); {hint(code)}") from exc
        if verdict == "stale":
            on_stale()
            raise UpstreamUnavailable(
                f"{where}: a table changed under the connector ({code})"
            ) from exc
        if verdict == "unscoped":
            raise ConfigurationError(
                f"{where}: a table lacks the primary key (integration_id, patient_id, key), "
                "so it predates row scoping; move the database aside or run "
                "`healthie-sync demo --reset`"
            ) from exc
        raise TargetRejected(f"{where}: the database refused the rows ({code})") from exc
    except sa.exc.TimeoutError as exc:  # no pooled connection came free in time
        raise UpstreamUnavailable(f"{where}: no database connection came free") from exc
    except sa.exc.SQLAlchemyError as exc:
        raise TargetRejected(f"{where}: refused ({type(exc).__name__})") from exc
    except (PermissionError, NotADirectoryError, IsADirectoryError) as exc:
        raise ConfigurationError(f"{where}: cannot use the path ({type(exc).__name__})") from exc
    except OSError as exc:
        raise UpstreamUnavailable(f"{where}: {type(exc).__name__}") from exc
