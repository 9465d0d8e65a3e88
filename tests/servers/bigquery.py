"""A local BigQuery for the connector's tests: every request is checked against Google's
published v2 discovery document, and the connector's statements run on in-memory tables.

::

    request ─▶ token endpoint (/token)        JWT-bearer grant: the assertion's RS256 signature,
                                              issuer, audience and scope checked -> a token
            ─▶ discovery method by HTTP method + rootUrl/servicePath/path template
                 unmatched route, undeclared or ill-typed query parameter, body that breaks
                 schemas[request.$ref]  -> 400 and a line in ``violations``
            ─▶ fault injection (``failing``)  every API request answers that status
            ─▶ bearer token issued here?      else 401
            ─▶ handler                        datasets.get, tables.get/insert/patch/list,
                                              tabledata.list, jobs.query
            ─▶ the answer checked against schemas[response.$ref] (drift -> ``violations``)

jobs.query runs only the statements the connector generates, recognised by their marker comment
(``-- healthie-sync:merge-upsert`` / ``merge-update`` / ``merge-insert`` / ``delete-keys`` /
``prune``) and parsed line by line (anything else is refused with 400 invalidQuery). The typed
ARRAY<STRUCT> parameters are decoded and applied with BigQuery's rules the connector relies on:
a MERGE source may match a target row once, REQUIRED columns refuse NULL, a value must be
assignable to its column's type, ``IS DISTINCT FROM`` conditions skip equal rows and the answer
carries ``numDmlAffectedRows`` and ``dmlStats``. Like BigQuery's, its error messages quote
values, so the connector's tests prove that none of them reaches an engine error.

Every test that uses the fake asserts ``violations == []`` at its end (``take_violations``).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
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

DISCOVERY = SHARED / "openapi" / "google-bigquery-v2.discovery.json"
PROJECT = "healthie-test"
BIGQUERY_SCOPE = "https://www.googleapis.com/auth/bigquery"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
#: tables.get answers the legacy names, whichever a table was created with
LEGACY = {"INT64": "INTEGER", "FLOAT64": "FLOAT", "BOOL": "BOOLEAN", "STRUCT": "RECORD"}
TYPES = {"STRING", "BYTES", "INTEGER", "FLOAT", "NUMERIC", "BIGNUMERIC", "BOOLEAN", "TIMESTAMP"}
TYPES |= {"DATE", "TIME", "DATETIME", "GEOGRAPHY", "RECORD", "JSON", "RANGE"}
STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
}
REASON = {401: "authError", 403: "accessDenied", 429: "rateLimitExceeded", 500: "backendError"}
REASON |= {503: "backendError", 404: "notFound", 409: "duplicate", 412: "conditionNotMet"}
ID_COLUMNS = ("integration_id", "patient_id", "key")

Answer = tuple[int, Any, dict[str, str]]


def error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    """A Google-style error answer."""
    body = {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}],
            "status": STATUS.get(status, "UNKNOWN"),
        }
    }
    return status, body, headers or {}


def _ms() -> str:
    return str(int(time.time() * 1000))


@dataclass
class FakeTable:
    """One table: its schema (legacy type names) and rows (Python values)."""

    project: str
    dataset: str
    table_id: str
    fields: list[dict[str, Any]]
    clustering: list[str] | None = None
    description: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    created: str = field(default_factory=_ms)
    modified: str = field(default_factory=_ms)
    etag: str = field(default_factory=lambda: secrets.token_urlsafe(8))

    def types(self) -> dict[str, str]:
        """Column name -> legacy type name."""
        return {f["name"]: f["type"] for f in self.fields}

    def touch(self) -> None:
        """The table changed: a new etag and modification time (data changes count too)."""
        self.etag, self.modified = secrets.token_urlsafe(8), _ms()

    def resource(self, location: str) -> dict[str, Any]:
        """The Table resource."""
        out: dict[str, Any] = {
            "kind": "bigquery#table",
            "etag": self.etag,
            "id": f"{self.project}:{self.dataset}.{self.table_id}",
            "tableReference": {
                "projectId": self.project,
                "datasetId": self.dataset,
                "tableId": self.table_id,
            },
            "schema": {"fields": [dict(f) for f in self.fields]},
            "numRows": str(len(self.rows)),
            "creationTime": self.created,
            "lastModifiedTime": self.modified,
            "type": "TABLE",
            "location": location,
        }
        if self.clustering:
            out["clustering"] = {"fields": list(self.clustering)}
        if self.description is not None:
            out["description"] = self.description
        return out


@dataclass
class FakeDataset:
    """One dataset and its tables."""

    location: str
    tables: dict[str, FakeTable] = field(default_factory=dict)
    created: str = field(default_factory=_ms)


@dataclass
class _Fault:
    status: int
    times: int | None
    retry_after: str
    reason: str | None


class FakeBigQuery:
    """The fake's state and its ASGI app (serve ``app``; set ``base_url`` to where it runs)."""

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery
        self.lock = threading.RLock()
        self.datasets: dict[tuple[str, str], FakeDataset] = {}
        #: requests that broke the discovery document, and answers that would have
        self.violations: list[str] = []
        #: discovery method id (or "oauth2.token") per request, in order
        self.calls: list[str] = []
        self.tokens: set[str] = set()
        self.base_url = ""
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._fault: _Fault | None = None
        self._token_status: int | None = None
        self._poison = False
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=methods)])

    # -- test controls -------------------------------------------------------------------
    def add_dataset(self, project: str, dataset: str, location: str = "US") -> None:
        """Create an empty dataset."""
        with self.lock:
            self.datasets[(project, dataset)] = FakeDataset(location)

    def drop_dataset(self, project: str, dataset: str) -> None:
        """Delete a dataset and its tables."""
        with self.lock:
            self.datasets.pop((project, dataset), None)

    def table(self, project: str, dataset: str, table: str) -> FakeTable | None:
        """A table, for assertions."""
        with self.lock:
            found = self.datasets.get((project, dataset))
            return None if found is None else found.tables.get(table)

    def count(self, method_id: str) -> int:
        """How many requests of ``method_id`` (e.g. ``bigquery.jobs.query``) arrived."""
        with self.lock:
            return sum(1 for c in self.calls if c == method_id)

    def take_violations(self) -> list[str]:
        """The violations recorded so far (and forget them)."""
        with self.lock:
            out, self.violations = self.violations, []
            return out

    @contextmanager
    def failing(
        self,
        status: int,
        *,
        times: int | None = None,
        retry_after: str = "1",
        reason: str | None = None,
    ) -> Iterator[None]:
        """Answer API requests (``times`` of them, or all) with ``status``, Google-style (the
        usual reason code for it unless ``reason``), and ``Retry-After`` on 429. The token
        endpoint is not affected."""
        with self.lock:
            self._fault = _Fault(status, times, retry_after, reason)
        try:
            yield
        finally:
            with self.lock:
                self._fault = None

    @contextmanager
    def token_refused(self, status: int = 401) -> Iterator[None]:
        """The token endpoint refuses every grant (an OAuth error body)."""
        with self.lock:
            self._token_status = status
        try:
            yield
        finally:
            with self.lock:
                self._token_status = None

    @contextmanager
    def poisoned(self) -> Iterator[None]:
        """A MERGE whose rows include key 'poison' answers 400 invalidQuery."""
        with self.lock:
            self._poison = True
        try:
            yield
        finally:
            with self.lock:
                self._poison = False

    def service_account(self, project: str = PROJECT) -> dict[str, str]:
        """A new service-account key JSON (as a dict) whose token_uri is this fake's."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = f"sync-{uuid.uuid4().hex[:8]}@{project}.iam.gserviceaccount.com"
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
            return error(400, "invalid", "No such method")
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
        if problems:
            self.violations += [f"{method.id}: {p}" for p in problems]
            return error(400, "invalid", "Invalid JSON payload received. " + "; ".join(problems))
        fault = self._fault
        if fault is not None and fault.times != 0:
            if fault.times is not None:
                fault.times -= 1
            extra = {"Retry-After": fault.retry_after} if fault.status == 429 else {}
            reason = fault.reason or REASON.get(fault.status, "invalid")
            return error(fault.status, reason, "Injected", extra)
        bearer = headers.get("authorization", "")
        if not bearer.startswith("Bearer ") or bearer[7:] not in self.tokens:
            return error(401, "authError", "Request had invalid authentication credentials.")
        handler = getattr(self, "_" + method.id.removeprefix("bigquery.").replace(".", "_"), None)
        if handler is None:
            self.violations.append(f"{method.id}: called, but the fake does not implement it")
            return error(501, "notImplemented", f"{method.id} is not implemented by the fake")
        status, answer, extra_headers = handler(params, dict(query), body, headers)
        if 200 <= status < 300 and method.response_ref:
            drift = self.discovery.check_body(method.response_ref, answer)
            self.violations += [f"{method.id} answer: {p}" for p in drift]
        return status, answer, extra_headers

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
                _unb64(signature),
                f"{head}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, KeyError, InvalidSignature):
            return False
        now = time.time()
        return (
            # google-auth signs for Google's token endpoint, wherever token_uri points
            claims.get("aud") in (GOOGLE_TOKEN_AUDIENCE, f"{self.base_url}/token")
            and BIGQUERY_SCOPE in str(claims.get("scope", "")).split()
            and claims.get("iat", now + 999) <= now + 60
            and claims.get("exp", 0) > now
        )

    # -- datasets and tables -------------------------------------------------------------
    def _dataset(self, params: dict[str, str]) -> FakeDataset | None:
        return self.datasets.get((params["projectId"], params["datasetId"]))

    def _datasets_get(self, params: dict[str, str], query: Any, body: Any, headers: Any) -> Answer:
        dataset = self._dataset(params)
        project, name = params["projectId"], params["datasetId"]
        if dataset is None:
            return error(404, "notFound", f"Not found: Dataset {project}:{name}")
        return (
            200,
            {
                "kind": "bigquery#dataset",
                "etag": secrets.token_urlsafe(8),
                "id": f"{project}:{name}",
                "datasetReference": {"projectId": project, "datasetId": name},
                "location": dataset.location,
                "creationTime": dataset.created,
                "lastModifiedTime": dataset.created,
                "type": "DEFAULT",
            },
            {},
        )

    def _missing(self, params: dict[str, str]) -> Answer | None:
        """404 when the dataset or table of ``params`` does not exist."""
        dataset = self._dataset(params)
        where = f"{params['projectId']}:{params['datasetId']}"
        if dataset is None:
            return error(404, "notFound", f"Not found: Dataset {where}")
        if params["tableId"] not in dataset.tables:
            return error(404, "notFound", f"Not found: Table {where}.{params['tableId']}")
        return None

    def _found(self, params: dict[str, str]) -> tuple[FakeDataset, FakeTable]:
        dataset = self.datasets[(params["projectId"], params["datasetId"])]
        return dataset, dataset.tables[params["tableId"]]

    def _tables_get(self, params: dict[str, str], query: Any, body: Any, headers: Any) -> Answer:
        if (missing := self._missing(params)) is not None:
            return missing
        dataset, table = self._found(params)
        return 200, table.resource(dataset.location), {}

    def _tables_list(self, params: dict[str, str], query: Any, body: Any, headers: Any) -> Answer:
        dataset = self._dataset(params)
        if dataset is None:
            return error(404, "notFound", f"Not found: Dataset {params['datasetId']}")
        listed = [
            {
                "kind": "bigquery#table",
                "id": f"{t.project}:{t.dataset}.{t.table_id}",
                "tableReference": t.resource(dataset.location)["tableReference"],
                "type": "TABLE",
            }
            for t in dataset.tables.values()
        ]
        return 200, {"kind": "bigquery#tableList", "tables": listed, "totalItems": len(listed)}, {}

    def _tables_insert(self, params: dict[str, str], query: Any, body: Any, headers: Any) -> Answer:
        dataset = self._dataset(params)
        project, name = params["projectId"], params["datasetId"]
        if dataset is None:
            return error(404, "notFound", f"Not found: Dataset {project}:{name}")
        ref = body.get("tableReference") or {}
        table_id = str(ref.get("tableId", ""))
        if (ref.get("projectId"), ref.get("datasetId")) != (project, name):
            return error(400, "invalid", "tableReference does not name this dataset")
        if re.fullmatch(r"[\w-]{1,1024}", table_id) is None:
            return error(400, "invalid", "Invalid table ID")
        if table_id in dataset.tables:
            return error(409, "duplicate", f"Already Exists: Table {project}:{name}.{table_id}")
        fields, problem = _schema_fields(body)
        clustering = (body.get("clustering") or {}).get("fields")
        if problem is None and clustering:
            names = {f["name"] for f in fields}
            if len(clustering) > 4 or not set(clustering) <= names:
                problem = "Clustering fields must be at most 4 columns of the table"
        if problem is not None:
            return error(400, "invalid", problem)
        table = FakeTable(project, name, table_id, fields, clustering, body.get("description"))
        dataset.tables[table_id] = table
        return 200, table.resource(dataset.location), {}

    def _tables_patch(self, params: dict[str, str], query: Any, body: Any, headers: Any) -> Answer:
        if (missing := self._missing(params)) is not None:
            return missing
        dataset, table = self._found(params)
        if headers.get("if-match") not in (None, table.etag):
            return error(412, "conditionNotMet", "Precondition check failed.")
        if "schema" in body:
            fields, problem = _schema_fields(body)
            old = {f["name"]: f for f in table.fields}
            new = {f["name"]: f for f in fields}
            for name, was in old.items():
                now = new.get(name)
                if now is None or now["type"] != was["type"]:
                    problem = problem or f"Provided Schema does not match Table: field {name}"
            if any(f.get("mode") == "REQUIRED" for n, f in new.items() if n not in old):
                problem = problem or "Cannot add required fields to an existing schema"
            if problem is not None:
                return error(400, "invalid", problem)
            table.fields = fields
        if "description" in body:
            table.description = body["description"]
        table.touch()
        return 200, table.resource(dataset.location), {}

    def _tabledata_list(
        self, params: dict[str, str], query: Any, body: Any, headers: Any
    ) -> Answer:
        if (missing := self._missing(params)) is not None:
            return missing
        _, table = self._found(params)
        start = int(query.get("pageToken") or query.get("startIndex") or 0)
        size = int(query.get("maxResults") or 1000)
        page = table.rows[start : start + size]
        wanted = query.get("selectedFields")
        names = wanted.split(",") if wanted else [f["name"] for f in table.fields]
        types = table.types()
        int64 = str(query.get("formatOptions.useInt64Timestamp", "")).lower() == "true"
        iso = query.get("formatOptions.timestampOutputFormat") == "ISO8601_STRING"
        rows = [
            {"f": [{"v": _cell(types[n], row.get(n), int64, iso)} for n in names]} for row in page
        ]
        out: dict[str, Any] = {
            "kind": "bigquery#tableDataList",
            "etag": table.etag,
            "totalRows": str(len(table.rows)),
            "rows": rows,
        }
        if start + size < len(table.rows):
            out["pageToken"] = str(start + size)
        return 200, out, {}

    # -- jobs.query ----------------------------------------------------------------------
    def _jobs_query(self, params: dict[str, str], query: Any, body: Any, headers: Any) -> Answer:
        project = params["projectId"]
        sql = str(body.get("query", ""))
        if body.get("useLegacySql", True) is not False:
            return error(400, "invalidQuery", "The fake runs standard SQL only")
        declared = body.get("queryParameters") or []
        if declared and body.get("parameterMode") != "NAMED":
            return error(400, "invalid", "Named parameters need parameterMode NAMED")
        try:
            values = {
                p["name"]: _decode(p["parameterType"], p.get("parameterValue")) for p in declared
            }
            kinds = {p["name"]: p["parameterType"] for p in declared}
            run = STATEMENTS.get(sql.split("\n", 1)[0])
            if run is None:
                raise ValueError("Syntax error: the fake runs only the connector's statements")
            lines = sql.split("\n")[1:]
            location = str(body.get("location") or "US")
            kind, inserted, updated, deleted = run(
                _Run(self, project, location, values, kinds), lines
            )
        except LookupError as exc:
            return error(404, "notFound", str(exc.args[0]))
        except (ValueError, TypeError) as exc:
            return error(400, "invalidQuery", str(exc))
        now = _ms()
        job = f"job_{uuid.uuid4().hex}"
        return (
            200,
            {
                "kind": "bigquery#queryResponse",
                "jobReference": {"projectId": project, "jobId": job, "location": location},
                "jobComplete": True,
                "totalRows": "0",
                "numDmlAffectedRows": str(inserted + updated + deleted),
                "dmlStats": {
                    "insertedRowCount": str(inserted),
                    "updatedRowCount": str(updated),
                    "deletedRowCount": str(deleted),
                },
                "statementType": kind,
                "cacheHit": False,
                "totalBytesProcessed": "0",
                "creationTime": now,
                "startTime": now,
                "endTime": now,
                "location": location,
            },
            {},
        )


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _schema_fields(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The schema's fields with legacy type names and explicit modes, or a problem."""
    fields = []
    seen: set[str] = set()
    for f in (body.get("schema") or {}).get("fields") or []:
        name, kind = str(f.get("name", "")), LEGACY.get(str(f.get("type")), str(f.get("type")))
        mode = f.get("mode") or "NULLABLE"
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,299}", name) is None:
            return [], f"Invalid field name: {name}"
        if name.lower() in seen:
            return [], f"Duplicate field name: {name}"
        if kind not in TYPES or mode not in ("NULLABLE", "REQUIRED", "REPEATED"):
            return [], f"Invalid field type or mode: {name}"
        seen.add(name.lower())
        fields.append({"name": name, "type": kind, "mode": mode})
    return fields, None


