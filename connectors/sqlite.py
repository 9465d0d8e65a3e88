"""SQLite target: upsert rows keyed by a Healthie id into tables the plan names.

Tables and columns are created on first use (every value column is nullable), so an instruction
document can add a field without a migration step. Identifiers are validated, never interpolated
from unchecked input.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from app.core.errors import ConfigurationError, TargetRejected, UpstreamUnavailable
from connectors.base import Connector, OperationSpec, WriteResult

IDENTIFIER = r"^[a-z][a-z0-9_]{0,62}$"
Scalar = str | int | float | bool | None


class UpsertRow(BaseModel):
    """Insert or replace one row of ``table`` whose primary key ``key`` is a Healthie id."""

    table: str = Field(pattern=IDENTIFIER)
    key: str = Field(min_length=1, max_length=64)
    patient_id: str = Field(min_length=1, max_length=64)
    values: dict[str, Scalar] = Field(default_factory=dict)


class DeleteRow(BaseModel):
    """Delete the row ``key`` of ``table`` if it exists (only rows of this patient)."""

    table: str = Field(pattern=IDENTIFIER)
    key: str = Field(min_length=1, max_length=64)
    patient_id: str = Field(min_length=1, max_length=64)


class SqliteConnector(Connector):
    """Writes to one SQLite database file."""

    kind = "sqlite"
    operations: ClassVar[dict[str, OperationSpec]] = {
        "upsert_row": OperationSpec("upsert_row", UpsertRow, UpsertRow.__doc__ or ""),
        "delete_row": OperationSpec("delete_row", DeleteRow, DeleteRow.__doc__ or ""),
    }

    def __init__(self, name: str, *, path: str | Path) -> None:
        super().__init__(name)
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._lock = threading.Lock()
        self._columns: dict[str, set[str]] = {}

    def _ensure(self, table: str, columns: list[str]) -> None:
        for column in columns:
            if not re.match(IDENTIFIER, column):
                raise TargetRejected(f"invalid column name {column!r} for table {table!r}")
        known = self._columns.get(table)
        if known is None:
            self._db.execute(
                f'CREATE TABLE IF NOT EXISTS "{table}" '
                "(key TEXT PRIMARY KEY, patient_id TEXT NOT NULL)"
            )
            known = {row[1] for row in self._db.execute(f'PRAGMA table_info("{table}")')}
            self._columns[table] = known
        for column in columns:
            if column not in known:
                self._db.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}"')
                known.add(column)

    def upsert_row(self, args: UpsertRow) -> WriteResult:
        """Insert or replace the row; reports whether its content changed."""
        columns = sorted(c for c in args.values if c not in ("key", "patient_id"))
        values: list[Any] = [args.values[c] for c in columns]
        try:
            with self._lock:
                self._ensure(args.table, columns)
                # Identifiers were checked against IDENTIFIER; values are always bound.
                cols = "".join(f', "{c}"' for c in columns)
                select = f'SELECT patient_id{cols} FROM "{args.table}" WHERE key=?'  # noqa: S608
                current = self._db.execute(select, (args.key,)).fetchone()
                if current is not None and current[0] != args.patient_id:
                    raise TargetRejected(f"row {args.table}/{args.key} belongs to another patient")
                if current is not None and list(current[1:]) == values:
                    return WriteResult(self.name, "upsert_row", args.key, changed=False)
                placeholders = ", ".join("?" for _ in range(len(columns) + 2))
                insert = f'INSERT OR REPLACE INTO "{args.table}" (key, patient_id{cols}) '
                self._db.execute(
                    insert + f"VALUES ({placeholders})", [args.key, args.patient_id, *values]
                )
        except sqlite3.OperationalError as exc:
            raise UpstreamUnavailable(f"sqlite target {self.name} busy: {exc}") from exc
        return WriteResult(self.name, "upsert_row", args.key)

    def delete_row(self, args: DeleteRow) -> WriteResult:
        """Delete the row of this patient, if present."""
        with self._lock:
            self._ensure(args.table, [])
            delete = f'DELETE FROM "{args.table}" WHERE key=? AND patient_id=?'  # noqa: S608
            cursor = self._db.execute(delete, (args.key, args.patient_id))
        return WriteResult(self.name, "delete_row", args.key, changed=cursor.rowcount > 0)

    @classmethod
    def from_config(
        cls, name: str, options: Mapping[str, Any], credentials: Mapping[str, str]
    ) -> SqliteConnector:
        """Construct from a target's config (``options.path``)."""
        path = options.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigurationError(f"target {name!r}: sqlite needs options.path")
        return cls(name, path=path)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
