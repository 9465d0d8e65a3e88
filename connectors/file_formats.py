"""How each file target encodes one file: a :class:`Sheet` (one table's rows, typed columns)
written to a binary file object. The writing and publishing around it is ``connectors.files``.

========  ===================================================================================
format    encoding
========  ===================================================================================
csv       UTF-8, ``\\r\\n`` rows, a header row. Every non-null text (dates, timestamps and
          booleans ``true``/``false`` included) is quoted; integers and numbers are bare; a
          null is a bare empty field, so ``,,`` is None and ``,"",`` is the empty string (the
          PostgreSQL / Redshift / Snowflake CSV convention; Python 3.12's QUOTE_NOTNULL).
jsonl     one JSON object per line, keys in column order, UTF-8 (``ensure_ascii=False``);
          dates and timestamps as the ISO strings they arrived as.
excel     an openpyxl write-only workbook, one sheet named after the table (its first 31
          characters, Excel's limit), a header row. Dates are date cells; timestamps are
          datetime cells in UTC (Excel has no time zones; a serial number holds about a
          microsecond, and Excel and openpyxl read milliseconds). Integers beyond 2**53 are
          written as text so no digit is lost to Excel's doubles. Text starting with ``=`` or
          spelling an error code stays text (never a formula). Excel has no empty string: ``""``
          reads back as an empty cell; a cell is XML text, so its line ends read back as
          ``\\n``. A text over 32,767 characters (Excel's cell limit, in UTF-16 units: openpyxl
          would silently truncate it) or holding a control character Excel forbids is a
          TargetRejected naming the column.
parquet   pyarrow with a typed schema: text->string, integer->int64, number->float64,
          boolean->bool, date->date32, timestamp->timestamp(us, UTC) (a timestamp without an
          offset is read as UTC). A value that does not fit (an integer beyond int64) is a
          TargetRejected naming the column.
========  ===================================================================================

Rows arrive validated (``connectors.tables.check_value``): text is ``str``, integers ``int``,
numbers finite ``int``/``float``, booleans ``bool``, dates and timestamps ISO strings, any None.
Errors name the table and column, never a value.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, BinaryIO

from app.core.errors import TargetRejected
from connectors.tables import ColumnType, Scalar

#: Excel's limit on the characters of one cell
EXCEL_MAX_CELL = 32_767
#: Excel's limit on a sheet name
EXCEL_MAX_SHEET_NAME = 31
#: integers Excel's doubles hold exactly
_EXACT_INT = 2**53


@dataclass(frozen=True)
class Sheet:
    """One file's content: ``table``'s values column by column, ``data[i]`` holding column
    ``columns[i]`` of every row (columnar: built, hashed and mostly encoded without a Python
    step per row)."""

    table: str
    columns: tuple[str, ...]
    types: tuple[ColumnType, ...]
    data: list[list[Scalar]]

    @property
    def rows(self) -> Iterator[tuple[Scalar, ...]]:
        """The rows, each a tuple in ``columns`` order."""
        return zip(*self.data, strict=True)


Encoder = Callable[[Sheet, BinaryIO], None]


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# -- CSV --------------------------------------------------------------------------------------
class _Null(int):
    """A bare empty field: under QUOTE_NONNUMERIC the csv module leaves numbers unquoted and
    writes ``str(field)``, so this int whose text is empty is written as nothing at all
    (Python 3.11 has no QUOTE_NOTNULL)."""

    def __str__(self) -> str:
        return ""


_NULL = _Null()


#: the CSV cell of a boolean column's value
_CSV_BOOL: dict[Any, Any] = {True: "true", False: "false", None: _NULL}
#: ``_CSV_NULLS(v, v)``: the marker for None, any other value as it is
_CSV_NULLS: Callable[[Any, Any], Any] = {None: _NULL}.get


def write_csv(sheet: Sheet, out: BinaryIO) -> None:
    """The CSV encoding of the module docstring."""
    # Column by column through C-level map and zip: nothing per row runs in Python.
    columns = [
        map(_CSV_BOOL.__getitem__, column)
        if kind == "boolean"
        else (map(_CSV_NULLS, column, column) if None in column else column)
        for kind, column in zip(sheet.types, sheet.data, strict=True)
    ]
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    try:
        writer = csv.writer(text, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n")
        writer.writerow(sheet.columns)
        writer.writerows(zip(*columns, strict=True))
        text.flush()
    finally:
        text.detach()  # leave ``out`` open: the store fsyncs and closes it


# -- JSON Lines -------------------------------------------------------------------------------
# One encoder for every file: json.dumps with options builds a new JSONEncoder per call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def write_jsonl(sheet: Sheet, out: BinaryIO) -> None:
    """One JSON object per row, one row per line."""
    as_dict = partial(zip, sheet.columns)  # row -> (column, value) pairs
    lines = list(map(_JSON.encode, map(dict, map(as_dict, sheet.rows))))
    if lines:
        out.write(("\n".join(lines) + "\n").encode("utf-8"))


# -- Excel ------------------------------------------------------------------------------------
def write_excel(sheet: Sheet, out: BinaryIO) -> None:
    """A write-only workbook with one sheet; every cell checked before anything is written."""
    from openpyxl import Workbook
    from openpyxl.cell.cell import ERROR_CODES, ILLEGAL_CHARACTERS_RE, WriteOnlyCell
    from openpyxl.utils.exceptions import IllegalCharacterError

    converters: dict[int, Callable[[Any], Any]] = {}
    for i, kind in enumerate(sheet.types):
        if kind == "date":
            converters[i] = date.fromisoformat
        elif kind == "timestamp":
            converters[i] = lambda v: _utc(v).replace(tzinfo=None)
        elif kind == "integer":
            converters[i] = lambda v: v if -_EXACT_INT <= v <= _EXACT_INT else str(v)
    texts = [i for i, kind in enumerate(sheet.types) if kind == "text"]
    for i in texts:
        for value in sheet.data[i]:
            # UTF-16 units are at most twice the code points: measure only what may be over
            if (
                isinstance(value, str)
                and len(value) > EXCEL_MAX_CELL // 2
                and len(value.encode("utf-16-le")) // 2 > EXCEL_MAX_CELL
            ):
                raise TargetRejected(
                    f"{sheet.table}.{sheet.columns[i]}: text longer than Excel's "
                    f"{EXCEL_MAX_CELL:,}-character cell limit"
                )
    book = Workbook(write_only=True)
    ws = book.create_sheet(title=sheet.table[:EXCEL_MAX_SHEET_NAME])
    ws.append(list(sheet.columns))
    for row in sheet.rows:
        cells: list[Any] = list(row)
        for i, convert in converters.items():
            if cells[i] is not None:
                cells[i] = convert(cells[i])
        for i in texts:
            value = cells[i]
            # openpyxl reads "=..." as a formula and "#N/A" as an error: keep them text
            if isinstance(value, str) and (value.startswith("=") or value in ERROR_CODES):
                cell = WriteOnlyCell(ws, value=value)
                cell.data_type = "s"
                cells[i] = cell
        try:
            ws.append(cells)
        except IllegalCharacterError:  # openpyxl checks every text: find which, by name only
            column = next(
                sheet.columns[i]
                for i in texts
                if isinstance(row[i], str) and ILLEGAL_CHARACTERS_RE.search(str(row[i]))
            )
            raise TargetRejected(
                f"{sheet.table}.{column}: text holds a control character Excel cannot store"
            ) from None
    book.save(out)


# -- Parquet ----------------------------------------------------------------------------------
def arrow_type(kind: ColumnType) -> Any:
    """The pyarrow type of a column type."""
    import pyarrow as pa

    return {
        "text": pa.string(),
        "integer": pa.int64(),
        "number": pa.float64(),
        "boolean": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }[kind]


def _arrow_column(kind: ColumnType, values: Sequence[Scalar]) -> Any:
    """One column as a pyarrow array; TypeError/ValueError/ArrowException when it cannot be."""
    import pyarrow as pa

    arrow = arrow_type(kind)
    if kind in ("date", "timestamp"):
        try:  # Arrow's own ISO parser, vectorised: the common forms, with an offset
            return pa.array(values, type=pa.string()).cast(arrow)
        except pa.ArrowInvalid:  # a form only Python reads (no offset, a week date ...)
            parse = date.fromisoformat if kind == "date" else _utc
            return pa.array([None if v is None else parse(str(v)) for v in values], type=arrow)
    try:
        return pa.array(values, type=arrow)
    except (pa.ArrowInvalid, OverflowError):
        if kind != "number":
            raise
        # an int beyond int64 is still a number: pass it as a float
        return pa.array([v if v is None else float(v) for v in values], type=arrow)


def write_parquet(sheet: Sheet, out: BinaryIO) -> None:
    """A typed Parquet file (one row group)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for name, kind, values in zip(sheet.columns, sheet.types, sheet.data, strict=True):
        try:
            arrays.append(_arrow_column(kind, values))
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            # pyarrow's message quotes the value: name the column only
            raise TargetRejected(
                f"{sheet.table}.{name}: a value does not fit Parquet type {kind}"
            ) from None
    schema = pa.schema(
        [pa.field(c, arrow_type(k)) for c, k in zip(sheet.columns, sheet.types, strict=True)]
    )
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), out)


ENCODERS: dict[str, Encoder] = {
    "csv": write_csv,
    "jsonl": write_jsonl,
    "xlsx": write_excel,
    "parquet": write_parquet,
}