def _cell(kind: str, value: Any, int64: bool, iso: bool) -> Any:
    """A value as tabledata.list encodes it (text, per its type and the format options)."""
    if value is None:
        return None
    if kind == "BOOLEAN":
        return "true" if value else "false"
    if kind == "TIMESTAMP":
        if iso:
            return value.isoformat().replace("+00:00", "Z")
        micros = int(value.timestamp()) * 1_000_000 + value.microsecond
        return str(micros) if int64 else repr(micros / 1e6)
    if kind == "DATE":
        return value.isoformat()
    return str(value)


def _scalar(kind: str, raw: Any) -> Any:
    """A query parameter's scalar value (the wire text) as Python; ValueError quotes it, as
    BigQuery's messages do."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ValueError(f"Query parameter value must be a string: {raw!r}")
    if kind == "STRING":
        return raw
    if kind == "INT64" and re.fullmatch(r"-?[0-9]{1,19}", raw):
        return int(raw)
    if kind == "BOOL" and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if kind == "DATE" and re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", raw):
        return date.fromisoformat(raw)
    if kind == "TIMESTAMP":
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if kind == "FLOAT64":
        return float(raw)
    raise ValueError(f"Invalid {kind} query parameter value: {raw!r}")


def _decode(ptype: dict[str, Any], pvalue: dict[str, Any] | None) -> Any:
    """A typed query parameter as Python (lists for ARRAY, dicts for STRUCT)."""
    kind = ptype.get("type")
    if pvalue is None:
        return None
    if kind == "ARRAY":
        return [_decode(ptype["arrayType"], v) for v in pvalue.get("arrayValues") or []]
    if kind == "STRUCT":
        given = pvalue.get("structValues") or {}
        return {f["name"]: _decode(f["type"], given.get(f["name"])) for f in ptype["structTypes"]}
    return _scalar(str(kind), pvalue.get("value"))


@dataclass
class _Run:
    """What a statement runs with: the fake, the request's project and location, and the
    decoded parameters with their declared types."""

    fake: FakeBigQuery
    project: str
    location: str
    values: dict[str, Any]
    kinds: dict[str, Any]

    def table(self, fq: str) -> FakeTable:
        """The table a statement names (``project.dataset.table``), or LookupError."""
        project, dataset, table = fq.split(".")
        found = self.fake.datasets.get((project, dataset))
        if found is None or found.location.lower() != self.location.lower():
            raise LookupError(f"Not found: Dataset {project}:{dataset} in {self.location}")
        if table not in found.tables:
            raise LookupError(f"Not found: Table {project}:{dataset}.{table}")
        return found.tables[table]

    def rows_of(self, name: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """An ARRAY<STRUCT> parameter's rows and its field types."""
        kind = self.kinds.get(name)
        if kind is None or kind.get("type") != "ARRAY" or "structTypes" not in kind["arrayType"]:
            raise ValueError(f"Query parameter @{name} must be an ARRAY<STRUCT>")
        types = {f["name"]: f["type"]["type"] for f in kind["arrayType"]["structTypes"]}
        return list(self.values[name] or []), types


