"""Tables of the SQL connectors: typed columns per dialect family, creation, migration, and the
value conversions in and out.

::

    declared column type   sqlite (affinity)     postgres                   redshift
    ────────────────────   ──────────────────    ───────────────────────    ─────────────────
    text                   TEXT                  TEXT                       VARCHAR(65535)
    integer                INTEGER               BIGINT                     BIGINT
    number                 REAL                  DOUBLE PRECISION           DOUBLE PRECISION
    boolean                BOOLEAN (0/1)         BOOLEAN                    BOOLEAN
    date                   DATE (ISO text)       DATE                       DATE
    timestamp              TIMESTAMP (ISO, UTC)  TIMESTAMP WITH TIME ZONE   TIMESTAMPTZ

Every table carries the scope columns (integration_id, patient_id, key, run_id, synced_at) with
the primary key (integration_id, patient_id, key) and an index on patient_id (Redshift has no
indexes). :class:`Schemas` reflects a table once and caches its shape; a column it has not seen
is looked up again (another process may have added it) and otherwise added with ALTER TABLE
ADD COLUMN, one column per statement (Redshift's limit). A table that lacks the scope columns
predates row scoping and is refused with a one-line fix. Type names reflect back to the
declared type, so SQLite's booleans come back as booleans.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.types import UserDefinedType

from app.core.errors import ConfigurationError
from connectors.tables import SCOPE_COLUMNS, ColumnType, Scalar, is_identifier

Family = Literal["sqlite", "postgres", "redshift"]
KEY_COLUMNS = ("integration_id", "patient_id", "key")


class _Named(UserDefinedType[Any]):
    """A SQLite column type that is only a name (SQLite derives the affinity from it); values
    pass through unprocessed, and :func:`from_db` converts them back."""

    cache_ok = True

    def __init__(self, name: str) -> None:
        self.name = name

    def get_col_spec(self, **kw: Any) -> str:
        return self.name


def column_type(family: Family, kind: ColumnType) -> sa.types.TypeEngine[Any]:
    """The SQLAlchemy type of a declared column in ``family``."""
    if family == "sqlite":
        names = {"text": "TEXT", "integer": "INTEGER", "number": "REAL"}
        return _Named(names.get(kind, kind.upper()))
    types: dict[str, sa.types.TypeEngine[Any]] = {
        # Redshift's TEXT is VARCHAR(256); its widest VARCHAR holds 65535 bytes.
        "text": sa.VARCHAR(65535) if family == "redshift" else sa.Text(),
        "integer": sa.BigInteger(),
        "number": sa.Double(),
        "boolean": sa.Boolean(),
        "date": sa.Date(),
        "timestamp": sa.DateTime(timezone=True),
    }
    return types[kind]


def _scope_type(family: Family, column: str) -> sa.types.TypeEngine[Any]:
    if column == "synced_at":
        return column_type(family, "timestamp")
    return sa.VARCHAR(512) if family == "redshift" else column_type(family, "text")


def kind_of(type_name: str) -> ColumnType:
    """The declared type a reflected SQL type name stands for (unknown names: text)."""
    name = type_name.lower()
    if "bool" in name:
        return "boolean"
    if "int" in name:
        return "integer"
    if any(n in name for n in ("double", "real", "float", "numeric", "decimal")):
        return "number"
    if "timestamp" in name or "datetime" in name:
        return "timestamp"
    if "date" in name:
        return "date"
    return "text"


def _timestamp(value: str | datetime) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    # A timestamp without an offset is taken as UTC, the engine's clock.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# What SQLite stores already: ISO dates, and UTC timestamps as datetime.isoformat writes them.
_SQLITE_DATE = re.compile(r"\d{4}-\d\d-\d\d")
_SQLITE_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00")


def to_db(family: Family, kind: ColumnType, value: Scalar | datetime) -> Any:
    """``value`` (validated: ISO strings for dates and timestamps) as the driver binds it:
    SQLite keeps canonical ISO text (timestamps in UTC), the servers get dates and datetimes."""
    if value is None:
        return None
    return converter(family, kind)(value)


def converter(family: Family, kind: ColumnType) -> Callable[[Any], Any]:
    """The conversion :func:`to_db` applies to a non-null value of ``kind``."""
    if kind == "timestamp":
        return _sqlite_timestamp if family == "sqlite" else _timestamp
    if kind == "date":
        return _sqlite_date if family == "sqlite" else _date
    if kind == "boolean":
        return _boolean
    if kind == "integer":
        return _integer
    return _same  # text is str, a number int or float: validated already


def _same(value: Any) -> Any:
    return value


def _sqlite_timestamp(value: str | datetime) -> str:
    if isinstance(value, str) and _SQLITE_UTC.fullmatch(value):
        return value
    return _timestamp(value).astimezone(UTC).isoformat()


def _sqlite_date(value: str) -> str:
    return value if _SQLITE_DATE.fullmatch(value) else date.fromisoformat(value).isoformat()


def _date(value: str) -> date:
    return date.fromisoformat(value)


def _boolean(value: Any) -> Any:
    # An undeclared table's text written into a column someone declared boolean.
    return value == "true" if value in ("true", "false") else value


def _integer(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def from_db(kind: ColumnType, value: Any) -> Any:
    """A stored value as written (SQLite keeps booleans as 0/1)."""
    if kind == "boolean" and isinstance(value, int) and not isinstance(value, bool):
        return bool(value)
    return value


@dataclass(frozen=True)
class Shape:
    """A table as it exists: its value columns (declared type each) and its SQLAlchemy table."""

    name: str
    columns: dict[str, ColumnType]
    table: sa.Table


def index_name(table: str) -> str:
    """The patient_id index's name (within PostgreSQL's 63 characters)."""
    name = f"{table}_patient_id_idx"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return f"{table[:40]}_{digest}_patient_idx"


def build_table(
    family: Family, schema: str | None, name: str, columns: dict[str, ColumnType]
) -> sa.Table:
    """The SQLAlchemy table: scope columns, then the value columns."""
    # Every identifier quoted: a valid declared name may still be a reserved word somewhere.
    cols = [
        sa.Column(c, _scope_type(family, c), nullable=c not in KEY_COLUMNS, quote=True)
        for c in SCOPE_COLUMNS
    ]
    cols += [sa.Column(c, column_type(family, kind), quote=True) for c, kind in columns.items()]
    return sa.Table(
        name,
        sa.MetaData(),
        *cols,
        sa.PrimaryKeyConstraint(*KEY_COLUMNS),
        schema=schema,
        quote=True,
        quote_schema=True,
    )


class Schemas:
    """The shapes of one connector's tables, reflected once and migrated as declared."""

    def __init__(
        self, family: Family, schema: str | None, on_statement: Callable[[], None]
    ) -> None:
        self.family = family
        self.schema = schema
        self._sent = on_statement  # counts a reflection or DDL round trip as a target request
        self._shapes: dict[str, Shape] = {}
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        """Forget every cached shape (a table was dropped or altered behind our back)."""
        with self._lock:
            self._shapes.clear()

    def cached(self, table: str) -> Shape | None:
        """The cached shape of ``table``, if any."""
        return self._shapes.get(table)

    def existing(self, engine: sa.Engine, table: str) -> Shape | None:
        """The shape of ``table`` if it exists (never creates it)."""
        shape = self._shapes.get(table)
        if shape is not None:
            return shape
        with self._lock, engine.begin() as conn:
            shape = self._load(conn, table)
            if shape is not None:
                self._shapes[table] = shape
            return shape

    def ensure(self, engine: sa.Engine, table: str, wanted: dict[str, ColumnType]) -> Shape:
        """The shape of ``table`` with at least the ``wanted`` columns: created or migrated
        (in its own transaction, so a refused data chunk never rolls back a migration)."""
        shape = self._shapes.get(table)
        if shape is not None and all(c in shape.columns for c in wanted):
            return shape
        with self._lock:
            for attempt in range(2):  # a concurrent migration may win the race once
                try:
                    with engine.begin() as conn:
                        shape = self._migrate(conn, table, wanted)
                    break
                except sa.exc.DBAPIError:
                    if attempt:
                        raise
            assert shape is not None
            self._shapes[table] = shape
            return shape

    def _load(self, conn: sa.Connection, table: str) -> Shape | None:
        found = self._columns(conn, table)
        return None if found is None else self._shape(table, found)

    def _shape(self, table: str, found: dict[str, str]) -> Shape:
        columns = {c: kind_of(t) for c, t in found.items() if c not in SCOPE_COLUMNS}
        return Shape(table, columns, build_table(self.family, self.schema, table, columns))

    def _columns(self, conn: sa.Connection, table: str) -> dict[str, str] | None:
        self._sent()
        found = reflect_columns(conn, self.family, self.schema, table)
        if found is not None and not all(c in found for c in KEY_COLUMNS):
            raise ConfigurationError(
                f"table {table!r} predates row scoping; move the database aside or run "
                "`healthie-sync demo --reset`"
            )
        return found

    def _migrate(self, conn: sa.Connection, table: str, wanted: dict[str, ColumnType]) -> Shape:
        found = self._columns(conn, table)
        if found is None:
            created = build_table(self.family, self.schema, table, wanted)
            self._sent()
            conn.execute(sa.schema.CreateTable(created, if_not_exists=True))
            if self.family != "redshift":  # Redshift has no indexes (sort keys instead)
                self._sent()
                index = sa.Index(index_name(table), created.c.patient_id)
                conn.execute(sa.schema.CreateIndex(index, if_not_exists=True))
            found = self._columns(conn, table)
            assert found is not None
        # A scoped table of an early version may lack the run columns; they are nullable.
        missing: dict[str, sa.types.TypeEngine[Any]] = {
            c: _scope_type(self.family, c) for c in ("run_id", "synced_at") if c not in found
        }
        missing.update(
            (c, column_type(self.family, kind)) for c, kind in wanted.items() if c not in found
        )
        preparer = conn.dialect.identifier_preparer
        target = preparer.format_table(build_table(self.family, self.schema, table, {}))
        for column, type_ in missing.items():
            self._sent()
            ddl = type_.compile(dialect=conn.dialect)
            column_sql = preparer.quote_identifier(column)
            conn.exec_driver_sql(f"ALTER TABLE {target} ADD COLUMN {column_sql} {ddl}")
        shape = self._load(conn, table) if missing else self._shape(table, found)
        assert shape is not None
        return shape


