"""A local Airtable for the connector's tests: a threaded HTTP server holding bases, tables and
records in memory, answering the Web API requests the connector sends.

**This is not a vendor-published contract.** Airtable publishes no OpenAPI file
(``../shared/openapi/SOURCES.md``, "Looked for, not taken"); this mock follows Airtable's
documented behaviour and answer shapes (airtable.com/developers/web/api: list-records,
create-records, update-multiple-records, delete-multiple-records, create-table, create-field,
field-model, errors, rate-limits) and is driven through pyairtable's real request layer. Where
Airtable documents no error code (several matches of an upsert, a duplicate table), the
``type`` below is this mock's own.

::

    request ─▶ Authorization: Bearer <token>?       else 401 AUTHENTICATION_REQUIRED
            ─▶ fault injection (``failing``)        that status, Airtable's error shape
            ─▶ rate (``enforce_rate``)              > 5 requests in 1 s for a base -> 429, and
                                                      every request for 30 s after -> 429
            ─▶ route                                unknown -> 404 NOT_FOUND (+ a violation)
               GET  /v0/meta/bases/{b}/tables               the base schema
               POST /v0/meta/bases/{b}/tables               create table (field options checked)
               POST /v0/meta/bases/{b}/tables/{t}/fields    create field
               GET  /v0/{b}/{t}, POST /v0/{b}/{t}/listRecords   list (filterByFormula, fields[],
                                                              pageSize, offset)
               POST /v0/{b}/{t}                     create       PATCH|PUT /v0/{b}/{t}   update /
               DELETE /v0/{b}/{t}?records[]=        delete         upsert (performUpsert)

Strict where the connector could go wrong: more than 10 records in a request -> 422; an unknown
field name -> 422 UNKNOWN_FIELD_NAME; a value the field type cannot hold -> 422
INVALID_VALUE_FOR_COLUMN (its message quotes the value, as Airtable's can, so the tests prove
none reaches an engine error); an unknown body key or query parameter -> 422; an upsert whose
merge values match several records -> 422; ``filterByFormula`` parsed by a small grammar of the
shapes the connector sends (AND/OR of ``{field}='text'``): anything else -> 422
INVALID_FILTER_BY_FORMULA. Every refusal of a malformed request is also appended to
``violations``, which each test asserts empty at its end. Airtable drops empty cells ("",
false, null) from records, and so does this mock.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

MAX_RECORDS = 10
RATE, PENALTY = 5, 30.0
TYPES = {"singleLineText", "multilineText", "number", "checkbox", "date", "dateTime"}
PRIMARY_TYPES = {"singleLineText", "multilineText", "number", "date", "dateTime"}
Answer = tuple[int, Any]


def error(status: int, kind: str, message: str) -> Answer:
    """Airtable's error answer: ``{"error": {"type": ..., "message": ...}}``."""
    return status, {"error": {"type": kind, "message": message}}


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(7)[:14]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Refused(Exception):
    """A request the mock answers with an Airtable error (internal to the mock)."""

    def __init__(self, status: int, kind: str, message: str, *, violation: bool = True) -> None:
        super().__init__(message)
        self.answer, self.violation = error(status, kind, message), violation


@dataclass
class MockTable:
    id: str
    name: str
    fields: list[dict[str, Any]]
    description: str | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def types(self) -> dict[str, str]:
        return {f["name"]: f["type"] for f in self.fields}

    def model(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "name": self.name,
            "primaryFieldId": self.fields[0]["id"],
            "fields": [dict(f) for f in self.fields],
            "views": [{"id": "viw" + self.id[3:], "name": "Grid view", "type": "grid"}],
        }
        if self.description:
            out["description"] = self.description
        return out


# -- filterByFormula: AND/OR of {field}='text' ----------------------------------------------
_TOKEN = re.compile(r"\s*(?:(AND|OR)\(|(\{(?:[^}\\]|\\.)*\})\s*=\s*('(?:[^'\\]|\\.)*')|(,)|(\)))")