def _names(text: str, item: str, sep: str = ", ") -> list[str]:
    """The column names of a list written ``item`` by item (``{c}`` the name), or ValueError."""
    pattern = re.compile(re.escape(item).replace(r"\{c\}", "([a-z][a-z0-9_]*)"))
    names = []
    for part in text.split(sep):
        found = pattern.fullmatch(part)
        if found is None or len(set(found.groups())) != 1:
            raise ValueError(f"Syntax error near: {part}")
        names.append(found.group(1))
    return names


def _assign(column: str, column_type: str, source_type: str, value: Any) -> Any:
    source = LEGACY.get(source_type, source_type)
    if source == column_type:
        return value
    if (source, column_type) == ("INTEGER", "FLOAT"):
        return None if value is None else float(value)
    raise ValueError(
        f"Value of type {source_type} cannot be assigned to {column}, which has type {column_type}"
    )


_ON = "ON " + " AND ".join(f"T.`{c}` = S.`{c}`" for c in ID_COLUMNS)
_MATCHED = re.compile(r"WHEN MATCHED AND \((?P<cond>.*)\) THEN UPDATE SET (?P<sets>.*)")
_NOT_MATCHED = re.compile(r"WHEN NOT MATCHED THEN INSERT \((?P<cols>.*)\) VALUES \((?P<vals>.*)\)")


