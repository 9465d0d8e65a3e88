"""What every table-shaped target shares (SQL databases, files, BigQuery, the in-memory fake):
the ``upsert_row`` / ``delete_row`` operations, declared tables with typed columns, sync modes,
and the checks that run before any I/O.

A row is identified by ``(integration_id, patient_id, table, key)``: ``key`` is the Healthie
object id (the patient's own id for the patient row, an appointment's id for its row), and the
integration and patient come from the write's scope, never from the plan. So a plan for patient
A that names B's id as a key writes a row of A's, and two integrations sharing a database never
touch each other's rows. Each row also carries the run id and the time it was synced.

Declared tables (``options.tables``, or derived from a compiled plan) limit what a plan may
write: an undeclared table or column is refused before any I/O. A target with no declarations
at all (``tables`` unset) accepts any valid identifier, as text; the runtime refuses that for
the Claude backend, whose writes must be declared. Values are checked against their column's
type and capped in size; errors name fields, never values.

Sync modes: ``upsert`` (default), ``update_only`` (rows that exist), ``insert_only`` (rows that
do not), ``mirror`` (upsert, then delete the patient's rows of items gone from the entry, and
all rows of a patient Healthie no longer has).
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.errors import PlanValidationError
from connectors.base import Connector, OperationSpec, Write, safe_name

#: table and column names: lower-case letters, digits and underscores, starting with a letter
IDENTIFIER = r"^[a-z][a-z0-9_]{0,62}$"
_IDENTIFIER = re.compile(r"[a-z][a-z0-9_]{0,62}")  # always used with fullmatch: no "\n"
#: columns every row carries; a plan may not write them
SCOPE_COLUMNS = ("integration_id", "patient_id", "key", "run_id", "synced_at")

Scalar = str | int | float | bool | None
ColumnType = Literal["text", "integer", "number", "boolean", "date", "timestamp"]
SyncMode = Literal["upsert", "update_only", "insert_only", "mirror"]


def is_identifier(name: str) -> bool:
    """True for a valid table or column name (the whole string, no trailing newline)."""
    return _IDENTIFIER.fullmatch(name) is not None


def _identifier(value: str) -> str:
    if not is_identifier(value):
        raise ValueError("must be lower-case letters, digits and _ (at most 63), from a letter")
    return value


class UpsertRow(BaseModel):
    """Insert or update one row of ``table``, keyed by ``key`` (a Healthie id) within the
    patient's rows."""

    table: str = Field(pattern=IDENTIFIER)
    key: str = Field(min_length=1, max_length=128)
    patient_id: str = Field(min_length=1, max_length=64)
    values: dict[str, Scalar] = Field(default_factory=dict)

    _table = field_validator("table")(classmethod(lambda cls, v: _identifier(v)))


class DeleteRow(BaseModel):
    """Delete the patient's row ``key`` of ``table`` if it exists."""

    table: str = Field(pattern=IDENTIFIER)
    key: str = Field(min_length=1, max_length=128)
    patient_id: str = Field(min_length=1, max_length=64)

    _table = field_validator("table")(classmethod(lambda cls, v: _identifier(v)))


class TableOptions(BaseModel):
    """Options every table target accepts."""

    model_config = ConfigDict(extra="forbid")

    #: table -> column -> type; None: undeclared (any valid identifier, as text)
    tables: dict[str, dict[str, ColumnType]] | None = None
    mode: SyncMode = "upsert"
    #: largest text value accepted, in UTF-8 bytes
    max_value_bytes: int = Field(default=65_536, ge=1, le=10_000_000)

    @field_validator("tables")
    @classmethod
    def _names(
        cls, value: dict[str, dict[str, ColumnType]] | None
    ) -> dict[str, dict[str, ColumnType]] | None:
        for table, columns in (value or {}).items():
            _identifier(table)
            for column in columns:
                _identifier(column)
                if column in SCOPE_COLUMNS:
                    raise ValueError(f"column {column!r} of {table!r} is reserved")
        return value


TABLE_OPERATIONS: dict[str, OperationSpec] = {
    "upsert_row": OperationSpec("upsert_row", UpsertRow, UpsertRow.__doc__ or ""),
    "delete_row": OperationSpec("delete_row", DeleteRow, DeleteRow.__doc__ or ""),
}


def check_value(where: str, kind: ColumnType, value: Scalar, max_bytes: int) -> Scalar:
    """``value`` as column type ``kind`` (text takes any scalar, as text); PlanValidationError
    naming ``where`` (never the value) when it does not fit."""
    if value is None:
        return None
    if kind == "text":
        text = value if isinstance(value, str) else _as_text(value)
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: no target can store it
            raise PlanValidationError(f"{where}: not valid Unicode text") from None
        if size > max_bytes:
            raise PlanValidationError(f"{where}: value longer than {max_bytes} bytes")
        return text
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise PlanValidationError(f"{where}: not a finite number")
        return value
    if kind == "date" and isinstance(value, str):
        try:
            date.fromisoformat(value)
        except ValueError:
            raise PlanValidationError(f"{where}: not an ISO date") from None
        return value
    if kind == "timestamp" and isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise PlanValidationError(f"{where}: not an ISO timestamp") from None
        return value
    raise PlanValidationError(f"{where}: a {type(value).__name__} is not a {kind}")