def parse_formula(text: str) -> Any:
    """The formula as a tree (``("AND"|"OR", [...])`` or ``("EQ", field, value)``), or
    ValueError for any other shape."""
    pos = 0

    def expr() -> Any:
        nonlocal pos
        found = _TOKEN.match(text, pos)
        if found is None:
            raise ValueError(f"unknown formula shape at {pos}")
        pos = found.end()
        if found.group(1):
            items = [expr()]
            while True:
                sep = _TOKEN.match(text, pos)
                if sep is None or not (sep.group(4) or sep.group(5)):
                    raise ValueError(f"expected , or ) at {pos}")
                pos = sep.end()
                if sep.group(5):
                    return (found.group(1), items)
                items.append(expr())
        if found.group(2):
            name = re.sub(r"\\(.)", r"\1", found.group(2)[1:-1])
            value = re.sub(r"\\(.)", r"\1", found.group(3)[1:-1])
            return ("EQ", name, value)
        raise ValueError(f"unknown formula shape at {found.start()}")

    tree = expr()
    if text[pos:].strip():
        raise ValueError("trailing text after the formula")
    return tree


def evaluate(tree: Any, fields: dict[str, Any]) -> bool:
    if tree[0] == "EQ":
        return str(fields.get(tree[1], "")) == tree[2]
    results = [evaluate(t, fields) for t in tree[1]]
    return all(results) if tree[0] == "AND" else any(results)


def formula_fields(tree: Any) -> set[str]:
    return {tree[1]} if tree[0] == "EQ" else set().union(*(formula_fields(t) for t in tree[1]))


# -- field types --------------------------------------------------------------------------
def check_field_spec(spec: Any) -> dict[str, Any]:
    """A create-field body, checked against the field model; the field as stored."""
    if not isinstance(spec, dict) or set(spec) - {"name", "type", "description", "options"}:
        raise Refused(422, "INVALID_REQUEST_UNKNOWN", "Invalid field definition")
    name, kind, options = spec.get("name"), spec.get("type"), spec.get("options")
    if not isinstance(name, str) or not name.strip() or kind not in TYPES:
        raise Refused(422, "INVALID_FIELD_TYPE", f"Invalid field type or name: {kind}")
    needs = {
        "number": {"precision"},
        "checkbox": {"icon", "color"},
        "date": {"dateFormat"},
        "dateTime": {"dateFormat", "timeFormat", "timeZone"},
    }.get(kind, set())
    options = options or {}
    given = set(options)
    if given != needs:
        raise Refused(422, "INVALID_FIELD_TYPE_OPTIONS", f"Invalid options for {kind}")
    if kind == "number" and not (
        isinstance(options["precision"], int) and 0 <= options["precision"] <= 8
    ):
        raise Refused(422, "INVALID_FIELD_TYPE_OPTIONS", "precision must be 0 to 8")
    out: dict[str, Any] = {"id": new_id("fld"), "name": name, "type": kind}
    if options:
        out["options"] = dict(options)
    return out


def cell(kind: str, name: str, value: Any) -> Any:
    """``value`` as a cell of a ``kind`` field (None: empty), or Refused quoting it."""
    if value is None or value == "" or value is False and kind == "checkbox":
        return None
    ok = False
    if kind in ("singleLineText", "multilineText"):
        ok = isinstance(value, str) and len(value) <= 100_000
        ok = ok and (kind == "multilineText" or "\n" not in value)
    elif kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == "checkbox":
        ok = value is True
    elif kind == "date":
        try:
            ok = isinstance(value, str) and len(value) == 10 and bool(date.fromisoformat(value))
        except ValueError:
            ok = False
    elif kind == "dateTime" and isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if not ok:
        raise Refused(
            422,
            "INVALID_VALUE_FOR_COLUMN",
            f'Field "{name}" cannot accept the provided value: {json.dumps(value)[:200]}',
            violation=False,  # a value problem, not a malformed request
        )
    return value