def _merge(shape: str) -> Callable[[_Run, list[str]], tuple[str, int, int, int]]:
    def run(ctx: _Run, lines: list[str]) -> tuple[str, int, int, int]:
        head = re.fullmatch(r"MERGE `([^`]+)` T", lines[0]) if lines else None
        if head is None or len(lines) < 4 or lines[2] != _ON:
            raise ValueError("Syntax error: not a MERGE the connector writes")
        table = ctx.table(head.group(1))
        casts: list[str] = []
        if lines[1] != "USING (SELECT * FROM UNNEST(@upserts)) S":
            using = re.fullmatch(
                r"USING \(SELECT \* REPLACE \((.*)\) FROM UNNEST\(@upserts\)\) S", lines[1]
            )
            if using is None:
                raise ValueError(f"Syntax error near: {lines[1]}")
            casts = _names(using.group(1), "CAST(`{c}` AS FLOAT64) AS `{c}`")
        matched = next((m for m in map(_MATCHED.fullmatch, lines[3:]) if m), None)
        inserting = next((m for m in map(_NOT_MATCHED.fullmatch, lines[3:]) if m), None)
        clauses = (matched is not None) + (inserting is not None)
        want = {"upsert": (True, True), "update": (True, False), "insert": (False, True)}[shape]
        if (matched is not None, inserting is not None) != want or clauses != len(lines) - 3:
            raise ValueError(f"Syntax error: clauses do not match merge-{shape}")
        rows, types = ctx.rows_of("upserts")
        for c in casts:
            if types.get(c) != "STRING":
                raise ValueError(f"No matching signature for CAST of {c}")
            types[c] = "FLOAT64"
            for r in rows:
                r[c] = None if r[c] is None else float(r[c])
        columns = table.types()
        compare, sets, inserts = [], [], []
        if matched is not None:
            cond = matched.group("cond")
            compare = (
                [] if cond == "FALSE" else _names(cond, "T.`{c}` IS DISTINCT FROM S.`{c}`", " OR ")
            )
            sets = _names(matched.group("sets"), "`{c}` = S.`{c}`")
        if inserting is not None:
            inserts = _names(inserting.group("cols"), "`{c}`")
            if _names(inserting.group("vals"), "S.`{c}`") != inserts:
                raise ValueError("INSERT column and VALUES lists differ")
        for name in {*compare, *sets, *inserts, *ID_COLUMNS}:
            if name not in columns or name not in types:
                raise ValueError(f"Unrecognized name: {name}")
        if ctx.fake._poison and any(r.get("key") == "poison" for r in rows):
            bad = next(r for r in rows if r.get("key") == "poison")
            raise ValueError(f"Invalid value in row {json.dumps(bad, default=str)}")
        index = {tuple(r[c] for c in ID_COLUMNS): r for r in table.rows}
        seen: set[tuple[Any, ...]] = set()
        inserted = updated = 0
        for source in rows:
            ident = tuple(source[c] for c in ID_COLUMNS)
            if ident in seen:
                raise ValueError(
                    "UPDATE/MERGE must match at most one source row for each target row"
                )
            seen.add(ident)
            target = index.get(ident)
            if target is not None and matched is not None:
                if any(target.get(c) != source[c] for c in compare):
                    for c in sets:
                        target[c] = _assign(c, columns[c], types[c], source[c])
                    updated += 1
            elif target is None and inserting is not None:
                row = {c: None for c in columns}
                for c in inserts:
                    row[c] = _assign(c, columns[c], types[c], source[c])
                required = [f["name"] for f in table.fields if f["mode"] == "REQUIRED"]
                if any(row[c] is None for c in required):
                    raise ValueError("Required field cannot be null")
                table.rows.append(row)
                index[ident] = row
                inserted += 1
        if inserted or updated:
            table.touch()
        return "MERGE", inserted, updated, 0

    return run


