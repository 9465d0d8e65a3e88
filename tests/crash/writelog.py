"""A SQLite warehouse that logs every write call made to it, for the crash tests.

The engine's ``sqlite`` connector upserts with ``INSERT .. ON CONFLICT DO UPDATE .. WHERE
something changed``, so the rows alone cannot tell one write from two (a rewrite of the same
values changes nothing, and a key holds one row however often it was written). SQLite fires a
``BEFORE INSERT`` trigger for every row an INSERT attempts, whether it then inserts, updates
or changes nothing, and a ``BEFORE DELETE`` trigger for every row deleted: triggers on both
append one :class:`Event` per row written to ``write_log``, with the row's content (every
column except ``synced_at``, the write's wall-clock time), its run and the instant.

:func:`prepare` creates the tables through the connector itself (one warm-up write, removed
again), so their shape is exactly the connector's, then installs the triggers.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.core.config import TargetConfig
from connectors.base import Scope, Write
from connectors.registry import build_connector
from tests.helpers import demo_tables

TARGET = "warehouse"
WARM_UP = "warm-up"
#: columns that differ between two writes of the same content (the write's own instant)
VOLATILE = ("synced_at",)
#: seconds since the epoch, with SQLite's millisecond clock
NOW = "((julianday('now') - 2440587.5) * 86400.0)"


@dataclass(frozen=True)
class Event:
    """One row written (``upsert``: every INSERT attempt; ``delete``)."""

    seq: int
    at: float  # seconds since the epoch
    table: str
    op: str
    patient_id: str
    key: str
    run_id: str
    content: str  # JSON of the row's columns but the volatile ones ("" for a delete)


def prepare(path: Path) -> None:
    """Create the demo plan's tables at ``path`` through the ``sqlite`` connector, empty, with
    the write-log triggers installed."""
    tables = demo_tables()
    target = TargetConfig(
        name=TARGET, connector="sqlite", options={"path": str(path), "tables": tables}
    )
    connector = build_connector(target, {})
    try:
        scope = Scope(WARM_UP, WARM_UP, WARM_UP, datetime.now(UTC))
        writes = [
            Write(
                scope,
                "upsert_row",
                connector.validate(
                    "upsert_row", {"table": table, "key": WARM_UP, "patient_id": WARM_UP}, WARM_UP
                ),
                TARGET,
            )
            for table in tables
        ]
        for result in connector.execute_batch(writes):
            if result.error is not None:
                raise result.error
    finally:
        connector.close()
    with sqlite3.connect(path, timeout=30) as db:
        db.execute(
            "CREATE TABLE write_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,"
            " tbl TEXT NOT NULL, op TEXT NOT NULL, patient_id TEXT, key TEXT, run_id TEXT,"
            " content TEXT NOT NULL)"
        )
        for table in tables:
            db.execute(f"DELETE FROM {table}")  # noqa: S608 - the plan's own table names
            columns = [
                row[1]
                for row in db.execute(f"PRAGMA table_info({table})")
                if row[1] not in VOLATILE
            ]
            content = "json_object(" + ", ".join(f"'{c}', NEW.{c}" for c in columns) + ")"
            db.execute(
                f"CREATE TRIGGER log_{table}_upsert BEFORE INSERT ON {table} BEGIN"
                " INSERT INTO write_log (at, tbl, op, patient_id, key, run_id, content)"
                f" VALUES ({NOW}, '{table}', 'upsert', NEW.patient_id, NEW.key, NEW.run_id,"
                f" {content}); END"
            )
            db.execute(
                f"CREATE TRIGGER log_{table}_delete BEFORE DELETE ON {table} BEGIN"
                " INSERT INTO write_log (at, tbl, op, patient_id, key, run_id, content)"
                f" VALUES ({NOW}, '{table}', 'delete', OLD.patient_id, OLD.key, OLD.run_id,"
                " ''); END"
            )


def read(path: Path, *, after: int = 0) -> list[Event]:
    """Every logged write with ``seq`` greater than ``after``, in order ([] before any)."""
    if not path.exists():
        return []
    db = sqlite3.connect(path, timeout=30)
    try:
        rows = db.execute(
            "SELECT seq, at, tbl, op, patient_id, key, run_id, content FROM write_log"
            " WHERE seq > ? ORDER BY seq",
            (after,),
        ).fetchall()
    finally:
        db.close()
    return [Event(*row) for row in rows]


def last_seq(path: Path) -> int:
    """The newest event's ``seq`` (0 when none)."""
    events = read(path)
    return events[-1].seq if events else 0


def patients_written(events: list[Event]) -> set[str]:
    """Patients with at least one row of the ``patients`` table written."""
    return {e.patient_id for e in events if e.table == "patients" and e.op == "upsert"}


def conflicting(events: list[Event]) -> dict[tuple[str, str, str], list[str]]:
    """Rows written more than once with different content: ``(table, patient, key)`` -> the
    columns whose values differed (names only: a failure message shows no value). A rewrite
    of the same content is not a conflict (an idempotent redelivery after a crash)."""
    seen: dict[tuple[str, str, str], list[dict[str, object]]] = defaultdict(list)
    for e in events:
        if e.op != "upsert":
            continue
        contents = seen[(e.table, e.patient_id, e.key)]
        content = json.loads(e.content)
        if content not in contents:
            contents.append(content)
    return {
        row: sorted({c for content in contents for c in content if content[c] != contents[0][c]})
        for row, contents in seen.items()
        if len(contents) > 1
    }
