"""The row layout of a Sheets tab, with no I/O: the header, the identity index a read builds,
a write's cells, the A1 ranges of an update, the runs of a deletion, and request-size parts.

Row 1 of a tab is its header: the scope columns (A to E) and then the data columns, found by
name. A row's identity is its first three cells, ``(integration_id, patient_id, key)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.base import Write
from connectors.sheets_api import row_range
from connectors.tables import SCOPE_COLUMNS, TableConnector, UpsertRow

RowId = tuple[str, str, str]  # (integration_id, patient_id, key) within one tab
#: bytes of JSON per request, below the 2 MB Google recommends
#: (developers.google.com/workspace/sheets/api/limits)
MAX_BODY = 1_800_000


@dataclass
class Tab:
    sheet_id: int
    title: str
    columns: int


@dataclass
class Read:
    """One tab as a read's read found it."""

    header: list[str]
    rows: list[list[Any]]  # rows[0] is sheet row 1 (the header)
    index: dict[RowId, list[int]] = field(default_factory=dict)  # -> 1-based sheet rows

    def cell(self, row: int, column: int) -> Any:
        cells = self.rows[row - 1] if row - 1 < len(self.rows) else []
        return cells[column] if column < len(cells) else ""


def row_key(write: Write) -> tuple[str, RowId]:
    integration, patient, table, key = TableConnector.row_id(write)
    return table, (integration, patient, key)


def by_table(batch: Sequence[Write]) -> dict[str, dict[RowId, Write]]:
    """The chunk's writes per table, one per row (the last wins)."""
    out: dict[str, dict[RowId, Write]] = {}
    for write in batch:
        table, rid = row_key(write)
        rows = out.setdefault(table, {})
        rows.pop(rid, None)
        rows[rid] = write
    return out


def cells_of(write: Write, columns: Sequence[str]) -> dict[str, Any]:
    """The row's cells by column: the scope columns and ``columns`` (None as empty)."""
    args, s = write.args, write.scope
    assert isinstance(args, UpsertRow)
    cells: dict[str, Any] = {
        "integration_id": s.integration_id,
        "patient_id": s.patient_id,
        "key": args.key,
        "run_id": s.run_id,
        "synced_at": s.synced_at.isoformat(),
    }
    for column in columns:
        value = args.values.get(column)
        cells[column] = "" if value is None else value
    return cells


def extend_header(read: Read, wanted: Sequence[str]) -> tuple[list[str], list[str]]:
    """The tab's header with every wanted column, and the names it had to add."""
    header = list(read.header)
    if not header:
        header = list(SCOPE_COLUMNS)
        added = list(SCOPE_COLUMNS)
    else:
        added = []
    for column in wanted:
        if column not in header:
            header.append(column)
            added.append(column)
    return header, added


def row_ranges(title: str, row: int, cells: Mapping[int, Any]) -> list[dict[str, Any]]:
    """ValueRanges writing ``cells`` (column position -> value) of ``row``: one per run of
    adjacent columns, so a column a person put between ours is left alone."""
    out = []
    positions = sorted(cells)
    start = 0
    for i in range(1, len(positions) + 1):
        if i == len(positions) or positions[i] != positions[i - 1] + 1:
            run = positions[start:i]
            out.append(
                {
                    "range": row_range(title, row, run[0], run[-1]),
                    "values": [[cells[p] for p in run]],
                }
            )
            start = i
    return out


def runs(rows: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Descending row numbers as (first, last) runs of adjacent rows, bottom-up."""
    run: list[int] = []
    for row in rows:
        if run and row != run[-1] - 1:
            yield run[-1], run[0]
            run = []
        run.append(row)
    if run:
        yield run[-1], run[0]


def parts(items: list[Any]) -> Iterator[list[Any]]:
    """``items`` in groups whose JSON stays under the recommended request size."""
    part: list[Any] = []
    size = 0
    for item in items:
        length = len(json.dumps(item, ensure_ascii=False).encode()) + 2
        if part and size + length > MAX_BODY:
            yield part
            part, size = [], 0
        part.append(item)
        size += length
    if part:
        yield part


def text(cell: Any) -> str:
    """An identity cell as text (a person may have retyped an id, which Sheets made a number)."""
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return "" if cell is None else str(cell)


def same(found: Any, new: Any) -> bool:
    """Whether a cell read back (UNFORMATTED_VALUE) already holds ``new``."""
    found = "" if found is None else found
    if isinstance(found, bool) or isinstance(new, bool):
        return type(found) is type(new) and found == new
    if isinstance(found, int | float) and isinstance(new, int | float):
        return float(found) == float(new)
    return type(found) is type(new) and bool(found == new)
