"""The SQL family on SQLAlchemy Core: SQLite, PostgreSQL and Redshift targets.

::

    SqlConnector (TableConnector)          one Engine per connector (closed in close())
    ├── SqliteConnector    kind sqlite     WAL, busy timeout, BEGIN IMMEDIATE; one writer
    ├── PostgresConnector  kind postgres   password from the credential, never in the DSN
    └── RedshiftConnector  kind redshift   stages each chunk, MERGE (no ON CONFLICT there)

A chunk of writes is one transaction: its tables are created or migrated first (in their own
transaction, ``connectors.sql_schema``), then each table's rows go in one multi-row statement
(``connectors.sql_dialects``), whose RETURNING (or, on Redshift, the SELECT before the MERGE)
says exactly which rows changed. A chunk naming the same row twice is applied in order, as
consecutive statements. Rows are keyed by the write's scope, never by the plan: see
``connectors.tables``.

Driver errors are mapped once, at this edge (``sql_dialects.mapped``): connection failures and
a locked SQLite database are UpstreamUnavailable (retried), authentication and a table that
predates row scoping are ConfigurationError, everything the database refuses is TargetRejected
(the base then bisects the chunk to the bad row). Messages name the operation and a SQLSTATE or
error name only. Worker threads may share one connector: PostgreSQL and Redshift draw on the
engine's pool; SQLite's writes take turns (one writer per file), under WAL and a busy timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar, cast

import sqlalchemy as sa
from pydantic import ConfigDict, Field, field_validator

from app.core.errors import ConfigurationError
from connectors.base import Scope, Write, WriteResult
from connectors.sql_dialects import (
    Build,
    RowId,
    Staging,
    delete_rows,
    insert_new,
    insert_plain,
    mapped,
    multi_row,
    on_conflict,
    prune_rows,
    row_id,
    run_raw,
    select_rows,
)
from connectors.sql_schema import (
    Family,
    Schemas,
    Shape,
    converter,
    from_db,
    scoped_tables,
    to_db,
)
from connectors.tables import (
    IDENTIFIER,
    SCOPE_COLUMNS,
    ColumnType,
    DeleteRow,
    TableConnector,
    TableOptions,
    UpsertRow,
)

Rows = list[list[Any]]  # a chunk's rows: the scope columns, then the written ones
Records = list[dict[str, Any]]


class SqliteOptions(TableOptions):
    """A SQLite database file (or ``:memory:``)."""

    path: str = Field(min_length=1)
    #: seconds a write waits for another process's write lock before it is retried later
    busy_timeout: float = Field(default=30.0, gt=0, le=600)


class ServerOptions(TableOptions):
    """A database server: a SQLAlchemy URL without the password (that is a credential)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    dsn: str = Field(min_length=1)
    #: the schema the tables live in (default: the user's current schema)
    db_schema: str | None = Field(default=None, alias="schema", pattern=IDENTIFIER)

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str) -> str:
        # Never echo the value: a DSN pasted with its password must not reach a log.
        try:
            url = sa.engine.make_url(value)
        except sa.exc.ArgumentError:
            raise ValueError("not a SQLAlchemy URL (postgresql+psycopg://user@host/db)") from None
        if url.password is not None:
            raise ValueError("must not hold the password; put it in [targets.credentials]")
        if not url.drivername.startswith("postgresql"):
            raise ValueError("must be a postgresql URL (postgresql+psycopg://user@host/db)")
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")  # the driver installed
        return url.render_as_string(hide_password=False)


class RedshiftOptions(ServerOptions):
    """Redshift: its widest VARCHAR holds 65535 bytes."""

    max_value_bytes: int = Field(default=65_535, ge=1, le=65_535)


