"""A local, stateful Candid Health for the connector's tests: a threaded HTTP server holding
pre-encounter patients and coverages and encounters in memory, which checks every request
against Candid's published OpenAPI file (``../shared/openapi/candidhealth-api.yaml``) and records
each violation; every test asserts none.

**Loading the vendor file.** It does not load as published (and not in Prism): its ``$ref``s
name components such as ``type_pre-encounter/patients/v1:Patient`` with an unescaped ``/``, which
a JSON pointer reads as two path steps. :func:`load_contract` repairs this **in memory only**
(the vendor file is never edited): inside every ``#/components/schemas/<name>`` reference, ``~``
and ``/`` in the name are escaped as ``~0`` and ``~1`` (RFC 6901), so the pointers resolve to the
components as named. Request bodies are then validated with ``openapi-schema-validator``'s
``OAS31Validator`` (the file is OpenAPI 3.1) through a ``referencing`` registry, in a strict copy
where an object schema that lists ``properties`` and says nothing of ``additionalProperties``
refuses other names (the published schemas leave them open; a misspelt field name would
otherwise pass and silently be lost). The fake's own answers for patients, coverages and tokens
are validated against the response schemas (not strict), so the fake cannot drift from them.

Paths: the file spells the coverage paths ``/coverages/v1/`` and ``/coverages/v1//{id}/...``
(an artefact of its export; Candid's SDKs send ``coverages/v1`` and ``coverages/v1/{id}/...``):
repeated and trailing slashes are collapsed before matching. The pre-encounter and the API
hosts are served on one port (their paths do not overlap).

Semantics this fake assumes (Candid's documentation, not its contract, says so or nothing does):

* ``POST /patients/v1[/with_mrn]``: 409 VersionConflictError when another patient has the same
  ``external_provenance.external_id`` (the operation's description) or, with_mrn, the same MRN
  (assumed); 400 BadRequestError for an MRN over 20 characters (the description).
* ``PUT .../{id}/{version}``: the version must be the current one + 1, else 409 with
  ``latest_version`` (the description); the body replaces every mutable property.
* ``GET /patients/v1/mrn/{mrn}`` finds deactivated patients too; searches do not (the schema's
  ``deactivated`` description).
* ``POST /api/encounters/v4``: a second encounter with the same ``external_id`` is refused 409
  EncounterExternalIdUniquenessError (the schema defines that error; the operation lists no
  409). ``GET /api/encounters/v4?external_id=`` answers a page whose items are abridged (the
  fake does not build Candid's whole Encounter).
* Tokens: ``POST /api/auth/v2/token`` with the configured pair answers a bearer token valid for
  ``token_lifetime`` seconds (Candid: 5 hours); a wrong pair is 401 (Candid's status for it is
  undocumented); a missing, unknown or expired token is 401 on every other path.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
import yaml
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import SHARED

SPEC = SHARED / "openapi" / "candidhealth-api.yaml"
REF = "#/components/schemas/"
Answer = tuple[int, Any]


def _escape_refs(node: Any) -> Any:
    """Every component reference with its name escaped as a JSON pointer step."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith(REF):
                name = v[len(REF) :]
                v = REF + name.replace("~", "~0").replace("/", "~1")
            out[k] = _escape_refs(v)
        return out
    if isinstance(node, list):
        return [_escape_refs(v) for v in node]
    return node


def _strict(node: Any, in_union: bool = False) -> Any:
    """Object schemas that list properties refuse others (not the branches of a union)."""
    if isinstance(node, dict):
        out = {k: _strict(v, k in ("oneOf", "anyOf", "allOf")) for k, v in node.items()}
        if (
            not in_union
            and isinstance(out.get("properties"), dict)
            and "additionalProperties" not in out
            and not any(k in out for k in ("oneOf", "anyOf", "allOf", "discriminator"))
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v, in_union) for v in node]
    return node