class MockAirtable:
    """The mock's state and its HTTP server (``start()``, then ``base_url``)."""

    def __init__(self, token: str = "patTEST.healthie-sync") -> None:
        self.token = token
        self.lock = threading.RLock()
        self.bases: dict[str, dict[str, MockTable]] = {}  # base id -> table id -> table
        #: malformed requests (each test asserts none)
        self.violations: list[str] = []
        #: (method, route name, base, records in the body, monotonic time) per request
        self.calls: list[tuple[str, str, str, int, float]] = []
        self.enforce_rate = False
        self.rate_limited = 0
        self._sent: dict[str, deque[float]] = {}
        self._penalty: dict[str, float] = {}
        self._fault: list[Any] | None = None
        self._poison = False
        self._method = ""
        self._server: ThreadingHTTPServer | None = None
        self.base_url = ""

    # -- test controls -------------------------------------------------------------------
    def add_base(self) -> str:
        base = "app" + secrets.token_hex(7)[:14]
        with self.lock:
            self.bases[base] = {}
        return base

    def table(self, base: str, name: str) -> MockTable | None:
        with self.lock:
            return next((t for t in self.bases.get(base, {}).values() if t.name == name), None)

    def count(self, route: str) -> int:
        with self.lock:
            return sum(1 for c in self.calls if c[1] == route)

    def take_violations(self) -> list[str]:
        with self.lock:
            out, self.violations = self.violations, []
            return out

    @contextmanager
    def failing(self, status: int, *, times: int | None = None) -> Iterator[None]:
        """Answer requests (``times`` of them, or all) with ``status``."""
        with self.lock:
            self._fault = [status, times]
        try:
            yield
        finally:
            with self.lock:
                self._fault = None

    @contextmanager
    def poisoned(self) -> Iterator[None]:
        """A write of a record whose key is "poison" answers 422 INVALID_VALUE_FOR_COLUMN."""
        with self.lock:
            self._poison = True
        try:
            yield
        finally:
            with self.lock:
                self._poison = False

    def start(self) -> str:
        mock = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body = mock.dispatch(
                    self.command, self.path, self.headers.get("Authorization", ""), raw
                )
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- dispatch ------------------------------------------------------------------------
    def dispatch(self, method: str, target: str, auth: str, raw: bytes) -> Answer:
        parts = urlsplit(target)
        query = parse_qsl(parts.query, keep_blank_values=True)
        path = [unquote(p) for p in parts.path.strip("/").split("/")]
        with self.lock:
            meta = path[:3] == ["v0", "meta", "bases"]
            base = (
                (path[3] if len(path) > 3 else "") if meta else (path[1] if len(path) > 1 else "")
            )
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return error(400, "INVALID_REQUEST_BODY", "Could not parse the request body")
            route, handler = self._route(method, path)
            self._method = method
            count = len(body.get("records", [])) if isinstance(body, dict) else 0
            count = count or sum(1 for k, _ in query if k == "records[]")
            self.calls.append((method, route, base, count, time.monotonic()))
            if auth != f"Bearer {self.token}":
                return error(401, "AUTHENTICATION_REQUIRED", "Authentication required")
            if self._fault is not None and self._fault[1] != 0:
                if self._fault[1] is not None:
                    self._fault[1] -= 1
                return error(self._fault[0], "INJECTED", "Injected failure")
            if self.enforce_rate and self._over_rate(base):
                self.rate_limited += 1
                return error(
                    429, "RATE_LIMIT_REACHED", "Rate limit exceeded. Please try again later"
                )
            if handler is None:
                self.violations.append(f"{method} {parts.path}: no such route")
                return error(404, "NOT_FOUND", "Could not find what you are looking for")
            try:
                if base not in self.bases:
                    raise Refused(
                        403,
                        "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND",
                        "Invalid permissions, or the requested model was not found.",
                        violation=False,
                    )
                return handler(base, path, query, body)
            except Refused as refused:
                if refused.violation:
                    self.violations.append(
                        f"{method} {route}: {refused.answer[1]['error']['message']}"
                    )
                return refused.answer

    def _over_rate(self, base: str) -> bool:
        now = time.monotonic()
        if now < self._penalty.get(base, 0.0):
            return True
        sent = self._sent.setdefault(base, deque())
        while sent and now - sent[0] >= 1.0:
            sent.popleft()
        if len(sent) >= RATE:
            self._penalty[base] = now + PENALTY  # "wait 30 seconds" (rate-limits page)
            return True
        sent.append(now)
        return False

    def _route(self, method: str, path: list[str]) -> tuple[str, Any]:
        if path[:3] == ["v0", "meta", "bases"]:
            if len(path) == 5 and path[4] == "tables":
                return {
                    "GET": ("meta.tables", self._schema),
                    "POST": ("meta.create_table", self._create_table),
                }.get(method, ("?", None))
            if len(path) == 7 and path[4] == "tables" and path[6] == "fields" and method == "POST":
                return "meta.create_field", self._create_field
            return "?", None
        if len(path) == 3 and path[0] == "v0":
            return {
                "GET": ("records.list", self._list),
                "POST": ("records.create", self._create),
                "PATCH": ("records.update", self._update),
                "PUT": ("records.update", self._update),
                "DELETE": ("records.delete", self._delete),
            }.get(method, ("?", None))
        if len(path) == 4 and path[0] == "v0" and path[3] == "listRecords" and method == "POST":
            return "records.list", self._list
        return "?", None

    def _table_of(self, base: str, id_or_name: str) -> MockTable:
        tables = self.bases[base]
        found = tables.get(id_or_name) or next(
            (t for t in tables.values() if t.name == id_or_name), None
        )
        if found is None:
            raise Refused(
                403,
                "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND",
                "Invalid permissions, or the requested model was not found.",
                violation=False,
            )
        return found

    @staticmethod
    def _keys(body: Any, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
        if not isinstance(body, dict):
            raise Refused(422, "INVALID_REQUEST_MISSING_FIELDS", "The request needs a JSON object")
        unknown, missing = sorted(set(body) - allowed), sorted(required - set(body))
        if unknown or missing:
            raise Refused(
                422,
                "INVALID_REQUEST_UNKNOWN",
                f"Invalid request: unknown {unknown}, missing {missing}",
            )
        return body

    # -- metadata ------------------------------------------------------------------------
    def _schema(
        self, base: str, path: list[str], query: list[tuple[str, str]], body: Any
    ) -> Answer:
        if body is not None or any(k != "include[]" for k, _ in query):
            raise Refused(
                422, "INVALID_REQUEST_UNKNOWN", "get base schema takes no body or such parameter"
            )
        return 200, {"tables": [t.model() for t in self.bases[base].values()]}

    def _create_table(
        self, base: str, path: list[str], query: list[tuple[str, str]], body: Any
    ) -> Answer:
        spec = self._keys(body, {"name", "description", "fields"}, {"name", "fields"})
        name, specs = spec["name"], spec["fields"]
        if (
            not isinstance(name, str)
            or not name.strip()
            or not isinstance(specs, list)
            or not specs
        ):
            raise Refused(422, "INVALID_REQUEST_UNKNOWN", "A table needs a name and fields")
        if any(t.name.lower() == name.lower() for t in self.bases[base].values()):
            raise Refused(
                422, "DUPLICATE_TABLE_NAME", f"A table named {name} exists", violation=False
            )
        fields = [check_field_spec(f) for f in specs]
        if fields[0]["type"] not in PRIMARY_TYPES:
            raise Refused(422, "INVALID_PRIMARY_FIELD", "That type cannot be the primary field")
        if len({f["name"].lower() for f in fields}) != len(fields):
            raise Refused(422, "DUPLICATE_FIELD_NAME", "Field names must be unique")
        table = MockTable(new_id("tbl"), name, fields, spec.get("description"))
        self.bases[base][table.id] = table
        return 200, table.model()

    def _create_field(
        self, base: str, path: list[str], query: list[tuple[str, str]], body: Any
    ) -> Answer:
        table = self._table_of(base, path[5])
        made = check_field_spec(body)
        if any(f["name"].lower() == made["name"].lower() for f in table.fields):
            raise Refused(
                422, "DUPLICATE_FIELD_NAME", "A field of that name exists", violation=False
            )
        table.fields.append(made)
        return 200, made

    # -- records -------------------------------------------------------------------------
    def _record(self, record_id: str, table: MockTable, created: str) -> dict[str, Any]:
        return {
            "id": record_id,
            "createdTime": created,
            "fields": dict(table.records[record_id]["fields"]),
        }

    def _cells(
        self, table: MockTable, fields: Any, *, replace: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if not isinstance(fields, dict):
            raise Refused(422, "INVALID_RECORDS", "A record needs fields")
        types = table.types()
        for name in fields:
            if name not in types:
                raise Refused(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')
        if self._poison and fields.get("key") == "poison":
            raise Refused(
                422,
                "INVALID_VALUE_FOR_COLUMN",
                f"Cannot accept {json.dumps(fields)[:300]}",
                violation=False,
            )
        out = dict(replace or {})
        for name, value in fields.items():
            stored = cell(types[name], name, value)
            if stored is None:
                out.pop(name, None)
            else:
                out[name] = stored
        return out

    def _records_of(self, body: dict[str, Any]) -> list[Any]:
        records = body["records"]
        if not isinstance(records, list) or not records:
            raise Refused(422, "INVALID_RECORDS", "records must be a non-empty array")
        if len(records) > MAX_RECORDS:
            raise Refused(
                422,
                "INVALID_RECORDS",
                f"at most {MAX_RECORDS} records per request, got {len(records)}",
            )
        return records

    def _list(self, base: str, path: list[str], query: list[tuple[str, str]], body: Any) -> Answer:
        table = self._table_of(base, path[2])
        params: dict[str, Any] = {}
        wanted: list[str] = []
        for k, v in query:
            if k == "fields[]":
                wanted.append(v)
            elif k in ("filterByFormula", "pageSize", "offset", "maxRecords"):
                params[k] = v
            else:
                raise Refused(422, "INVALID_REQUEST_UNKNOWN", f"Unknown parameter {k}")
        if body is not None:
            given = self._keys(
                body,
                {
                    "filterByFormula",
                    "fields",
                    "pageSize",
                    "offset",
                    "maxRecords",
                    "returnFieldsByFieldId",
                },
            )
            wanted += list(given.pop("fields", []))
            params.update(given)
        unknown = [n for n in wanted if n not in table.types()]
        if unknown:
            raise Refused(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{unknown[0]}"')
        tree = None
        if "filterByFormula" in params:
            try:
                tree = parse_formula(params["filterByFormula"])
            except ValueError as exc:
                raise Refused(
                    422,
                    "INVALID_FILTER_BY_FORMULA",
                    f"The formula for filtering records is invalid: {exc}",
                ) from None
            if formula_fields(tree) - set(table.types()):
                raise Refused(
                    422, "INVALID_FILTER_BY_FORMULA", "Unknown field names in the formula"
                )
        size = int(params.get("pageSize", 100))
        start = int(params.get("offset", 0) or 0)
        ids = [i for i, r in table.records.items() if tree is None or evaluate(tree, r["fields"])]
        page = ids[start : start + min(size, 100)]
        out = []
        for i in page:
            record = self._record(i, table, table.records[i]["created"])
            if wanted:
                record["fields"] = {k: v for k, v in record["fields"].items() if k in wanted}
            out.append(record)
        answer: dict[str, Any] = {"records": out}
        if start + len(page) < len(ids):
            answer["offset"] = str(start + len(page))
        return 200, answer

    def _create(
        self, base: str, path: list[str], query: list[tuple[str, str]], body: Any
    ) -> Answer:
        table = self._table_of(base, path[2])
        spec = self._keys(body, {"records", "typecast", "returnFieldsByFieldId"}, {"records"})
        made = []
        staged = [self._cells(table, r.get("fields")) for r in self._records_of(spec)]
        for fields in staged:
            rid = new_id("rec")
            table.records[rid] = {"fields": fields, "created": _now()}
            made.append(self._record(rid, table, table.records[rid]["created"]))
        return 200, {"records": made}

    def _update(
        self, base: str, path: list[str], query: list[tuple[str, str]], body: Any
    ) -> Answer:
        table = self._table_of(base, path[2])
        spec = self._keys(
            body, {"records", "typecast", "returnFieldsByFieldId", "performUpsert"}, {"records"}
        )
        records = self._records_of(spec)
        merge: list[str] | None = None
        if "performUpsert" in spec:
            upsert = self._keys(spec["performUpsert"], {"fieldsToMergeOn"}, {"fieldsToMergeOn"})
            merge = upsert["fieldsToMergeOn"]
            if not isinstance(merge, list) or not 1 <= len(merge) <= 3:
                raise Refused(
                    422, "INVALID_MERGE_FIELDS", "fieldsToMergeOn takes 1 to 3 field names"
                )
            for name in merge:
                if name not in table.types():
                    raise Refused(422, "UNKNOWN_FIELD_NAME", f'Unknown field name: "{name}"')
        plan: list[tuple[str | None, dict[str, Any]]] = []
        index: dict[tuple[str, ...], list[str]] = {}
        for i, r in table.records.items() if merge else ():
            index.setdefault(tuple(str(r["fields"].get(m, "")) for m in merge or ()), []).append(i)
        seen: set[tuple[Any, ...]] = set()
        for record in records:
            self._keys(record, {"id", "fields"}, {"fields"})
            fields = record["fields"]
            if "id" in record:
                if record["id"] not in table.records:
                    raise Refused(404, "MODEL_ID_NOT_FOUND", "Record not found", violation=False)
                plan.append((record["id"], fields))
                continue
            if merge is None:
                raise Refused(422, "INVALID_RECORDS", "A record without id needs performUpsert")
            if not isinstance(fields, dict) or any(m not in fields for m in merge):
                raise Refused(422, "INVALID_RECORDS", "Every record must hold the fieldsToMergeOn")
            values = tuple(str(fields[m]) for m in merge)
            if values in seen:
                raise Refused(
                    422, "INVALID_RECORDS", "Two records of the request match the same merge values"
                )
            seen.add(values)
            matches = index.get(values, [])
            if len(matches) > 1:
                raise Refused(
                    422,
                    "INVALID_RECORDS",
                    "More than one record matches the fieldsToMergeOn",
                    violation=False,
                )
            plan.append((matches[0] if matches else None, fields))
        staged = []
        for rid, fields in plan:
            # PATCH changes the fields it names; PUT clears the others (update-multiple-records)
            keep = rid is not None and self._method == "PATCH"
            current = table.records[rid]["fields"] if keep and rid is not None else {}
            staged.append((rid, self._cells(table, fields, replace=current)))
        created, updated, out = [], [], []
        for rid, fields in staged:
            if rid is None:
                rid = new_id("rec")
                table.records[rid] = {"fields": fields, "created": _now()}
                created.append(rid)
            else:
                table.records[rid]["fields"] = fields
                updated.append(rid)
            out.append(self._record(rid, table, table.records[rid]["created"]))
        answer: dict[str, Any] = {"records": out}
        if merge is not None:
            answer |= {"createdRecords": created, "updatedRecords": updated}
        return 200, answer

    def _delete(
        self, base: str, path: list[str], query: list[tuple[str, str]], body: Any
    ) -> Answer:
        table = self._table_of(base, path[2])
        if body is not None or any(k != "records[]" for k, _ in query):
            raise Refused(422, "INVALID_REQUEST_UNKNOWN", "delete takes records[] only")
        ids = [v for _, v in query]
        if not ids or len(ids) > MAX_RECORDS:
            raise Refused(
                422,
                "INVALID_RECORDS",
                f"delete takes 1 to {MAX_RECORDS} record ids, got {len(ids)}",
            )
        missing = [i for i in ids if i not in table.records]
        if missing:
            raise Refused(404, "MODEL_ID_NOT_FOUND", "Record not found", violation=False)
        for i in ids:
            del table.records[i]
        return 200, {"records": [{"id": i, "deleted": True} for i in ids]}


# -- one mock per test session ---------------------------------------------------------------
_SESSION: dict[str, MockAirtable] = {}


def session_mock(config: Any) -> MockAirtable:
    """The session's mock, started on first use and stopped when the session ends."""
    mock = _SESSION.get("mock")
    if mock is None:
        mock = MockAirtable()
        mock.start()
        _SESSION["mock"] = mock
        config.add_cleanup(mock.stop)
        config.add_cleanup(lambda: _SESSION.pop("mock", None))
    return mock