def _as_text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Declared columns that are writable (identifiers, not scope columns) with their types, per
# declaration: the names are checked once per table, not once per value. Keyed by the
# declaration's id, holding it (so the id is not reused while the entry lives) and a copy that
# must still equal it (a declaration changed in place is checked again).
_Cached = tuple[dict[str, ColumnType], dict[str, ColumnType], dict[str, ColumnType]]
_WRITABLE: dict[int, _Cached] = {}
_NO_COLUMNS: dict[str, ColumnType] = {}


def _writable(columns: dict[str, ColumnType] | None) -> dict[str, ColumnType]:
    """The writable subset of a table's declared columns (empty when undeclared: every
    column then goes through the name checks)."""
    if columns is None:
        return _NO_COLUMNS
    found = _WRITABLE.get(id(columns))
    if found is not None and found[0] is columns and found[1] == columns:
        return found[2]
    writable = {
        c: kind for c, kind in columns.items() if is_identifier(c) and c not in SCOPE_COLUMNS
    }
    if len(_WRITABLE) >= 1024:  # declarations are few and long-lived; never grow unbounded
        _WRITABLE.clear()
    _WRITABLE[id(columns)] = (columns, dict(columns), writable)
    return writable


class TableConnector(Connector):
    """A target whose records are rows of declared tables (see the module docstring)."""

    operations: ClassVar[dict[str, OperationSpec]] = TABLE_OPERATIONS
    options_model: ClassVar[type[BaseModel]] = TableOptions
    #: sync modes this target offers (files only append, so they offer upsert alone)
    modes: ClassVar[tuple[SyncMode, ...]] = ("upsert", "update_only", "insert_only", "mirror")

    @classmethod
    def parse_options(cls, target: str, options: Any) -> BaseModel:
        """Options validated, and the sync mode one this target offers."""
        parsed = super().parse_options(target, options)
        mode = getattr(parsed, "mode", "upsert")
        if mode not in cls.modes:
            from app.core.errors import ConfigurationError

            raise ConfigurationError(
                f"target {target!r} ({cls.kind}): options.mode {mode!r} is not offered; "
                f"use one of {list(cls.modes)}"
            )
        return parsed

    @classmethod
    def check_args(cls, options: BaseModel, operation: str, args: BaseModel) -> BaseModel:
        """Declared table and columns, typed values within the size cap. Returns ``args``
        itself when every value already has its column's form (the common case), else a copy
        with the values converted (text columns take any scalar, as text)."""
        assert isinstance(options, TableOptions)
        assert isinstance(args, UpsertRow | DeleteRow)
        table = args.table
        columns = None if options.tables is None else options.tables.get(table)
        if options.tables is not None and columns is None:
            raise PlanValidationError(
                f"table {table!r} is not declared for this target "
                "(declare it in [targets.options.tables])"
            )
        if not isinstance(args, UpsertRow):
            return args
        writable = _writable(columns)
        max_bytes = options.max_value_bytes
        checked: dict[str, Scalar] | None = None
        for column, value in args.values.items():
            kind = writable.get(column)
            if kind is None:
                # not a declared, writable column: say which check it fails, by its name
                # only when it reads as one (a value put where a name goes is not repeated)
                if not is_identifier(column) or column in SCOPE_COLUMNS:
                    raise PlanValidationError(
                        f"{table}.{safe_name(column)}: not a writable column name"
                    )
                if columns is not None:
                    raise PlanValidationError(
                        f"{table}.{column}: column not declared for this target"
                    )
                kind = "text"
            if kind == "text" and type(value) is str and value.isascii():
                # the common case, without an encode: ASCII is valid and one byte a character
                if len(value) > max_bytes:
                    raise PlanValidationError(
                        f"{table}.{column}: value longer than {max_bytes} bytes"
                    )
                ok: Scalar = value
            else:
                ok = check_value(f"{table}.{column}", kind, value, max_bytes)
            if ok is not value and checked is None:
                checked = dict(args.values)
            if checked is not None:
                checked[column] = ok
        return args if checked is None else args.model_copy(update={"values": checked})

    @property
    def table_options(self) -> TableOptions:
        """The options, typed."""
        assert isinstance(self.options, TableOptions)
        return self.options

    def columns_of(self, table: str, values: dict[str, Scalar]) -> dict[str, ColumnType]:
        """The typed columns of ``table``: declared, or (undeclared) the written ones as text."""
        declared = (self.table_options.tables or {}).get(table)
        if declared is not None:
            return dict(declared)
        return {c: "text" for c in values}

    @staticmethod
    def row_id(write: Write) -> tuple[str, str, str, str]:
        """``(integration_id, patient_id, table, key)``: who a row belongs to and what it is."""
        args = write.args
        assert isinstance(args, UpsertRow | DeleteRow)
        return (write.scope.integration_id, write.scope.patient_id, args.table, args.key)