def _anchor(node: Any, base: str) -> Any:
    """``node`` with its document-relative references made absolute (``base#/...``)."""
    if isinstance(node, dict):
        return {
            k: (
                base + v
                if k == "$ref" and isinstance(v, str) and v.startswith("#")
                else _anchor(v, base)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_anchor(v, base) for v in node]
    return node


@dataclass
class Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    spec: dict[str, Any]

    @property
    def params(self) -> int:
        return self.template.count("{")


def _normal(path: str) -> str:
    return re.sub(r"/+", "/", path).rstrip("/") or "/"


class Contract:
    """Candid's OpenAPI file, loadable, as request and response validators."""

    def __init__(self, path: Path = SPEC) -> None:
        with path.open(encoding="utf-8") as f:
            raw = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
        self.doc = _escape_refs(raw)
        strict = _strict(self.doc)
        self.registry: Registry = Registry().with_resources(
            [
                ("urn:candid", Resource.from_contents(self.doc, DRAFT202012)),
                ("urn:candid-strict", Resource.from_contents(strict, DRAFT202012)),
            ]
        )
        self.operations: list[Operation] = []
        for template, item in self.doc["paths"].items():
            clean = _normal(template)
            regex = re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(clean))
            for method, op in item.items():
                if method in ("get", "post", "put", "patch", "delete"):
                    self.operations.append(
                        Operation(method.upper(), clean, re.compile(f"^{regex}$"), op)
                    )
        self.operations.sort(key=lambda o: o.params)

    def find(self, method: str, path: str) -> Operation | None:
        """The operation ``method path`` is, or None."""
        clean = _normal(path)
        for op in self.operations:
            if op.method == method and op.pattern.match(clean):
                return op
        return None

    def errors(self, schema: dict[str, Any], value: Any, *, strict: bool) -> list[str]:
        """Where ``value`` breaks ``schema`` (a schema of the file): JSON paths and reasons."""
        base = "urn:candid-strict" if strict else "urn:candid"
        rooted = _anchor(_strict(schema) if strict else schema, base)
        validator = OAS31Validator(
            rooted, registry=self.registry, format_checker=OAS31Validator.FORMAT_CHECKER
        )
        found = []
        for error in validator.iter_errors(value):
            assert isinstance(error, ValidationError)
            where = "".join(f"[{p!r}]" for p in error.absolute_path) or "(body)"
            found.append(f"{where}: {error.message}"[:300])
        return found

    def check_request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        body: Any,
    ) -> tuple[Operation | None, list[str]]:
        """The operation and every way the request breaks it."""
        op = self.find(method, path)
        if op is None:
            return None, [f"{method} {path}: no such operation in the contract"]
        problems = []
        declared = {p["name"]: p for p in op.spec.get("parameters", [])}
        for name, value in query:
            p = declared.get(name)
            if p is None or p.get("in") != "query":
                problems.append(f"{method} {op.template}: undeclared query parameter {name!r}")
                continue
            kind = p.get("schema", {}).get("type")
            if kind == "integer" and not value.lstrip("-").isdigit():
                problems.append(f"{method} {op.template}: {name} is not an integer")
            if kind == "boolean" and value not in ("true", "false"):
                problems.append(f"{method} {op.template}: {name} is not a boolean")
        names = {n for n, _ in query}
        for name, p in declared.items():
            if p.get("in") == "query" and p.get("required") and name not in names:
                problems.append(f"{method} {op.template}: required query parameter {name!r}")
            if p.get("in") == "header" and p.get("required") and name.lower() not in headers:
                problems.append(f"{method} {op.template}: required header {name!r}")
        content = (op.spec.get("requestBody") or {}).get("content", {})
        schema = content.get("application/json", {}).get("schema")
        if schema is None and body is not None:
            problems.append(f"{method} {op.template}: a body where the contract declares none")
        if schema is not None:
            if body is None:
                problems.append(f"{method} {op.template}: no JSON body")
            else:
                problems += [
                    f"{method} {op.template} body{e}"
                    for e in self.errors(schema, body, strict=True)
                ]
        return op, problems

    def check_response(self, op: Operation, status: int, body: Any) -> list[str]:
        """Where the fake's own answer breaks the declared response (not strict)."""
        declared = op.spec.get("responses", {}).get(str(status))
        if declared is None:
            return [] if status >= 400 else [f"{op.method} {op.template}: undeclared {status}"]
        schema = declared.get("content", {}).get("application/json", {}).get("schema")
        if schema is None:
            return []
        return [
            f"answer of {op.method} {op.template}{e}"
            for e in self.errors(schema, body, strict=False)
        ]


