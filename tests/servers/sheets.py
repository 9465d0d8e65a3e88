"""A local Google Sheets for the connector's tests: every request is checked against Google's
published v4 discovery document, and the methods the connector uses run on in-memory
spreadsheets with Sheets' semantics.

::

    request ─▶ token endpoint (/token)        JWT-bearer grant: the assertion's RS256 signature,
                                              issuer, audience and the spreadsheets scope
                                              checked -> a token
            ─▶ discovery method by HTTP method + rootUrl/servicePath/path template
                 unmatched route, undeclared or ill-typed query parameter, body that breaks
                 schemas[request.$ref]  -> 400 and a line in ``violations``
            ─▶ fault injection (``failing``)  API requests answer that status (429: Google's
                                              RESOURCE_EXHAUSTED quota answer)
            ─▶ bearer token issued here?      else 401
            ─▶ handler                        spreadsheets.get, spreadsheets.batchUpdate
                                              (addSheet, appendDimension, deleteDimension),
                                              values.batchGet, values.batchUpdate, values.append
            ─▶ the answer checked against schemas[response.$ref] (drift -> ``violations``)

Sheets' rules the connector relies on, applied here: A1 ranges (``'tab'!A1:C3``, ``'tab'!1:1``,
a whole tab) resolved against tab titles; a write past the grid is refused ("exceeds grid
limits"), values.append finds the table from the range's first row and INSERT_ROWS inserts
rows after it (growing the grid); ``null`` in written values leaves the cell alone, ``""``
empties it; RAW stores values as given; a cell holds at most 50,000 characters; reads trim
trailing empty rows and cells; a values.batchUpdate is checked whole before any of it is
applied, as is a spreadsheets.batchUpdate; a tab title is unique; a frozen header cannot be
the last row left. Like Google's, error messages quote values (``poisoned`` refuses a row
holding ``poison`` and quotes it), so the connector's tests prove none reaches an engine error.
Methods and request kinds the connector does not use answer 501 and record a violation.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.service.serving import serve_in_thread
from tests.conftest import SHARED, require_service
from tests.servers.discovery import Discovery

DISCOVERY = SHARED / "openapi" / "google-sheets-v4.discovery.json"
SHEETS_SCOPE = "https://www.googleapis.com/auth/spreadsheets"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
MAX_CELL_CHARS = 50_000
MAX_CELLS = 10_000_000
STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}
STATUS |= {404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED"}
STATUS |= {503: "UNAVAILABLE"}
_QUOTED = re.compile(r"'((?:[^']|'')+)'(?:!(.*))?")
_CELLS = re.compile(r"([A-Z]{0,3})([0-9]{0,7})(?::([A-Z]{0,3})([0-9]{0,7}))?")

Answer = tuple[int, Any, dict[str, str]]


class SheetsError(Exception):
    """A Sheets error answer raised inside a handler (status and Google's message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    """A Google-style error answer."""
    body = {"error": {"code": status, "message": message, "status": STATUS.get(status, "UNKNOWN")}}
    return status, body, headers or {}


def col_index(letters: str) -> int:
    """0-based index of A1 column letters."""
    n = 0
    for ch in letters:
        n = n * 26 + ord(ch) - ord("A") + 1
    return n - 1


def col_letters(index: int) -> str:
    """A1 letters of a 0-based column index."""
    out, index = "", index + 1
    while index:
        index, rest = divmod(index - 1, 26)
        out = chr(ord("A") + rest) + out
    return out


@dataclass
class Tab:
    """One sheet (tab): its properties and cells (``cells[r][c]``, 0-based, ragged)."""

    sheet_id: int
    title: str
    row_count: int = 1000
    column_count: int = 26
    frozen_rows: int = 0
    cells: list[list[Any]] = field(default_factory=list)

    def properties(self, index: int) -> dict[str, Any]:
        """The SheetProperties resource."""
        grid: dict[str, Any] = {"rowCount": self.row_count, "columnCount": self.column_count}
        if self.frozen_rows:
            grid["frozenRowCount"] = self.frozen_rows
        return {
            "sheetId": self.sheet_id,
            "title": self.title,
            "index": index,
            "sheetType": "GRID",
            "gridProperties": grid,
        }

    def get(self, row: int, col: int) -> Any:
        """The cell's value ("" when empty)."""
        if row < len(self.cells) and col < len(self.cells[row]):
            return self.cells[row][col]
        return ""

    def put(self, row: int, col: int, value: Any) -> None:
        """Set one cell (``""`` empties it)."""
        while len(self.cells) <= row:
            self.cells.append([])
        line = self.cells[row]
        while len(line) <= col:
            line.append("")
        line[col] = value

    def row_empty(self, row: int) -> bool:
        """True when the row holds no value."""
        return all(v == "" for v in (self.cells[row] if row < len(self.cells) else []))

    def label(self) -> str:
        """The title as A1 notation quotes it."""
        return "'" + self.title.replace("'", "''") + "'"


@dataclass
class Spreadsheet:
    """One spreadsheet and its tabs, in order."""

    spreadsheet_id: str
    title: str
    tabs: list[Tab] = field(default_factory=list)

    def tab(self, title: str) -> Tab | None:
        """The tab titled ``title``."""
        return next((t for t in self.tabs if t.title == title), None)


@dataclass
class Span:
    """A resolved A1 range: 0-based inclusive bounds (None: unbounded)."""

    tab: Tab
    row0: int
    col0: int
    row1: int | None
    col1: int | None

    def label(self) -> str:
        """The range as Sheets echoes it."""
        last_row = self.row1 if self.row1 is not None else self.tab.row_count - 1
        last_col = self.col1 if self.col1 is not None else self.tab.column_count - 1
        return (
            f"{self.tab.label()}!{col_letters(self.col0)}{self.row0 + 1}:"
            f"{col_letters(last_col)}{last_row + 1}"
        )


def resolve(book: Spreadsheet, text: str) -> Span:
    """``text`` (A1 notation) as a span of one tab, or SheetsError 400 as Sheets answers."""
    quoted = _QUOTED.fullmatch(text)
    if quoted:
        title, cells = quoted.group(1).replace("''", "'"), quoted.group(2)
    elif "!" in text:
        title, cells = text.split("!", 1)
    elif book.tab(text) is not None:
        title, cells = text, None
    else:
        title, cells = (book.tabs[0].title if book.tabs else ""), text
    tab = book.tab(title)
    found = _CELLS.fullmatch(cells or "")
    if tab is None or found is None:
        raise SheetsError(400, f"Unable to parse range: {text}")
    c0, r0, c1, r1 = found.groups()
    if found.group(3) is None and found.group(4) is None:  # one cell, or a whole tab
        c1, r1 = (c0, r0) if cells else ("", "")
    span = Span(
        tab,
        int(r0) - 1 if r0 else 0,
        col_index(c0) if c0 else 0,
        int(r1) - 1 if r1 else None,
        col_index(c1) if c1 else None,
    )
    if r0 == "0" or r1 == "0" or (span.row1 is not None and span.row1 < span.row0):
        raise SheetsError(400, f"Unable to parse range: {text}")
    return span


@dataclass
class Call:
    """One API request, as a handler sees it."""

    book: Spreadsheet
    params: dict[str, str]
    query: dict[str, str]
    multi: list[tuple[str, str]]
    body: Any


class FakeSheets:
    """The fake's state and its ASGI app (serve ``app``; set ``base_url`` to where it runs)."""

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery
        self.lock = threading.RLock()
        self.books: dict[str, Spreadsheet] = {}
        #: requests that broke the discovery document, and answers that would have
        self.violations: list[str] = []
        #: discovery method id (or "oauth2.token") per request, in order
        self.calls: list[str] = []
        #: (method id, parsed body) per API request, for assertions on batching
        self.bodies: list[tuple[str, Any]] = []
        self.tokens: set[str] = set()
        self.base_url = ""
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._fault: tuple[int, int | None, str | None] | None = None
        self._token_status: int | None = None
        self._poison = False
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=methods)])

    # -- test controls -------------------------------------------------------------------
    def add_spreadsheet(self, title: str = "Clinic") -> str:
        """A new spreadsheet holding one empty tab "Sheet1", as Sheets creates one; its id."""
        sid = "1" + secrets.token_urlsafe(30).replace("-", "x").replace("_", "y")
        with self.lock:
            self.books[sid] = Spreadsheet(sid, title, [Tab(0, "Sheet1")])
        return sid

    def drop_spreadsheet(self, sid: str) -> None:
        """Forget a spreadsheet."""
        with self.lock:
            self.books.pop(sid, None)

    def tab(self, sid: str, title: str) -> Tab | None:
        """A tab, for assertions."""
        with self.lock:
            return self.books[sid].tab(title)

    def count(self, method_id: str) -> int:
        """How many requests of ``method_id`` (e.g. ``sheets.spreadsheets.values.append``)."""
        with self.lock:
            return sum(1 for c in self.calls if c == method_id)

    def take_violations(self) -> list[str]:
        """The violations recorded so far (and forget them)."""
        with self.lock:
            out, self.violations = self.violations, []
            return out

    @contextmanager
    def failing(
        self, status: int, *, times: int | None = None, retry_after: str | None = None
    ) -> Iterator[None]:
        """Answer API requests (``times`` of them, or all) with ``status``; ``Retry-After``
        when given. The token endpoint is not affected."""
        with self.lock:
            self._fault = (status, times, retry_after)
        try:
            yield
        finally:
            with self.lock:
                self._fault = None

    @contextmanager
    def token_refused(self, status: int = 400) -> Iterator[None]:
        """The token endpoint refuses every grant."""
        with self.lock:
            self._token_status = status
        try:
            yield
        finally:
            with self.lock:
                self._token_status = None

    @contextmanager
    def poisoned(self) -> Iterator[None]:
        """A write holding a cell "poison" answers 400, quoting the row's values."""
        with self.lock:
            self._poison = True
        try:
            yield
        finally:
            with self.lock:
                self._poison = False

    def service_account(self, project: str = "healthie-test") -> dict[str, str]:
        """A new service-account key JSON (as a dict) whose token_uri is this fake's."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = f"sheets-{uuid.uuid4().hex[:8]}@{project}.iam.gserviceaccount.com"
        with self.lock:
            self._keys[email] = key.public_key()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "type": "service_account",
            "project_id": project,
            "private_key_id": uuid.uuid4().hex,
            "private_key": pem,
            "client_email": email,
            "client_id": str(uuid.uuid4().int)[:21],
            "token_uri": f"{self.base_url}/token",
        }

    # -- HTTP ----------------------------------------------------------------------------
    async def _endpoint(self, request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        body = await request.body()
        with self.lock:
            status, payload, headers = self.dispatch(
                request.method,
                raw_path.decode("latin-1"),
                request.query_params.multi_items(),
                dict(request.headers),
                body,
            )
        return JSONResponse(payload, status_code=status, headers=headers)

    def dispatch(
        self,
        http_method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        raw_body: bytes,
    ) -> Answer:
        """One request: validated, then answered (see the module docstring)."""
        if path == "/token" and http_method == "POST":
            self.calls.append("oauth2.token")
            return self._token(raw_body)
        found = self.discovery.match(http_method, path)
        if found is None:
            self.violations.append(f"{http_method} {path}: no method of the discovery document")
            return error(400, "No such method")
        method, params = found
        self.calls.append(method.id)
        problems = self.discovery.check_query(method, query)
        body: Any = None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                problems.append("the body is not JSON")
        if method.request_ref:
            if body is None:
                problems.append("the body is missing")
            else:
                problems += self.discovery.check_body(method.request_ref, body)
        elif raw_body:
            problems.append("the method takes no body")
        self.bodies.append((method.id, body))
        if problems:
            self.violations += [f"{method.id}: {p}" for p in problems]
            return error(400, "Invalid JSON payload received. " + "; ".join(problems))
        if self._fault is not None and self._fault[1] != 0:
            status, times, retry_after = self._fault
            if times is not None:
                self._fault = (status, times - 1, retry_after)
            extra = {"Retry-After": retry_after} if retry_after else {}
            message = "Quota exceeded for quota metric 'Write requests' and limit 'Write "
            message += "requests per minute per user' of service 'sheets.googleapis.com'"
            return error(status, message if status == 429 else "Injected", extra)
        bearer = headers.get("authorization", "")
        if not bearer.startswith("Bearer ") or bearer[7:] not in self.tokens:
            return error(401, "Request had invalid authentication credentials.")
        handler = {
            "sheets.spreadsheets.get": self._get,
            "sheets.spreadsheets.batchUpdate": self._batch_update,
            "sheets.spreadsheets.values.batchGet": self._values_batch_get,
            "sheets.spreadsheets.values.batchUpdate": self._values_batch_update,
            "sheets.spreadsheets.values.append": self._values_append,
        }.get(method.id)
        if handler is None:
            self.violations.append(f"{method.id}: called, but the fake does not implement it")
            return error(501, f"{method.id} is not implemented by the fake")
        book = self.books.get(params["spreadsheetId"])
        if book is None:
            return error(404, "Requested entity was not found.")
        try:
            status, answer = handler(Call(book, params, dict(query), query, body))
        except SheetsError as exc:
            return error(exc.status, str(exc))
        if method.response_ref:
            drift = self.discovery.check_body(method.response_ref, answer)
            self.violations += [f"{method.id} answer: {p}" for p in drift]
        return status, answer, {}

    # -- OAuth 2.0 token endpoint (RFC 7523 JWT bearer grant) ------------------------------
    def _token(self, raw_body: bytes) -> Answer:
        if self._token_status is not None:
            refused = {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            return self._token_status, refused, {}
        form = dict(parse_qsl(raw_body.decode()))
        if form.get("grant_type") != JWT_BEARER:
            return 400, {"error": "unsupported_grant_type"}, {}
        if not self._verify(form.get("assertion", "")):
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT."}, {}
        token = "ya29.fake-" + secrets.token_urlsafe(24)
        self.tokens.add(token)
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}, {}

    def _verify(self, assertion: str) -> bool:
        try:
            head, payload, signature = assertion.split(".")
            header = json.loads(_unb64(head))
            claims = json.loads(_unb64(payload))
            key = self._keys[claims["iss"]]
            if header.get("alg") != "RS256":
                return False
            key.verify(
                _unb64(signature), f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except (ValueError, KeyError, InvalidSignature):
            return False
        now = time.time()
        return (
            claims.get("aud") in (GOOGLE_TOKEN_AUDIENCE, f"{self.base_url}/token")
            and SHEETS_SCOPE in str(claims.get("scope", "")).split()
            and claims.get("iat", now + 999) <= now + 60
            and claims.get("exp", 0) > now
        )

    # -- spreadsheets --------------------------------------------------------------------
    def _get(self, call: Call) -> Any:
        book = call.book
        return 200, {
            "spreadsheetId": book.spreadsheet_id,
            "properties": {"title": book.title},
            "sheets": [{"properties": t.properties(i)} for i, t in enumerate(book.tabs)],
            "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{book.spreadsheet_id}/edit",
        }

    def _batch_update(self, call: Call) -> Any:
        book, body = call.book, call.body
        # applied to a copy and kept only if every request succeeds (Sheets is all or nothing)
        work = Spreadsheet(
            book.spreadsheet_id,
            book.title,
            [Tab(**{**t.__dict__, "cells": [list(r) for r in t.cells]}) for t in book.tabs],
        )
        replies: list[dict[str, Any]] = []
        for i, request in enumerate(body.get("requests") or []):
            kinds = [k for k, v in request.items() if v is not None]
            if len(kinds) != 1:
                raise SheetsError(400, f"Invalid requests[{i}]: exactly one kind per request")
            kind = kinds[0]
            apply = {
                "addSheet": self._add_sheet,
                "appendDimension": self._append_dimension,
                "deleteDimension": self._delete_dimension,
            }.get(kind)
            if apply is None:
                self.violations.append(f"batchUpdate request {kind}: not implemented by the fake")
                raise SheetsError(501, f"requests[{i}].{kind} is not implemented by the fake")
            replies.append(apply(work, request[kind], f"requests[{i}].{kind}"))
        if sum(t.row_count * t.column_count for t in work.tabs) > MAX_CELLS:
            raise SheetsError(
                400,
                "This action would increase the number of cells in the workbook above the "
                f"limit of {MAX_CELLS} cells.",
            )
        book.tabs = work.tabs
        return 200, {"spreadsheetId": book.spreadsheet_id, "replies": replies}

    def _add_sheet(self, book: Spreadsheet, req: dict[str, Any], where: str) -> Any:
        props = req.get("properties") or {}
        grid = props.get("gridProperties") or {}
        title = props.get("title") or f"Sheet{len(book.tabs) + 1}"
        if book.tab(title) is not None:
            raise SheetsError(
                400,
                f'Invalid {where}: A sheet with the name "{title}" already exists. '
                "Please enter another name.",
            )
        sheet_id = props.get("sheetId")
        if sheet_id is None:
            sheet_id = secrets.randbelow(2**31 - 1) + 1
        tab = Tab(
            int(sheet_id),
            title,
            int(grid.get("rowCount") or 1000),
            int(grid.get("columnCount") or 26),
            int(grid.get("frozenRowCount") or 0),
        )
        if tab.frozen_rows >= tab.row_count:
            raise SheetsError(400, f"Invalid {where}: You can't freeze all visible rows.")
        book.tabs.append(tab)
        return {"addSheet": {"properties": tab.properties(len(book.tabs) - 1)}}

    def _by_id(self, book: Spreadsheet, sheet_id: Any, where: str) -> Tab:
        found = next((t for t in book.tabs if t.sheet_id == int(sheet_id or 0)), None)
        if found is None:
            raise SheetsError(400, f"Invalid {where}: No grid with id: {sheet_id}")
        return found

    def _append_dimension(self, book: Spreadsheet, req: dict[str, Any], where: str) -> Any:
        tab = self._by_id(book, req.get("sheetId"), where)
        length = int(req.get("length") or 0)
        if length <= 0:
            raise SheetsError(400, f"Invalid {where}: length must be positive")
        if req.get("dimension") == "COLUMNS":
            tab.column_count += length
        elif req.get("dimension") == "ROWS":
            tab.row_count += length
        else:
            raise SheetsError(400, f"Invalid {where}: dimension must be ROWS or COLUMNS")
        return {}

    def _delete_dimension(self, book: Spreadsheet, req: dict[str, Any], where: str) -> Any:
        span = req.get("range") or {}
        tab = self._by_id(book, span.get("sheetId"), where)
        start, end = int(span.get("startIndex") or 0), int(span.get("endIndex") or 0)
        if span.get("dimension") != "ROWS":
            self.violations.append(f"{where}: the fake deletes ROWS only")
            raise SheetsError(501, f"{where}: the fake deletes ROWS only")
        if not 0 <= start < end <= tab.row_count:
            raise SheetsError(400, f"Invalid {where}: range out of bounds")
        if tab.row_count - (end - start) <= tab.frozen_rows:
            raise SheetsError(
                400, f"Invalid {where}: Sorry, it is not possible to delete all non-frozen rows."
            )
        del tab.cells[start:end]
        tab.row_count -= end - start
        return {}

    # -- values --------------------------------------------------------------------------
    def _values_batch_get(self, call: Call) -> Any:
        book, query, multi = call.book, call.query, call.multi
        formatted = query.get("valueRenderOption", "FORMATTED_VALUE") == "FORMATTED_VALUE"
        if query.get("majorDimension", "ROWS") != "ROWS":
            self.violations.append("values.batchGet: the fake reads majorDimension ROWS only")
        out = []
        for name, text in multi:
            if name != "ranges":
                continue
            span = resolve(book, text)
            last = span.row1 if span.row1 is not None else span.tab.row_count - 1
            rows = []
            for r in range(span.row0, min(last, len(span.tab.cells) - 1) + 1):
                line = span.tab.cells[r]
                end = len(line) if span.col1 is None else min(len(line), span.col1 + 1)
                cells = [_render(v, formatted) for v in line[span.col0 : end]]
                while cells and cells[-1] == "":
                    cells.pop()
                rows.append(cells)
            while rows and not rows[-1]:
                rows.pop()
            found: dict[str, Any] = {"range": span.label(), "majorDimension": "ROWS"}
            if rows:
                found["values"] = rows
            out.append(found)
        return 200, {"spreadsheetId": book.spreadsheet_id, "valueRanges": out}

    def _values_batch_update(self, call: Call) -> Any:
        book, body = call.book, call.body
        self._input_option(body.get("valueInputOption"))
        planned = [self._plan(book, vr, f"data[{i}]") for i, vr in enumerate(body.get("data", []))]
        responses = [self._write(span, rows) for span, rows in planned]
        return 200, {
            "spreadsheetId": book.spreadsheet_id,
            "totalUpdatedRows": sum(r["updatedRows"] for r in responses),
            "totalUpdatedColumns": max([r["updatedColumns"] for r in responses], default=0),
            "totalUpdatedCells": sum(r["updatedCells"] for r in responses),
            "totalUpdatedSheets": len({s.tab.sheet_id for s, _ in planned}),
            "responses": [{"spreadsheetId": book.spreadsheet_id, **r} for r in responses],
        }

    def _values_append(self, call: Call) -> Any:
        book, params, query, body = call.book, call.params, call.query, call.body
        self._input_option(query.get("valueInputOption"))
        insert = query.get("insertDataOption", "OVERWRITE") == "INSERT_ROWS"
        span = resolve(book, params["range"])
        tab = span.tab
        start = span.row0
        while start < len(tab.cells) and tab.row_empty(start):  # the table's first row
            start += 1
        end = start
        while end < len(tab.cells) and not tab.row_empty(end):  # ... and the row after it
            end += 1
        table_range = None
        if end > start:
            width = max(len(tab.cells[r]) for r in range(start, end))
            table_range = f"{tab.label()}!A{start + 1}:{col_letters(max(width, 1) - 1)}{end}"
        else:
            end = span.row0
        rows = _rows(body, "body")
        grow = len(rows) if insert else max(0, end + len(rows) - tab.row_count)
        target = Span(tab, end, span.col0, end + max(len(rows), 1) - 1, None)
        self._plan_rows(target, rows, "body", grow=grow)  # refused whole, before any change
        if insert:
            tab.cells[end:end] = [[] for _ in rows]
        tab.row_count += grow
        update = {"spreadsheetId": book.spreadsheet_id, **self._write(target, rows)}
        answer: dict[str, Any] = {"spreadsheetId": book.spreadsheet_id, "updates": update}
        if table_range:
            answer["tableRange"] = table_range
        return 200, answer

    def _input_option(self, option: Any) -> None:
        if option is None:
            raise SheetsError(400, "'valueInputOption' is required but not specified")
        if option != "RAW":
            self.violations.append(f"valueInputOption {option}: the fake implements RAW only")
            raise SheetsError(501, "the fake implements valueInputOption RAW only")

    def _plan(self, book: Spreadsheet, vr: dict[str, Any], where: str) -> tuple[Span, list[Any]]:
        if vr.get("majorDimension", "ROWS") != "ROWS":
            self.violations.append(f"{where}: the fake writes majorDimension ROWS only")
        span = resolve(book, str(vr.get("range", "")))
        return self._plan_rows(span, _rows(vr, where), where)

    def _plan_rows(
        self, span: Span, rows: list[Any], where: str, *, grow: int = 0
    ) -> tuple[Span, list[Any]]:
        """Check ``rows`` fit ``span``, the grid (``grow`` rows more, for an append), the cell
        size and the poison; nothing is written yet (a request is refused whole)."""
        tab = span.tab
        if span.row1 is not None and span.row0 + len(rows) - 1 > span.row1:
            raise SheetsError(
                400,
                f"Requested writing within range [{span.label()}], but tried writing to row "
                f"[{span.row0 + len(rows)}]",
            )
        for r, line in enumerate(rows):
            if span.col1 is not None and span.col0 + len(line) - 1 > span.col1:
                raise SheetsError(
                    400,
                    f"Requested writing within range [{span.label()}], but tried writing to "
                    f"column [{col_letters(span.col0 + len(line) - 1)}]",
                )
            if span.row0 + r >= tab.row_count + grow or span.col0 + len(line) > tab.column_count:
                raise SheetsError(
                    400,
                    f"Range ({tab.label()}!{col_letters(span.col0)}{span.row0 + r + 1}) exceeds "
                    f"grid limits. Max rows: {tab.row_count}, max columns: {tab.column_count}",
                )
            for value in line:
                if isinstance(value, str) and len(value) > MAX_CELL_CHARS:
                    raise SheetsError(
                        400,
                        "Your input contains more than the maximum of 50000 characters in a "
                        "single cell.",
                    )
            if self._poison and "poison" in line:
                raise SheetsError(400, f"Invalid {where}: cannot write row {json.dumps(line)}")
        return span, rows

    def _write(self, span: Span, rows: list[Any]) -> dict[str, Any]:
        cells = 0
        for r, line in enumerate(rows):
            for c, value in enumerate(line):
                if value is not None:  # null: leave the cell as it is
                    span.tab.put(span.row0 + r, span.col0 + c, value)
                    cells += 1
        width = max((len(line) for line in rows), default=0)
        last = f"{col_letters(span.col0 + max(width, 1) - 1)}{span.row0 + max(len(rows), 1)}"
        return {
            "updatedRange": f"{span.tab.label()}!{col_letters(span.col0)}{span.row0 + 1}:{last}",
            "updatedRows": len(rows),
            "updatedColumns": width,
            "updatedCells": cells,
        }


def _rows(vr: dict[str, Any], where: str) -> list[Any]:
    rows = vr.get("values") or []
    for r, line in enumerate(rows):
        if not isinstance(line, list) or any(isinstance(v, dict | list) for v in line):
            raise SheetsError(400, f"Invalid {where}.values[{r}]: a row is a list of scalars")
    return rows


def _render(value: Any, formatted: bool) -> Any:
    if not formatted or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- one fake per test session -------------------------------------------------------------
_SESSION: dict[str, FakeSheets] = {}


def session_fake(config: Any) -> FakeSheets:
    """The session's fake, started on first use (stopped when the session ends); skips (or
    fails with REQUIRE_SERVICES=1) without the discovery document in ../shared."""
    if not DISCOVERY.is_file():
        require_service("Sheets discovery document", f"{DISCOVERY} not found (../shared is absent)")
    fake = _SESSION.get("fake")
    if fake is None:
        fake = FakeSheets(Discovery.load(DISCOVERY))
        stack = ExitStack()
        fake.base_url = stack.enter_context(serve_in_thread(fake.app))
        _SESSION["fake"] = fake
        config.add_cleanup(stack.close)
        config.add_cleanup(lambda: _SESSION.pop("fake", None))
    return fake


@contextmanager
def fresh_spreadsheet(fake: FakeSheets) -> Iterator[str]:
    """A new spreadsheet for one test, dropped afterwards."""
    sid = fake.add_spreadsheet()
    try:
        yield sid
    finally:
        fake.drop_spreadsheet(sid)