def _delete_keys(ctx: _Run, lines: list[str]) -> tuple[str, int, int, int]:
    found = re.fullmatch(
        r"DELETE FROM `([^`]+)` WHERE STRUCT\(`integration_id`, `patient_id`, `key`\) "
        r"IN UNNEST\(@keys\)",
        "\n".join(lines),
    )
    if found is None:
        raise ValueError("Syntax error: not a DELETE the connector writes")
    table = ctx.table(found.group(1))
    rows, types = ctx.rows_of("keys")
    if list(types.values()) != ["STRING"] * 3:
        raise ValueError("STRUCT comparison needs STRUCT<STRING, STRING, STRING>")
    keys = {tuple(r.values()) for r in rows}
    return "DELETE", 0, 0, _drop(table, lambda r: tuple(r[c] for c in ID_COLUMNS) in keys)


def _prune(ctx: _Run, lines: list[str]) -> tuple[str, int, int, int]:
    found = re.fullmatch(
        r"DELETE FROM `([^`]+)` WHERE `integration_id` = @integration_id AND "
        r"`patient_id` = @patient_id AND `key` NOT IN UNNEST\(@keep\)",
        "\n".join(lines),
    )
    if found is None:
        raise ValueError("Syntax error: not a prune the connector writes")
    table = ctx.table(found.group(1))
    scope = (ctx.values.get("integration_id"), ctx.values.get("patient_id"))
    keep = set(ctx.values.get("keep") or [])
    if ctx.kinds.get("keep", {}).get("type") != "ARRAY" or None in scope:
        raise ValueError("prune needs @integration_id, @patient_id and ARRAY @keep")
    return (
        "DELETE",
        0,
        0,
        _drop(
            table,
            lambda r: (r["integration_id"], r["patient_id"]) == scope and r["key"] not in keep,
        ),
    )