_CONTRACT: Contract | None = None
_CONTRACT_LOCK = threading.Lock()


def load_contract() -> Contract:
    """The contract, loaded once per process; skips when ../shared is absent."""
    global _CONTRACT
    if not SPEC.is_file():
        pytest.skip(f"Candid's OpenAPI file not found at {SPEC}")
    with _CONTRACT_LOCK:
        if _CONTRACT is None:
            _CONTRACT = Contract()
        return _CONTRACT


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _err(status: int, name: str, message: str, **more: Any) -> Answer:
    return status, {"errorName": name, "content": {"message": message, **more}}


# Which answers the fake checks against the response schemas (not abridged encounters).
_CHECKED_ANSWERS = ("/patients/", "/coverages/", "/api/auth/")
ORG = "00000000-0000-4000-8000-00000000c0de"
USER = "00000000-0000-4000-8000-0000000000aa"


@dataclass
class FakeCandid:
    """The fake (see the module docstring). Start it with :meth:`start`."""

    contract: Contract
    client_id: str = "candid-client"
    client_secret: str = field(default_factory=lambda: "secret-" + secrets.token_hex(8))
    token_lifetime: int = 5 * 3600
    patients: dict[str, dict[str, Any]] = field(default_factory=dict)
    coverages: dict[str, dict[str, Any]] = field(default_factory=dict)
    encounters: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    #: (method, path template, status) of every request, in order
    calls: list[tuple[str, str, int]] = field(default_factory=list)
    #: answer every request with this status (None: normal)
    fault: int | None = None
    #: answers 400 BadRequestError for a request it returns True for (method, template, body)
    refuse: Callable[[str, str, Any], bool] | None = None
    #: enforce Candid's published 1,000 requests per 10 s (429 beyond)
    enforce_rate: bool = False
    rate_limited: int = 0
    times: deque[float] = field(default_factory=deque)
    lock: threading.RLock = field(default_factory=threading.RLock)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    # -- control --------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every record, call and violation (tokens stay valid)."""
        with self.lock:
            self.patients.clear()
            self.coverages.clear()
            self.encounters.clear()
            self.violations.clear()
            self.calls.clear()
            self.fault, self.refuse, self.rate_limited = None, None, 0

    def take_violations(self) -> list[str]:
        with self.lock:
            found, self.violations[:] = list(self.violations), []
            return found

    def expire_tokens(self) -> None:
        """Every issued token is now expired (the next request with one is 401)."""
        with self.lock:
            self.tokens.clear()

    @contextmanager
    def failing(self, status: int) -> Iterator[None]:
        with self.lock:
            self.fault = status
        try:
            yield
        finally:
            with self.lock:
                self.fault = None

    @contextmanager
    def refusing(self, refuse: Callable[[str, str, Any], bool]) -> Iterator[None]:
        with self.lock:
            self.refuse = refuse
        try:
            yield
        finally:
            with self.lock:
                self.refuse = None

    def count(self, method: str, template: str) -> int:
        with self.lock:
            return sum(1 for m, t, _ in self.calls if m == method and t == template)

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, body = fake.dispatch(self.command, self.path, headers, raw)
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- dispatch -------------------------------------------------------------------------
    def dispatch(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Answer:
        parts = urlsplit(target)
        path, query = unquote(parts.path), parse_qsl(parts.query, keep_blank_values=True)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self.lock:
            op, problems = self.contract.check_request(method, path, query, headers, body)
            template = op.template if op else path
            status, answer = self._answer(method, path, template, query, headers, body, problems)
            if op is not None and status < 400 and template.startswith(_CHECKED_ANSWERS):
                self.violations += self.contract.check_response(op, status, answer)
            self.calls.append((method, template, status))
            return status, answer

    def _answer(
        self,
        method: str,
        path: str,
        template: str,
        query: list[tuple[str, str]],
        headers: dict[str, str],
        body: Any,
        problems: list[str],
    ) -> Answer:
        if self.enforce_rate and self._over_rate():
            self.rate_limited += 1
            return _err(429, "TooManyRequestsError", "rate limited")
        if self.fault is not None:
            return self.fault, {}
        if problems:
            self.violations += problems
            return _err(400, "BadRequestError", "request does not match the contract")
        if template == "/api/auth/v2/token":
            return self._token(body)
        if not self._authorized(headers.get("authorization", "")):
            return _err(401, "UnauthorizedError", "missing or expired token")
        if self.refuse is not None and self.refuse(method, template, body):
            return _err(400, "BadRequestError", "refused")
        handler = ROUTES.get((method, template))
        if handler is None:
            self.violations.append(f"{method} {template}: in the contract, not in this fake")
            return _err(404, "NotFoundError", "not implemented by the fake")
        segments = path.strip("/").split("/")
        return handler(self, segments, dict(query), body)

    def _over_rate(self) -> bool:
        now = time.monotonic()
        while self.times and now - self.times[0] >= 10.0:
            self.times.popleft()
        if len(self.times) >= 1000:
            return True
        self.times.append(now)
        return False

    def _token(self, body: Any) -> Answer:
        if (body or {}).get("client_id") != self.client_id or (body or {}).get(
            "client_secret"
        ) != self.client_secret:
            return _err(401, "UnauthorizedError", "invalid client credentials")
        token = "tok-" + secrets.token_hex(12)
        self.tokens[token] = time.monotonic() + self.token_lifetime
        return 200, {
            "access_token": token,
            "expires_in": self.token_lifetime,
            "token_type": "Bearer",
        }

    def _authorized(self, header: str) -> bool:
        token = header.removeprefix("Bearer ").strip()
        return self.tokens.get(token, 0.0) > time.monotonic()

    # -- records --------------------------------------------------------------------------
    def _owned(self) -> dict[str, Any]:
        return {
            "organization_id": ORG,
            "deactivated": False,
            "updated_at": _now(),
            "updating_user_id": USER,
        }

    def _external_taken(self, body: dict[str, Any], other_than: str | None = None) -> bool:
        ext = (body.get("external_provenance") or {}).get("external_id")
        return ext is not None and any(
            (p.get("external_provenance") or {}).get("external_id") == ext and pid != other_than
            for pid, p in self.patients.items()
        )

    def create_patient(self, _s: list[str], q: dict[str, str], body: Any) -> Answer:
        body = dict(body)
        mrn = body.pop("mrn", None) or f"{len(self.patients) + 1:08d}"
        if len(mrn) > 20:
            return _err(400, "BadRequestError", "MRN longer than 20 characters")
        if self._external_taken(body) or any(p["mrn"] == mrn for p in self.patients.values()):
            return _err(409, "VersionConflictError", "external id or MRN in use")
        pid = str(uuid.uuid4())
        self.patients[pid] = {**body, **self._owned(), "version": 1, "id": pid, "mrn": mrn}
        return 200, copy.deepcopy(self.patients[pid])

    def get_patient(self, s: list[str], q: dict[str, str], body: Any) -> Answer:
        found = self.patients.get(s[-1])
        return (200, copy.deepcopy(found)) if found else _err(404, "NotFoundError", "no patient")

    def patient_by_mrn(self, s: list[str], q: dict[str, str], body: Any) -> Answer:
        for p in self.patients.values():
            if p["mrn"] == s[-1]:
                return 200, copy.deepcopy(p)
        return _err(404, "NotFoundError", "no patient with this MRN")

    def search_patients(self, s: list[str], q: dict[str, str], body: Any) -> Answer:
        found = [
            copy.deepcopy(p)
            for p in self.patients.values()
            if not p["deactivated"] and ("mrn" not in q or p["mrn"] == q["mrn"])
        ]
        return 200, found

    def _update(self, records: dict[str, dict], s: list[str], body: Any) -> Answer:
        rid, version = s[-2], s[-1]
        current = records.get(rid)
        if current is None:
            return _err(404, "NotFoundError", "not found")
        if version != str(current["version"] + 1):
            return _err(
                409, "VersionConflictError", "stale version", latest_version=current["version"]
            )
        if records is self.patients and self._external_taken(body, other_than=rid):
            return _err(409, "VersionConflictError", "external id in use")
        kept = {
            k: current[k] for k in ("id", "organization_id", "deactivated", "mrn") if k in current
        }
        records[rid] = {
            **body,
            **kept,
            "version": current["version"] + 1,
            "updated_at": _now(),
            "updating_user_id": USER,
        }
        return 200, copy.deepcopy(records[rid])

    def update_patient(self, s: list[str], q: dict[str, str], body: Any) -> Answer:
        return self._update(self.patients, s, body)

    def create_coverage(self, s: list[str], q: dict[str, str], body: Any) -> Answer:
        if body["patient"] not in self.patients:
            return _err(400, "BadRequestError", "no such patient")
        cid = str(uuid.uuid4())
        self.coverages[cid] = {**body, **self._owned(), "version": 1, "id": cid}
        return 200, copy.deepcopy(self.coverages[cid])

    def list_coverages(self, s: list[str], q: dict[str, str], body: Any) -> Answer:
        found = [
            copy.deepcopy(c)
            for c in self.coverages.values()
            if "patient_id" not in q or c["patient"] == q["patient_id"]
        ]
        return 200, found

    def get_coverage(self, s: list[str], q: dict[str, str], body: Any) -> Answer:
        found = self.coverages.get(s[-1])
        return (200, copy.deepcopy(found)) if found else _err(404, "NotFoundError", "no coverage")

    def update_coverage(self, s: list[str], q: dict[str, str], body: Any) -> Answer:
        return self._update(self.coverages, s, body)

    def create_encounter(self, s: list[str], q: dict[str, str], body: Any) -> Answer:
        if body["external_id"] in self.encounters:
            return 409, {
                "errorName": "EncounterExternalIdUniquenessError",
                "content": {"external_id": body["external_id"]},
            }
        eid = str(uuid.uuid4())
        self.encounters[body["external_id"]] = {**body, "encounter_id": eid}
        return 200, {"encounter_id": eid, "external_id": body["external_id"]}

    def list_encounters(self, s: list[str], q: dict[str, str], body: Any) -> Answer:
        items = [
            {"encounter_id": e["encounter_id"], "external_id": e["external_id"]}
            for e in self.encounters.values()
            if "external_id" not in q or e["external_id"] == q["external_id"]
        ]
        return 200, {"items": items[: int(q.get("limit") or 100)]}


Route = Callable[[FakeCandid, list[str], dict[str, str], Any], Answer]
ROUTES: dict[tuple[str, str], Route] = {
    ("POST", "/patients/v1"): FakeCandid.create_patient,
    ("POST", "/patients/v1/with_mrn"): FakeCandid.create_patient,
    ("GET", "/patients/v1"): FakeCandid.search_patients,
    ("GET", "/patients/v1/{id}"): FakeCandid.get_patient,
    ("GET", "/patients/v1/mrn/{mrn}"): FakeCandid.patient_by_mrn,
    ("PUT", "/patients/v1/{id}/{version}"): FakeCandid.update_patient,
    ("POST", "/coverages/v1"): FakeCandid.create_coverage,
    ("GET", "/coverages/v1"): FakeCandid.list_coverages,
    ("GET", "/coverages/v1/{id}"): FakeCandid.get_coverage,
    ("PUT", "/coverages/v1/{id}/{version}"): FakeCandid.update_coverage,
    ("POST", "/api/encounters/v4"): FakeCandid.create_encounter,
    ("GET", "/api/encounters/v4"): FakeCandid.list_encounters,
}

_SHARED: FakeCandid | None = None
_SHARED_LOCK = threading.Lock()


def session_fake() -> FakeCandid:
    """One running fake per process (reset by each user)."""
    global _SHARED
    contract = load_contract()
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = FakeCandid(contract)
            _SHARED.start()
        return _SHARED


@pytest.fixture
def fake_candid() -> Iterator[FakeCandid]:
    """The fake, emptied; the test fails if any request broke the contract."""
    fake = session_fake()
    fake.reset()
    yield fake
    violations = fake.take_violations()
    assert violations == [], "requests that break Candid's contract:\n" + "\n".join(violations)