# -- reflection, per family (information_schema serves PostgreSQL and Redshift alike) --------

_SERVER_COLUMNS = sa.text(
    "SELECT column_name, data_type FROM information_schema.columns "
    "WHERE table_schema = COALESCE(:schema, current_schema()) AND table_name = :table "
    "ORDER BY ordinal_position"
)
_SERVER_SCOPED = sa.text(
    "SELECT table_name FROM information_schema.columns "
    "WHERE table_schema = COALESCE(:schema, current_schema()) "
    "AND column_name IN ('integration_id', 'patient_id', 'key') "
    "GROUP BY table_name HAVING COUNT(*) = 3"
)
_SQLITE_SCOPED = sa.text(
    "SELECT m.name FROM sqlite_master AS m JOIN pragma_table_info(m.name) AS c "
    "WHERE m.type = 'table' AND c.name IN ('integration_id', 'patient_id', 'key') "
    "GROUP BY m.name HAVING COUNT(*) = 3"
)


def reflect_columns(
    conn: sa.Connection, family: Family, schema: str | None, table: str
) -> dict[str, str] | None:
    """``table``'s columns and their SQL type names, or None when it does not exist."""
    if family == "sqlite":
        rows = conn.execute(sa.text("SELECT name, type FROM pragma_table_info(:t)"), {"t": table})
    else:
        rows = conn.execute(_SERVER_COLUMNS, {"schema": schema, "table": table})
    return {str(r[0]): str(r[1]) for r in rows} or None


def scoped_tables(conn: sa.Connection, family: Family, schema: str | None) -> list[str]:
    """Every table (of ``schema``) carrying the row-scope key columns."""
    if family == "sqlite":
        rows = conn.execute(_SQLITE_SCOPED)
    else:
        rows = conn.execute(_SERVER_SCOPED, {"schema": schema})
    return sorted(str(r[0]) for r in rows if is_identifier(str(r[0])))