class SqlConnector(TableConnector):
    """Rows of declared tables in a SQL database (see the module docstring)."""

    family: ClassVar[Family]
    #: bound parameters per statement (SQLite's limit is 32766, PostgreSQL's 65535)
    max_params: ClassVar[int] = 32_000
    max_batch: ClassVar[int] = 500

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        self._engine: sa.Engine | None = None
        self._engine_lock = threading.Lock()
        self._local = threading.local()  # statements sent by this thread's current call
        self.schemas = Schemas(self.family, self.db_schema, self._sent)

    @property
    def db_schema(self) -> str | None:
        """The schema the tables live in (None: the connection's default)."""
        return getattr(self.options, "db_schema", None)

    def _create_engine(self) -> sa.Engine:
        raise NotImplementedError

    def _serial(self) -> AbstractContextManager[Any]:
        return nullcontext()

    @property
    def engine(self) -> sa.Engine:
        """The connector's engine (created on first use; nothing connects before a write)."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._create_engine()
            return self._engine

    def probe(self) -> str:
        """See :meth:`Connector.probe`: connect and run ``SELECT 1``."""
        with self._mapped("probe"), self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return "connected and ran SELECT 1"

    def close(self) -> None:
        """Close the pool."""
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    # -- operations ----------------------------------------------------------------------------
    def write_upsert_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Insert or update each row (as the sync mode allows), one transaction."""
        changed = self._chunk("upsert_row", batch, self._upsert, create=True)
        return _results(self.name, "upsert_row", batch, changed)

    def write_delete_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """Delete each row of the patient, if present, one transaction."""
        changed = self._chunk("delete_row", batch, self._delete, create=False)
        return _results(self.name, "delete_row", batch, changed)

    def prune(self, scope: Scope, keep: Mapping[str, set[str]]) -> None:
        """Mirror mode: delete the scope's rows whose keys are not kept, in every declared
        table (undeclared: every scoped table of the database), one transaction; retried and
        guarded as writes are."""

        def run() -> None:
            self._local.sent = 0
            with self._mapped("prune"), self._serial():
                names = sorted(self.table_options.tables or {})
                if self.table_options.tables is None:
                    with self.engine.connect() as conn:
                        self._sent()
                        names = scoped_tables(conn, self.family, self.db_schema)
                shapes = [self.schemas.existing(self.engine, n) for n in names]
                with self.engine.begin() as conn:
                    for shape in shapes:
                        if shape is not None:
                            self._prune(conn, shape, scope, sorted(keep.get(shape.name, ())))
            self.requests += self._local.sent

        self.retry.call(lambda: self.guard.call(run))

    def ensure_tables(self) -> None:
        """Create or migrate every declared table now (otherwise done by the first write)."""
        with self._mapped("migrate"), self._serial():
            for table, columns in (self.table_options.tables or {}).items():
                self.schemas.ensure(self.engine, table, dict(columns))

    def fetch_rows(self, table: str) -> Records:
        """Every row of ``table`` (all integrations and patients), values as written."""
        with self._mapped("read"), self._serial():
            shape = self.schemas.existing(self.engine, table)
            if shape is None:
                return []
            with self.engine.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(sa.select(shape.table))]
        for row in rows:
            for column, kind in shape.columns.items():
                row[column] = from_db(kind, row[column])
        return rows

    # -- a chunk -------------------------------------------------------------------------------
    def _chunk(
        self,
        what: str,
        batch: Sequence[Write],
        apply: Callable[[sa.Connection, Shape, Rows, list[str]], set[RowId]],
        *,
        create: bool,
    ) -> list[bool]:
        changed = [False] * len(batch)
        self._local.sent = 0
        with self._mapped(what), self._serial():
            generations = _generations(batch)
            shapes = {t: self._shape(t, batch, idx, create) for t, idx in _tables(generations)}
            with self.engine.begin() as conn:
                for generation in generations:
                    for table, indexes in generation.items():
                        shape = shapes[table]
                        if shape is None:  # deleting from a table never written: nothing
                            continue
                        rows, columns = self._rows(shape, [batch[i] for i in indexes])
                        hit = apply(conn, shape, rows, columns)
                        if len(hit) == len(rows):  # every row written (no id twice here)
                            for i in indexes:
                                changed[i] = True
                        elif hit:
                            for i, row in zip(indexes, rows, strict=True):
                                changed[i] = row_id(row) in hit
        self.requests += max(0, self._local.sent - 1)  # the base counted one
        return changed

    def _shape(
        self, table: str, batch: Sequence[Write], indexes: list[int], create: bool
    ) -> Shape | None:
        if not create:
            return self.schemas.existing(self.engine, table)
        values: dict[str, Any] = {}
        if (self.table_options.tables or {}).get(table) is None:  # undeclared: what is written
            for i in indexes:
                args = batch[i].args
                assert isinstance(args, UpsertRow)
                values.update(args.values)
        return self.schemas.ensure(self.engine, table, self.columns_of(table, values))

    def _rows(self, shape: Shape, writes: Sequence[Write]) -> tuple[Rows, list[str]]:
        declared = (self.table_options.tables or {}).get(shape.name)
        # A declared table writes its declared columns (a column only the database has is left
        # alone); an undeclared one is its values, every other column NULL (as in memory).
        columns = list(declared) if declared is not None else list(shape.columns)
        kinds: dict[str, ColumnType] = {**shape.columns, **(declared or {})}
        # Validated values bind as they are, but dates and timestamps (ISO strings), and text
        # of an undeclared table written into a column someone else typed.
        as_is = ("text", "number", "integer", "boolean") if declared else ("text", "number")
        convert = [
            (5 + n, converter(self.family, kinds[c]))  # after the five scope columns
            for n, c in enumerate(columns)
            if kinds[c] not in as_is
        ]
        family, last_at, synced = self.family, None, None
        rows: Rows = []
        for write in writes:
            scope, args = write.scope, write.args
            assert isinstance(args, UpsertRow | DeleteRow)
            if scope.synced_at is not last_at:  # a chunk's writes mostly share one sync time
                last_at, synced = scope.synced_at, to_db(family, "timestamp", scope.synced_at)
            values = args.values if isinstance(args, UpsertRow) else {}
            row = [
                scope.integration_id,
                scope.patient_id,
                args.key,
                scope.run_id,
                synced,
                *map(values.get, columns),
            ]
            for n, convert_value in convert:
                if row[n] is not None:
                    row[n] = convert_value(row[n])
            rows.append(row)
        return rows, columns

    def _step(self, width: int) -> int:
        """Rows a statement of ``width`` columns binds at most."""
        return max(1, min(self.max_batch, self.max_params // max(1, width)))

    def _slices(self, rows: Rows, width: int) -> Iterator[Rows]:
        step = self._step(width)
        for start in range(0, len(rows), step):
            yield rows[start : start + step]

    def _sent(self) -> None:
        self._local.sent = getattr(self._local, "sent", 0) + 1

    def _execute(self, conn: sa.Connection, statement: Any) -> list[Any]:
        self._sent()
        result = conn.execute(statement)
        return list(result.all()) if result.returns_rows else []

    def _execute_rows(
        self,
        conn: sa.Connection,
        key: tuple[Any, ...],
        names: Sequence[str],
        rows: Rows,
        build: Build,
    ) -> list[Any]:
        """Multi-row statements, compiled once per shape and run on the driver's cursor (a
        chunk's rows are many: SQLAlchemy's per-row result handling would cost more than the
        database); returns what they RETURNING-ed, if anything.

        A statement's SQL depends on its row count, and compiling one costs more than running
        it, so the rows go in statements of a few sizes only: a full slice as one, any other
        count as power-of-two parts (137 rows: 128 + 8 + 1). A steady run then compiles
        nothing, whatever the sizes of its chunks."""
        shape = (self.family, self.db_schema, *key)
        returned: list[Any] = []
        for part in _sized_parts(rows, self._step(len(names))):
            compiled = multi_row(conn.dialect, shape, names, len(part), build)
            self._sent()
            returned.extend(run_raw(conn, compiled, part))
        return returned

    def _mapped(self, what: str) -> AbstractContextManager[None]:
        return mapped(f"target {self.name!r} ({self.kind}): {what}", self.schemas.invalidate)

    # -- the statements (ON CONFLICT dialects; Redshift overrides) -------------------------------
    def _upsert(
        self, conn: sa.Connection, shape: Shape, rows: Rows, columns: list[str]
    ) -> set[RowId]:
        mode = self.table_options.mode
        insert_only = mode == "insert_only"
        build = (
            insert_new(self.family, shape.table)
            if insert_only
            else on_conflict(self.family, shape.table, columns)
        )
        hit: set[RowId] = set()
        names = [*SCOPE_COLUMNS, *columns]
        for part in self._slices(rows, len(names)):
            if mode == "update_only":  # lock the rows that exist; only those are written
                found = self._existing(conn, shape, part, [], lock=True)
                part = [r for r in part if row_id(r) in found]
                if not part:
                    continue
            key = ("insert" if insert_only else "upsert", shape.name)
            hit.update(map(tuple, self._execute_rows(conn, key, names, part, build)))
        return hit

    def _delete(
        self, conn: sa.Connection, shape: Shape, rows: Rows, columns: list[str]
    ) -> set[RowId]:
        hit: set[RowId] = set()
        for part in self._slices(rows, 3):
            statement = delete_rows(shape.table, [row_id(r) for r in part], returning=True)
            hit.update((r[0], r[1], r[2]) for r in self._execute(conn, statement))
        return hit

    def _existing(
        self,
        conn: sa.Connection,
        shape: Shape,
        rows: Rows,
        columns: list[str],
        *,
        lock: bool = False,
    ) -> dict[RowId, tuple[Any, ...]]:
        """The rows among ``rows`` that exist, with their ``columns`` values."""
        found: dict[RowId, tuple[Any, ...]] = {}
        for part in self._slices(rows, 3):
            query = select_rows(shape.table, [row_id(r) for r in part], columns, lock=lock)
            for r in self._execute(conn, query):
                found[(r[0], r[1], r[2])] = tuple(r[3:])
        return found

    def _prune(self, conn: sa.Connection, shape: Shape, scope: Scope, keep: list[str]) -> None:
        integration, patient = scope.integration_id, scope.patient_id
        if len(keep) < self.max_params - 10:
            self._execute(conn, prune_rows(shape.table, integration, patient, keep))
            return
        # More keys than one statement binds: find the scope's keys, delete the others.
        kept = set(keep)
        query = sa.select(shape.table.c.key).where(
            shape.table.c.integration_id == integration, shape.table.c.patient_id == patient
        )
        doomed = [
            (integration, patient, str(k)) for (k,) in self._execute(conn, query) if k not in kept
        ]
        for start in range(0, len(doomed), self.max_params // 3):
            part = doomed[start : start + self.max_params // 3]
            self._execute(conn, delete_rows(shape.table, part, returning=False))


def _sized_parts(rows: Rows, step: int) -> Iterator[Rows]:
    """``rows`` (at most ``step``) as one part when full, else as parts of power-of-two sizes,
    largest first."""
    if len(rows) >= step:
        yield rows
        return
    start = 0
    while start < len(rows):
        size = 1 << ((len(rows) - start).bit_length() - 1)
        yield rows[start : start + size]
        start += size


def _key(write: Write) -> str:
    return cast(UpsertRow | DeleteRow, write.args).key  # validated: a table operation's


def _table(write: Write) -> str:
    return cast(UpsertRow | DeleteRow, write.args).table


def _results(
    target: str, operation: str, batch: Sequence[Write], changed: list[bool]
) -> list[WriteResult]:
    # What Connector.ok builds, without looking the key field up per write (it is "key").
    return [WriteResult(target, operation, _key(w), c) for w, c in zip(batch, changed, strict=True)]


def _generations(batch: Sequence[Write]) -> list[dict[str, list[int]]]:
    # The n-th write of a row goes in generation n: no statement names a row twice, and the
    # writes of one row apply in order. (TableConnector.row_id, inlined: this is per write.)
    ids = [(w.scope.integration_id, w.scope.patient_id, _table(w), _key(w)) for w in batch]
    if len(set(ids)) == len(ids):  # the usual chunk: every row once
        tables: dict[str, list[int]] = {}
        for i, rid in enumerate(ids):
            tables.setdefault(rid[2], []).append(i)
        return [tables]
    seen: dict[tuple[str, str, str, str], int] = {}
    generations: list[dict[str, list[int]]] = []
    for i, rid in enumerate(ids):
        n = seen[rid] = seen.get(rid, -1) + 1
        if n == len(generations):
            generations.append({})
        generations[n].setdefault(rid[2], []).append(i)
    return generations


def _tables(generations: list[dict[str, list[int]]]) -> Iterator[tuple[str, list[int]]]:
    merged: dict[str, list[int]] = {}
    for generation in generations:
        for table, indexes in generation.items():
            merged.setdefault(table, []).extend(indexes)
    yield from merged.items()


class SqliteConnector(SqlConnector):
    """SQLite: a file (WAL, so readers never block the writer) or ``:memory:``."""

    kind: ClassVar[str] = "sqlite"
    description: ClassVar[str] = "Rows in a SQLite database file, one table per declared table."
    options_model: ClassVar[type[SqliteOptions]] = SqliteOptions
    family: ClassVar[Family] = "sqlite"

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        # SQLite has one writer at a time: the connector's threads take turns here instead of
        # sleeping in the busy handler (other processes still wait up to the busy timeout).
        self._writer = threading.Lock()
        # Open the file now (creating it, in WAL mode): a path that cannot be a database fails
        # when the target is built, as a configuration error, not on the first write.
        with self._mapped("open"), self.engine.connect():
            pass

    def _serial(self) -> AbstractContextManager[Any]:
        return self._writer

    def _create_engine(self) -> sa.Engine:
        options = self.options
        assert isinstance(options, SqliteOptions)
        path, busy = options.path, options.busy_timeout
        memory = path == ":memory:"
        if not memory:
            try:
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigurationError(
                    f"target {self.name!r} (sqlite): options.path: its directory cannot be "
                    f"created ({type(exc).__name__})"
                ) from exc
        engine = sa.create_engine(
            sa.engine.URL.create("sqlite+pysqlite", database=path),
            # One shared connection for :memory: (each connection would be its own database).
            poolclass=sa.pool.StaticPool if memory else sa.pool.QueuePool,
            connect_args={"check_same_thread": False, "timeout": busy},
            hide_parameters=True,
        )

        def on_connect(dbapi: Any, _record: Any) -> None:
            dbapi.isolation_level = None  # transactions begin below, not in the driver
            cursor = dbapi.cursor()
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
            cursor.close()

        def on_begin(conn: sa.Connection) -> None:
            # IMMEDIATE takes the write lock up front: a deferred transaction that reads, then
            # writes, fails at once (SQLITE_BUSY_SNAPSHOT) when another writer came first.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        sa.event.listen(engine, "connect", on_connect)
        sa.event.listen(engine, "begin", on_begin)
        return engine


class PostgresConnector(SqlConnector):
    """PostgreSQL (psycopg 3): ON CONFLICT upserts with RETURNING."""

    kind: ClassVar[str] = "postgres"
    description: ClassVar[str] = "Rows in PostgreSQL tables (optionally in one schema)."
    options_model: ClassVar[type[ServerOptions]] = ServerOptions
    credential_names: ClassVar[tuple[str, ...]] = ("password",)
    family: ClassVar[Family] = "postgres"
    max_params: ClassVar[int] = 60_000

    def _connect_args(self) -> dict[str, Any]:
        return {"connect_timeout": 10, "application_name": "healthie-sync"}

    def _create_engine(self) -> sa.Engine:
        import psycopg

        options = self.options
        assert isinstance(options, ServerOptions)
        url = sa.engine.make_url(options.dsn)
        password = self.credentials["password"].get_secret_value()
        engine = sa.create_engine(
            url.set(password=password),
            # PostgreSQL's own $n placeholders, passed through by psycopg's raw cursors: a
            # chunk's statement has thousands of parameters, and psycopg would parse named
            # ones out of the SQL text again on every execution.
            paramstyle="numeric_dollar",
            pool_pre_ping=True,  # a connection the server dropped is replaced, not used
            pool_size=5,
            max_overflow=10,
            pool_timeout=30,
            hide_parameters=True,  # SQLAlchemy's messages would otherwise quote row values
            connect_args=self._connect_args(),
        )

        def on_connect(dbapi: Any, _record: Any) -> None:
            dbapi.cursor_factory = psycopg.RawCursor

        sa.event.listen(engine, "connect", on_connect)
        return engine


class RedshiftConnector(PostgresConnector):
    """Amazon Redshift (its PostgreSQL protocol, psycopg 3): staged chunks and MERGE."""

    kind: ClassVar[str] = "redshift"
    description: ClassVar[str] = "Rows in Amazon Redshift tables, merged from staged chunks."
    options_model: ClassVar[type[ServerOptions]] = RedshiftOptions
    family: ClassVar[Family] = "redshift"
    max_params: ClassVar[int] = 32_000

    def _connect_args(self) -> dict[str, Any]:
        # No server-side prepared statements: Redshift's protocol support for them is partial.
        return {"connect_timeout": 10, "prepare_threshold": None}

    def _upsert(
        self, conn: sa.Connection, shape: Shape, rows: Rows, columns: list[str]
    ) -> set[RowId]:
        mode = self.table_options.mode
        # Redshift's MERGE returns nothing: what changes is known from the rows before it, and
        # only new or changed rows are staged (an unchanged row keeps its run and time).
        found = self._existing(conn, shape, rows, columns)
        fresh = [r for r in rows if row_id(r) not in found]
        changed = [r for r in rows if row_id(r) in found and found[row_id(r)] != tuple(r[5:])]
        names = [*SCOPE_COLUMNS, *columns]
        if mode == "insert_only":
            for part in self._slices(fresh, len(names)):
                self._execute_rows(
                    conn, ("insert", shape.name), names, part, insert_plain(shape.table)
                )
            return {row_id(r) for r in fresh}
        staged = changed if mode == "update_only" else fresh + changed
        if staged:
            stage = Staging(conn, shape.table, columns)
            self._sent()
            stage.create()
            load = insert_plain(stage.table)
            for part in self._slices(staged, len(names)):
                self._execute_rows(conn, ("stage", shape.name), names, part, load)
            self._sent()
            stage.merge()
            self._sent()
            stage.drop()
        return {row_id(r) for r in staged}

    def _delete(
        self, conn: sa.Connection, shape: Shape, rows: Rows, columns: list[str]
    ) -> set[RowId]:
        found = list(self._existing(conn, shape, rows, []))
        for start in range(0, len(found), self.max_params // 3):
            part = found[start : start + self.max_params // 3]
            self._execute(conn, delete_rows(shape.table, part, returning=False))
        return set(found)
