"""A local FHIR R4 server for the FHIR connector's tests: a threaded HTTP server that validates
every resource against HL7's official FHIR R4 JSON schema
(``../shared/openapi/fhir-r4.schema.json``, read in place) and implements the FHIR semantics
the connector relies on, the way Medplum does.

::

    POST /oauth2/token          client_credentials, client id and secret by HTTP Basic or form
                                  fields -> {token_type, access_token, expires_in}; else 401
    every /fhir/R4 request      Authorization: Bearer <an issued token | the static token>
                                  else 401 OperationOutcome
    GET  /fhir/R4/metadata      a CapabilityStatement (fhirVersion 4.0.1)
    POST /fhir/R4               Bundle (batch | transaction): processed entry by entry, in
                                  order, NOT atomically (Medplum's documented behaviour), each
                                  entry answered in a batch-response/transaction-response
    PUT  /fhir/R4/T?identifier= conditional update, alone
    GET  /fhir/R4/T?identifier= search -> searchset Bundle

Conditional update (FHIR R4 http.html#cond-update): 0 matches -> create (201), 1 -> update (200),
more -> 412 Precondition Failed. Conditional references (``Patient?identifier=s|v``) in a
resource are resolved when its entry runs: exactly one match is rewritten to ``Patient/<id>``,
none or several answer 400 (Medplum: "This search must resolve to a single resource").

Strict where the connector could go wrong, and every such refusal is also appended to
``violations`` (each test asserts none at its end): a resource the official schema refuses
(validated against ``#/definitions/<resourceType>``; the bundle itself against
``#/definitions/Bundle`` with its resources checked one by one); a request URL's type that is not
the resource's; a PUT whose search is not ``identifier=system|value`` or whose resource does not
carry that identifier (a retry would then create a duplicate); a ``urn:uuid`` reference (the
connector promises none); another method than PUT in a bundle; a body that is not
``application/fhir+json``. Error answers carry OperationOutcomes whose ``diagnostics`` quote
the offending values, as real servers' do, so the tests prove no value reaches an engine error.

``poisoned(predicate)``: resources the predicate selects are refused with 422 (a value the
server will not take), not a violation. ``failing(status)``: every request answered with it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

import jsonschema

from tests.conftest import SHARED

SCHEMA = SHARED / "openapi" / "fhir-r4.schema.json"
BASE = "/fhir/R4"
Answer = tuple[int, dict[str, str], Any]


@lru_cache(maxsize=1)
def _definitions(path: Path = SCHEMA) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))["definitions"]


@lru_cache(maxsize=64)
def validator(resource_type: str) -> jsonschema.Draft6Validator:
    """The official schema's validator for one definition (the schema is draft-06; validating
    against ``#/definitions/<type>`` skips the 146-way ``oneOf`` of the root)."""
    return jsonschema.Draft6Validator(
        {"$ref": f"#/definitions/{resource_type}", "definitions": _definitions()}
    )


def schema_errors(resource: Any, resource_type: str | None = None) -> list[str]:
    """What the official schema says is wrong with ``resource`` (paths and messages)."""
    kind = resource_type or (resource.get("resourceType") if isinstance(resource, dict) else None)
    if not isinstance(kind, str) or kind not in _definitions():
        return [f"unknown resourceType {kind!r}"]
    return [
        f"{kind}.{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator(kind).iter_errors(resource)
    ]


def outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class EntryRefused(Exception):
    """One entry's error answer (internal to the server)."""

    def __init__(self, status: int, code: str, diagnostics: str, *, violation: bool) -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics, self.violation = (
            status,
            code,
            diagnostics,
            violation,
        )