def _drop(table: FakeTable, doomed: Callable[[dict[str, Any]], bool]) -> int:
    before = len(table.rows)
    table.rows = [r for r in table.rows if not doomed(r)]
    if len(table.rows) != before:
        table.touch()
    return before - len(table.rows)


STATEMENTS: dict[str, Callable[[_Run, list[str]], tuple[str, int, int, int]]] = {
    "-- healthie-sync:merge-upsert": _merge("upsert"),
    "-- healthie-sync:merge-update": _merge("update"),
    "-- healthie-sync:merge-insert": _merge("insert"),
    "-- healthie-sync:delete-keys": _delete_keys,
    "-- healthie-sync:prune": _prune,
}

# -- one fake per test session -------------------------------------------------------------
_SESSION: dict[str, FakeBigQuery] = {}


def session_fake(config: Any) -> FakeBigQuery:
    """The session's fake, started on first use (stopped when the session ends); skips (or
    fails with REQUIRE_SERVICES=1) without the discovery document in ../shared."""
    if not DISCOVERY.is_file():
        require_service(
            "BigQuery discovery document", f"{DISCOVERY} not found (../shared is absent)"
        )
    fake = _SESSION.get("fake")
    if fake is None:
        fake = FakeBigQuery(Discovery.load(DISCOVERY))
        stack = ExitStack()
        fake.base_url = stack.enter_context(serve_in_thread(fake.app))
        _SESSION["fake"] = fake
        config.add_cleanup(stack.close)
        config.add_cleanup(lambda: _SESSION.pop("fake", None))
    return fake


@contextmanager
def fresh_dataset(fake: FakeBigQuery, location: str = "US") -> Iterator[str]:
    """A new empty dataset for one test, dropped afterwards."""
    name = f"sync_{uuid.uuid4().hex[:12]}"
    fake.add_dataset(PROJECT, name, location)
    try:
        yield name
    finally:
        fake.drop_dataset(PROJECT, name)
