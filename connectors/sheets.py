"""Google Sheets: one spreadsheet per integration, one tab per declared table, one row per
record, found by its identity columns and updated in place, appended when new.

::

    write_upsert_row (chunk of <= 1,000)     Sheets API v4 (google-api-python-client)
    ────────────────────────────────────     ───────────────────────────────────────────────
    first use of the target                  spreadsheets.get (tab ids, titles, grid sizes;
                                               404/403 -> ConfigurationError)
    a table without a tab                    spreadsheets.batchUpdate: one addSheet per
                                               missing tab (header row frozen), one request
    the chunk's tables                       ONE values.batchGet of every tab it touches
                                               (UNFORMATTED_VALUE): header and rows
    header row                               written with the chunk when new; a newly
                                               declared column is appended to it (the
                                               migration), after an appendDimension when the
                                               grid is too narrow
    rows found by (integration_id,           ONE values.batchUpdate (RAW) of every changed
      patient_id, key)                         row of every tab; equal rows are not written
    rows not found                           ONE values.append per tab (RAW, INSERT_ROWS)
    write_delete_row, mirror pruning         ONE spreadsheets.batchUpdate of deleteDimension
                                               requests (bottom-up, so indexes stay valid)

The spreadsheet is named by ``options.spreadsheet_id``; each integration's TOML file names its
own (one spreadsheet per integration). It must exist and be shared with the service account
as an editor: a spreadsheet a service account creates lives in that account's Drive, where
the clinic would not see it. Rows of two integrations in one spreadsheet would still never
touch each other (the identity columns include the integration), but give each its own.

Each tab's row 1 is the header: the scope columns (``integration_id, patient_id, key,
run_id, synced_at``, columns A to E, checked on every read) and then the declared columns, found
by name, so a person may reorder the data columns or add a column of their own: the connector
leaves cells it does not own alone. Values are written RAW (a patient's text that starts with
``=`` stays text, never a formula); Sheets has no NULL, so None is an empty cell and reads back
as None. Rows whose data columns already hold the written values are reported unchanged and
not written (their run_id and synced_at stay those of the run that last changed them).

New rows go through values.append with INSERT_ROWS: Sheets places them after the tab's table
itself, so two writers appending at once never overwrite each other. Updates and deletions
address rows by the positions the chunk's read found: Sheets has no conditional write, so a
row deleted by another process between that read and the write would shift them. Within a
process a lock serializes each chunk's read and writes; across processes, give a Sheets
target one worker (it is rate-bound anyway, below). Duplicate identity rows (a person's copy)
are updated in their first copy and deleted in all.

Published limits (developers.google.com/workspace/sheets/api/limits, "Usage limits"): 300
read and 300 write requests per minute per project, 60 read and 60 write requests per minute
per user per project (the service account is the user), refilled every minute; over them
Sheets answers 429 and asks for exponential back-off. ``rate_limit`` is 1 request/s, the
per-user write quota, for reads and writes together: the shared token bucket of the target's
credential paces the first request of each chunk through the base and every further one here,
and a 429 throttles the bucket (RateLimited, Retry-After honoured). The same page recommends
request payloads of at most 2 MB: a chunk's values.batchUpdate and values.append bodies are
split below that. A cell holds at most 50,000 characters (Sheets' own limit: longer text is
refused before any write) and a spreadsheet 10 million cells. A chunk costs 1 read and 1 to
1 + tables writes (``bench/vendor_sheets.py``: requests per 1,000 patients).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from app.core.errors import ConfigurationError, HealthieSyncError, PlanValidationError, RateLimited
from connectors.base import Scope, Write, WriteResult
from connectors.sheets_api import (
    a1,
    build_service,
    close_service,
    column_letter,
    execute,
    service_account,
)
from connectors.sheets_rows import (
    Read,
    RowId,
    Tab,
    by_table,
    cells_of,
    extend_header,
    parts,
    row_key,
    row_ranges,
    runs,
    same,
    text,
)
from connectors.tables import SCOPE_COLUMNS, TableConnector, TableOptions, UpsertRow, is_identifier
from connectors.tables import Scalar as Value

MAX_CELL_CHARS = 50_000
_DEFAULT_COLUMNS = 26  # a new tab's grid width when its header is narrower


class SheetsOptions(TableOptions):
    """The integration's spreadsheet; the tables, mode and size cap of every table target."""

    spreadsheet_id: str = Field(pattern=r"^[A-Za-z0-9_-]{10,128}$")
    #: another endpoint than sheets.googleapis.com (tests point it at the local fake)
    api_endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s`]+$")


class SheetsConnector(TableConnector):
    """Rows of declared tables in one Google spreadsheet (see the module docstring)."""

    kind: ClassVar[str] = "sheets"
    description: ClassVar[str] = (
        "Google Sheets: a tab per table in one spreadsheet; rows found by (integration_id, "
        "patient_id, key), updated in place with values.batchUpdate, appended when new."
    )
    options_model: ClassVar[type[BaseModel]] = SheetsOptions
    credential_names: ClassVar[tuple[str, ...]] = ("service_account_json",)
    # Rows per chunk: each chunk costs a read and a write or two whatever its size, and the
    # quota counts requests, so chunks are large; bodies are split at 2 MB below.
    max_batch: ClassVar[int] = 1000
    # 60 write requests per minute per user (developers.google.com/workspace/sheets/api/limits)
    rate_limit: ClassVar[float | None] = 1.0

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(name, *args, **kwargs)
        self._auth = service_account(name, self.credentials.get("service_account_json"))
        self._service: Any = None
        self._resources: tuple[Any, Any] | None = None
        self._tabs: dict[str, Tab] | None = None
        self._lock = threading.RLock()  # one chunk at a time: positions stay valid
        self._paced = False
        #: Sheets API requests sent (token requests excluded)
        self.api_calls = 0

    @property
    def sheets(self) -> SheetsOptions:
        """The options, typed."""
        assert isinstance(self.options, SheetsOptions)
        return self.options

    @property
    def spreadsheets(self) -> Any:
        """The ``spreadsheets`` resource of the Sheets v4 service, built on first use (no I/O
        until a request). Kept: the library builds each resource's methods, docstrings
        included, from the discovery document every time one is asked for (about a second)."""
        return self._api()[0]

    @property
    def values_api(self) -> Any:
        """The ``spreadsheets.values`` resource (see :attr:`spreadsheets`)."""
        return self._api()[1]

    def _api(self) -> tuple[Any, Any]:
        if self._resources is None:
            self._service = build_service(self._auth, self.sheets.api_endpoint)
            spreadsheets = self._service.spreadsheets()
            self._resources = (spreadsheets, spreadsheets.values())
        return self._resources

    def close(self) -> None:
        """Close the HTTP connections."""
        if self._service is not None:
            close_service(self._service)
            self._service, self._resources = None, None

    @classmethod
    def check_args(cls, options: BaseModel, operation: str, args: BaseModel) -> BaseModel:
        """The table checks, and no text longer than a Sheets cell holds."""
        checked = super().check_args(options, operation, args)
        if isinstance(checked, UpsertRow):
            for column, value in checked.values.items():
                if isinstance(value, str) and len(value) > MAX_CELL_CHARS:
                    raise PlanValidationError(
                        f"{checked.table}.{column}: longer than the {MAX_CELL_CHARS} "
                        "characters a Google Sheets cell holds"
                    )
        return checked

    # -- operations ----------------------------------------------------------------------
    def write_upsert_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """One read, one values.batchUpdate and one values.append per tab with new rows."""
        mode = self.table_options.mode
        changed: dict[tuple[str, RowId], bool] = {}
        with self._chunk(counted=1):
            grouped = by_table(batch)
            wanted = {t: self._wanted(t, rows) for t, rows in grouped.items()}
            tabs = self._ensure_tabs(wanted)
            reads = self._read(list(grouped))
            data: list[dict[str, Any]] = []
            appends: dict[str, list[list[Any]]] = {}
            widths: dict[str, int] = {}
            for table, rows in grouped.items():
                read, title = reads[table], tabs[table].title
                header, added = extend_header(read, wanted[table])
                if added:
                    start = len(header) - len(added)
                    cells = f"{column_letter(start)}1:{column_letter(len(header) - 1)}1"
                    data.append({"range": a1(title, cells), "values": [added]})
                widths[table] = len(header)
                owned = [*SCOPE_COLUMNS, *wanted[table]]
                position = {c: header.index(c) for c in owned}
                for rid, write in rows.items():
                    row_cells = cells_of(write, wanted[table])
                    found = read.index.get(rid)
                    if found is None:
                        changed[(table, rid)] = mode != "update_only"
                        if mode != "update_only":
                            row = [""] * (max(position.values()) + 1)
                            for column, value in row_cells.items():
                                row[position[column]] = value
                            appends.setdefault(table, []).append(row)
                        continue
                    at = found[0]
                    unchanged = all(
                        same(read.cell(at, position[c]), row_cells[c]) for c in wanted[table]
                    )
                    changed[(table, rid)] = not unchanged and mode != "insert_only"
                    if not unchanged and mode != "insert_only":
                        update = {c: row_cells[c] for c in [*wanted[table], "run_id", "synced_at"]}
                        data += row_ranges(title, at, {position[c]: v for c, v in update.items()})
            self._widen({t: w for t, w in widths.items() if w > tabs[t].columns})
            for part in parts(data):
                body = {"valueInputOption": "RAW", "data": part}
                self._call(
                    "values.batchUpdate",
                    lambda body=body: self.values_api.batchUpdate(
                        spreadsheetId=self.sheets.spreadsheet_id, body=body
                    ),
                )
            for table, new in appends.items():
                for part in parts(new):
                    self._append(tabs[table].title, table, part)
        return [self.ok(w, changed=changed[row_key(w)]) for w in batch]

    def write_delete_row(self, batch: Sequence[Write]) -> list[WriteResult]:
        """One read and one spreadsheets.batchUpdate of deleteDimension requests."""
        changed: dict[tuple[str, RowId], bool] = {}
        with self._chunk(counted=1):
            grouped = by_table(batch)
            tabs = self._known_tabs()
            present = [t for t in grouped if t in tabs]
            reads = self._read(present)
            doomed: dict[str, set[int]] = {}
            for table, rows in grouped.items():
                for rid in rows:
                    found = reads[table].index.get(rid, []) if table in reads else []
                    changed[(table, rid)] = bool(found)
                    doomed.setdefault(table, set()).update(found)
            self._delete_rows(doomed)
        return [self.ok(w, changed=changed[row_key(w)]) for w in batch]

    def prune(self, scope: Scope, keep: Mapping[str, set[str]]) -> None:
        """Mirror mode: delete the scope's rows whose key is not kept, one read and at most
        one spreadsheets.batchUpdate for every tab."""
        with self._chunk(counted=0):
            tabs = self._known_tabs()
            declared = self.table_options.tables
            names = set(keep) | set(declared or {}) | (set(tabs) if declared is None else set())
            present = sorted(t for t in names if t in tabs and is_identifier(t))
            reads = self._read(present, strict=declared is not None)
            doomed: dict[str, set[int]] = {}
            for table, read in reads.items():
                kept = keep.get(table, set())
                for (integration, patient, key), rows in read.index.items():
                    if (integration, patient) == (scope.integration_id, scope.patient_id):
                        if key not in kept:
                            doomed.setdefault(table, set()).update(rows)
            self._delete_rows(doomed)

    # -- tabs ----------------------------------------------------------------------------
    def _wanted(self, table: str, rows: Mapping[RowId, Write]) -> list[str]:
        values: dict[str, Value] = {}
        for write in rows.values():
            assert isinstance(write.args, UpsertRow)
            values.update(write.args.values)
        return list(self.columns_of(table, values))

    def _known_tabs(self) -> dict[str, Tab]:
        if self._tabs is None:
            answer = self._call(
                "spreadsheets.get",
                lambda: self.spreadsheets.get(
                    spreadsheetId=self.sheets.spreadsheet_id,
                    fields="sheets.properties(sheetId,title,gridProperties.columnCount)",
                ),
            )
            tabs = {}
            for sheet in answer.get("sheets", []):
                props = sheet.get("properties", {})
                columns = int(props.get("gridProperties", {}).get("columnCount", 0))
                title = str(props.get("title", ""))
                tabs[title] = Tab(int(props.get("sheetId", 0)), title, columns)
            self._tabs = tabs
        return self._tabs

    def _ensure_tabs(self, wanted: Mapping[str, list[str]]) -> dict[str, Tab]:
        tabs = self._known_tabs()
        missing = [t for t in wanted if t not in tabs]
        if missing:
            requests = [
                {
                    "addSheet": {
                        "properties": {
                            "title": table,
                            "gridProperties": {
                                "columnCount": max(
                                    _DEFAULT_COLUMNS, len(SCOPE_COLUMNS) + len(wanted[table])
                                ),
                                "frozenRowCount": 1,
                            },
                        }
                    }
                }
                for table in missing
            ]
            replies = self._batch_update(f"addSheet {','.join(missing)}", requests)
            for reply in replies:
                props = reply.get("addSheet", {}).get("properties", {})
                title = str(props.get("title", ""))
                columns = int(props.get("gridProperties", {}).get("columnCount", 0))
                tabs[title] = Tab(int(props.get("sheetId", 0)), title, columns)
        return tabs

    def _widen(self, widths: Mapping[str, int]) -> None:
        """Add grid columns so each tab's header fits (Sheets refuses writes past the grid)."""
        if not widths:
            return
        tabs = self._known_tabs()
        requests = [
            {
                "appendDimension": {
                    "sheetId": tabs[t].sheet_id,
                    "dimension": "COLUMNS",
                    "length": width - tabs[t].columns,
                }
            }
            for t, width in sorted(widths.items())
        ]
        self._batch_update("appendDimension", requests)
        for t, width in widths.items():
            tabs[t].columns = width

    def _read(self, tables: Sequence[str], *, strict: bool = True) -> dict[str, Read]:
        """Every tab of ``tables`` in one values.batchGet, indexed by row identity. A tab whose
        header does not start with the scope columns is a ConfigurationError (``strict``) or
        left out."""
        if not tables:
            return {}
        tabs = self._known_tabs()
        answer = self._call(
            "values.batchGet",
            lambda: self.values_api.batchGet(
                spreadsheetId=self.sheets.spreadsheet_id,
                ranges=[a1(tabs[t].title) for t in tables],
                majorDimension="ROWS",
                valueRenderOption="UNFORMATTED_VALUE",
            ),
        )
        ranges = answer.get("valueRanges", [])
        out: dict[str, Read] = {}
        for table, found in zip(tables, ranges, strict=True):
            rows = [list(r) for r in found.get("values", [])]
            header = [str(c) for c in rows[0]] if rows else []
            if header[: len(SCOPE_COLUMNS)] != list(SCOPE_COLUMNS) and (header or len(rows) > 1):
                if not strict:
                    continue
                raise ConfigurationError(
                    f"target {self.name!r} (sheets): tab {table!r} does not start with the "
                    f"columns {list(SCOPE_COLUMNS)} (made by someone else, or its first five "
                    "columns were moved); rename the tab and let the connector create it"
                )
            read = Read(header, rows)
            for number, cells in enumerate(rows[1:], start=2):
                rid = tuple(text(cells[i]) if i < len(cells) else "" for i in range(3))
                if all(rid):
                    read.index.setdefault((rid[0], rid[1], rid[2]), []).append(number)
            out[table] = read
        return out

    # -- writes --------------------------------------------------------------------------
    def _append(self, title: str, table: str, rows: list[list[Any]]) -> None:
        self._call(
            f"values.append {table}",
            lambda: self.values_api.append(
                spreadsheetId=self.sheets.spreadsheet_id,
                range=a1(title, "A1"),
                valueInputOption="RAW",
                insertDataOption="INSERT_ROWS",
                body={"majorDimension": "ROWS", "values": rows},
            ),
        )

    def _delete_rows(self, doomed: Mapping[str, set[int]]) -> None:
        tabs = self._known_tabs()
        requests = []
        for table, rows in sorted(doomed.items()):
            for start, end in runs(sorted(rows, reverse=True)):
                requests.append(
                    {
                        "deleteDimension": {
                            "range": {
                                "sheetId": tabs[table].sheet_id,
                                "dimension": "ROWS",
                                "startIndex": start - 1,
                                "endIndex": end,
                            }
                        }
                    }
                )
        if requests:
            self._batch_update("deleteDimension", requests)

    def _batch_update(self, what: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answer = self._call(
            f"spreadsheets.batchUpdate {what}",
            lambda: self.spreadsheets.batchUpdate(
                spreadsheetId=self.sheets.spreadsheet_id, body={"requests": requests}
            ),
        )
        return list(answer.get("replies", []))

    # -- the edge ------------------------------------------------------------------------
    @contextmanager
    def _chunk(self, *, counted: int) -> Iterator[None]:
        """One write call: serialized, its first request paced by the base's guard and the
        others here; requests beyond ``counted`` added to ``requests``."""
        with self._lock:
            start, self._paced = self.api_calls, True
            try:
                yield
            finally:
                self.requests += max(0, self.api_calls - start - counted)

    def _call(self, what: str, request: Any) -> dict[str, Any]:
        """One Sheets request, paced, its failures as engine errors."""
        bucket = self.guard.bucket
        if self._paced:
            self._paced = False  # the guard's call already took this request's token
        elif bucket is not None:
            bucket.acquire()
        self.api_calls += 1
        try:
            answer = execute(self.name, what, request)
        except RateLimited as exc:
            if bucket is not None:  # every user of the credential slows down
                bucket.throttle(exc.retry_after or 1.0)
            raise
        except HealthieSyncError:
            self._tabs = None  # a tab may have been added, renamed or resized: look again
            raise
        return answer if isinstance(answer, dict) else {}