class FhirServer:
    """The server's state and its HTTP server (``start()``, then ``base_url``)."""

    def __init__(self, client_id: str = "client-1", client_secret: str = "secret-1") -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.static_token = "static-token"
        self.lock = threading.RLock()
        self.store: dict[str, dict[str, dict[str, Any]]] = {}
        self.violations: list[str] = []
        #: (method, path) per HTTP request
        self.calls: list[tuple[str, str]] = []
        #: resources the server was sent, as sent (every one schema-validated)
        self.received: list[dict[str, Any]] = []
        self.tokens: set[str] = set()
        self._fault: int | None = None
        self._poison: Callable[[dict[str, Any]], bool] | None = None
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # -- test controls -------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self.url + BASE

    def resources(self, resource_type: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(r) for r in self.store.get(resource_type, {}).values()]

    def seed(self, resource: dict[str, Any]) -> str:
        """Store ``resource`` as is (e.g. a duplicate the server already holds)."""
        with self.lock:
            rid = str(uuid.uuid4())
            stored = {**resource, "id": rid, "meta": {"versionId": "1", "lastUpdated": _now()}}
            self.store.setdefault(resource["resourceType"], {})[rid] = stored
            return rid

    def take_violations(self) -> list[str]:
        with self.lock:
            out, self.violations = self.violations, []
            return out

    def count(self, method: str, path: str) -> int:
        with self.lock:
            return sum(1 for c in self.calls if c == (method, path))

    @contextlib.contextmanager
    def failing(self, status: int) -> Iterator[None]:
        """Every request answered with ``status`` while the block runs."""
        self._fault = status
        try:
            yield
        finally:
            self._fault = None

    @contextlib.contextmanager
    def poisoned(self, predicate: Callable[[dict[str, Any]], bool]) -> Iterator[None]:
        """Resources ``predicate`` selects answered 422 while the block runs."""
        self._poison = predicate
        try:
            yield
        finally:
            self._poison = None

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, headers, body = server.dispatch(self.command, self.path, self.headers, raw)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json; charset=utf-8")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- dispatch ------------------------------------------------------------------------
    def dispatch(self, method: str, target: str, headers: Any, raw: bytes) -> Answer:
        parts = urlsplit(target)
        with self.lock:
            self.calls.append((method, parts.path))
            if self._fault is not None:
                extra = {}
                if self._fault == 429:
                    extra = {"Retry-After": "0", "RateLimit": '"requests";r=0;t=0'}
                return self._fault, extra, outcome("throttled", "fault injected")
            if parts.path == "/oauth2/token" and method == "POST":
                return self._token(headers, raw)
            if not parts.path.startswith(BASE):
                return self._violation(404, f"{method} {parts.path}: not a FHIR path")
            auth = headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
            if token is None or (token not in self.tokens and token != self.static_token):
                return 401, {}, outcome("login", "Unauthorized")
            rest = parts.path[len(BASE) :].strip("/")
            if method == "GET" and rest == "metadata":
                return (
                    200,
                    {},
                    {
                        "resourceType": "CapabilityStatement",
                        "status": "active",
                        "kind": "instance",
                        "fhirVersion": "4.0.1",
                        "format": ["json"],
                    },
                )
            body: Any = None
            if raw:
                if not headers.get("Content-Type", "").startswith("application/fhir+json"):
                    self.violations.append(f"{method} {parts.path}: not application/fhir+json")
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._violation(400, f"{method} {parts.path}: not JSON")
            if method == "POST" and rest == "":
                return self._bundle(body)
            if method == "PUT" and "/" not in rest and rest:
                return self._single(rest, parts.query, body)
            if method == "GET" and "/" not in rest and rest:
                return 200, {}, self._searchset(rest, parts.query)
            return self._violation(404, f"{method} {parts.path}: not served")

    def _violation(self, status: int, message: str) -> Answer:
        self.violations.append(message)
        return status, {}, outcome("invalid", message)

    def _token(self, headers: Any, raw: bytes) -> Answer:
        if not headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            self.violations.append("token request not form-encoded")
        form = dict(parse_qsl(raw.decode()))
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = headers.get("Authorization", "")
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials":
            return 400, {}, {"error": "unsupported_grant_type"}
        if (client_id, secret) != (self.client_id, self.client_secret):
            return 401, {}, {"error": "invalid_client", "error_description": f"{client_id}"}
        token = uuid.uuid4().hex
        self.tokens.add(token)
        return 200, {}, {"token_type": "Bearer", "access_token": token, "expires_in": 3600}

    def _bundle(self, bundle: Any) -> Answer:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            return self._violation(400, "POST [base]: not a Bundle")
        shell = {
            **bundle,
            "entry": [
                {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
                for e in bundle.get("entry") or []
            ],
        }
        problems = schema_errors(shell, "Bundle")
        kind = bundle.get("type")
        if kind not in ("batch", "transaction"):
            problems.append(f"Bundle.type {kind!r} is not batch or transaction")
        if problems:
            self.violations.extend(problems)
            return 400, {}, outcome("invalid", "; ".join(problems))
        answered = [self._entry(e) for e in bundle.get("entry") or []]
        reply = {"resourceType": "Bundle", "type": f"{kind}-response", "entry": answered}
        return 200, {}, reply

    def _entry(self, entry: dict[str, Any]) -> dict[str, Any]:
        request = entry.get("request") or {}
        try:
            if request.get("method") != "PUT":
                raise EntryRefused(400, "not-supported", "only PUT is expected", violation=True)
            url = urlsplit(request.get("url", ""))
            status, stored = self._put(url.path.strip("/"), url.query, entry.get("resource"))
        except EntryRefused as refused:
            if refused.violation:
                self.violations.append(f"entry {request.get('url')}: {refused.diagnostics}")
            return {
                "response": {
                    "status": str(refused.status),
                    "outcome": outcome(refused.code, refused.diagnostics),
                }
            }
        text = "201 Created" if status == 201 else "200 OK"
        location = f"{stored['resourceType']}/{stored['id']}/_history/{stored['meta']['versionId']}"
        return {
            "response": {
                "status": text,
                "location": location,
                "etag": f'W/"{stored["meta"]["versionId"]}"',
            }
        }

    def _single(self, resource_type: str, query: str, body: Any) -> Answer:
        try:
            status, stored = self._put(resource_type, query, body)
        except EntryRefused as refused:
            if refused.violation:
                self.violations.append(f"PUT {resource_type}: {refused.diagnostics}")
            return refused.status, {}, outcome(refused.code, refused.diagnostics)
        return status, {}, stored

    # -- FHIR semantics ------------------------------------------------------------------
    def _put(self, resource_type: str, query: str, resource: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            raise EntryRefused(
                400, "invalid", "the URL's type is not the resource's", violation=True
            )
        self.received.append(json.loads(json.dumps(resource)))
        problems = schema_errors(resource)
        if problems:
            # a real server quotes the input back: the connector must never pass it on
            raise EntryRefused(
                400, "invalid", f"{'; '.join(problems)} in {json.dumps(resource)}", violation=True
            )
        params = parse_qs(query, keep_blank_values=True)
        if list(params) != ["identifier"] or len(params["identifier"]) != 1:
            raise EntryRefused(400, "invalid", "expected identifier=system|value", violation=True)
        id_system, bar, value = params["identifier"][0].partition("|")
        if not bar or not id_system or not value:
            raise EntryRefused(400, "invalid", "expected identifier=system|value", violation=True)
        if {"system": id_system, "value": value} not in [
            {"system": i.get("system"), "value": i.get("value")}
            for i in resource.get("identifier") or []
        ]:
            raise EntryRefused(
                400,
                "invalid",
                "the resource lacks the identifier it is upserted by",
                violation=True,
            )
        if self._poison is not None and self._poison(resource):
            raise EntryRefused(
                422, "processing", f"cannot accept {json.dumps(resource)}", violation=False
            )
        body = self._resolve(json.loads(json.dumps(resource)))
        matches = self._search(resource_type, id_system, value)
        if len(matches) > 1:
            raise EntryRefused(
                412,
                "multiple-matches",
                f"{len(matches)} {resource_type} hold {value}",
                violation=False,
            )
        table = self.store.setdefault(resource_type, {})
        if matches:
            old = matches[0]
            version = str(int(old["meta"]["versionId"]) + 1)
            body |= {"id": old["id"], "meta": {"versionId": version, "lastUpdated": _now()}}
            table[old["id"]] = body
            return 200, body
        rid = str(uuid.uuid4())
        body |= {"id": rid, "meta": {"versionId": "1", "lastUpdated": _now()}}
        table[rid] = body
        return 201, body

    def _resolve(self, node: Any) -> Any:
        """Conditional references rewritten to ``Type/id`` (exactly one match) or refused."""
        if isinstance(node, list):
            return [self._resolve(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {k: self._resolve(v) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str):
            if ref.startswith("urn:uuid:"):
                raise EntryRefused(400, "invalid", "urn:uuid reference", violation=True)
            if "?" in ref:
                kind, _, query = ref.partition("?")
                params = parse_qs(query)
                id_system, _, value = (params.get("identifier") or [""])[0].partition("|")
                found = self._search(kind, id_system, value)
                if len(found) != 1:
                    raise EntryRefused(
                        400,
                        "not-found" if not found else "multiple-matches",
                        f"reference {ref} matched {len(found)}",
                        violation=False,
                    )
                out["reference"] = f"{kind}/{found[0]['id']}"
        return out

    def _search(self, resource_type: str, id_system: str, value: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.store.get(resource_type, {}).values()
            if any(
                i.get("system") == id_system and i.get("value") == value
                for i in r.get("identifier") or []
            )
        ]

    def _searchset(self, resource_type: str, query: str) -> dict[str, Any]:
        raw = dict(parse_qsl(query)).get("identifier", "")
        id_system, _, value = unquote(raw).partition("|")
        found = self._search(resource_type, id_system, value)
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [{"resource": r} for r in found],
        }


@contextlib.contextmanager
def running() -> Iterator[FhirServer]:
    """A started server, stopped when the block ends."""
    server = FhirServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
