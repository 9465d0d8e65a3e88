"""A local Stedi for the connector's tests: every request is validated against Stedi's own
published OpenAPI 3.1 file (``../shared/openapi/stedi-healthcare.json``), and answers are the
file's examples (themselves validated against the response schemas).

::

    request ─▶ route (POST eligibility/v3, POST professionalclaims/v3/submission under
               /2024-04-01; anything else 404 + a violation)
            ─▶ Authorization present (the key, no "Key " prefix required)    else 403
            ─▶ body vs the operation's request schema (OAS31Validator,
               openapi-schema-validator 0.9 + referencing)                   -> violation
            ─▶ body vs the same schemas *closed* (additionalProperties false
               wherever the file declares properties)                        -> violation
            ─▶ Idempotency-Key vs its header schema (claims)                 -> violation
            ─▶ faults (``fail``), concurrency limit (``concurrency``), latency
            ─▶ the answer: EligibilityCheck_example1 (memberId "INACTIVE…": an inactive
               271; "POISON…": EligibilityCheck_example2, the payer's 400), claims example1;
               a reused Idempotency-Key with the same body answers the first answer, with
               another body 422 (RequestChangedException, as Stedi documents)

Why direct schema validation and not Prism: Prism also loads this file (SOURCES.md), but it
answers from examples without state, cannot play idempotency or the payer's refusals, and
validating in-process is faster (no Node start, one validator per operation built once). The
closed check is stricter than the contract on purpose: Stedi's request objects are open (no
``additionalProperties``), so a misspelt optional field (``memberID``) passes the contract and
is silently ignored by Stedi; the closed check catches it. Both kinds are reported separately.

Every test using the fake asserts ``take_violations() == []`` at its end (the ``stedi``
fixture does).
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.service.serving import serve_in_thread
from tests.conftest import SHARED, require_service

SPEC = SHARED / "openapi" / "stedi-healthcare.json"
VERSION = "/2024-04-01"
ELIGIBILITY = "/change/medicalnetwork/eligibility/v3"
CLAIMS = "/change/medicalnetwork/professionalclaims/v3/submission"
API_KEY = "test-stedi-key"


def _close(schemas: dict[str, Any]) -> None:
    """additionalProperties false on every object schema that declares properties."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schemas)


class Contract:
    """Validators for the operations the connector uses, built once from the file."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from openapi_schema_validator import OAS31Validator
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self.spec = spec
        closed = copy.deepcopy(spec)
        _close(closed["components"]["schemas"])
        registry: Registry[Any] = (
            Registry()
            .with_resource("urn:open", Resource.from_contents(spec, DRAFT202012))
            .with_resource("urn:closed", Resource.from_contents(closed, DRAFT202012))
        )

        def validator(base: str, ref: str) -> Any:
            return OAS31Validator({"$ref": f"{base}{ref}"}, registry=registry)

        self._validator = validator
        self.ops = {path: spec["paths"][path]["post"] for path in (ELIGIBILITY, CLAIMS)}
        self.requests = {
            path: (validator("urn:open", _body_ref(op)), validator("urn:closed", _body_ref(op)))
            for path, op in self.ops.items()
        }
        self.answers: dict[tuple[str, int], Any] = {}
        for path, op in self.ops.items():
            for status, response in op["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema:
                    self.answers[(path, int(status))] = validator("urn:open", schema["$ref"])
        header = next(p for p in self.ops[CLAIMS]["parameters"] if p["name"] == "Idempotency-Key")
        self.idempotency = OAS31Validator(header["schema"])

    def example(self, path: str, status: int, name: str) -> dict[str, Any]:
        """A deep copy of one of the file's examples."""
        content = self.ops[path]
        if status == 200:
            found = content["responses"]["200"]["content"]["application/json"]["examples"]
        else:
            found = content["responses"][str(status)]["content"]["application/json"]["examples"]
        return copy.deepcopy(found[name]["value"])

    def request_problems(self, path: str, body: Any) -> list[str]:
        """Contract violations of ``body``, then closed-schema ones (properties only)."""
        open_, closed = self.requests[path]
        problems = [f"contract: {_where(e)}: {e.message}" for e in open_.iter_errors(body)]
        if not problems:
            problems = [
                f"undeclared: {_where(e)}: {e.message}"
                for e in closed.iter_errors(body)
                if e.validator == "additionalProperties"
            ]
        return problems

    def answer_problems(self, path: str, status: int, body: Any) -> list[str]:
        """Drift of the fake's own answer from the response schema."""
        validator = self.answers.get((path, status))
        if validator is None:
            return [f"answer: no schema for {status} on {path}"]
        return [f"answer {status}: {_where(e)}: {e.message}" for e in validator.iter_errors(body)]


def _body_ref(op: dict[str, Any]) -> str:
    ref: str = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return ref


def _where(error: Any) -> str:
    return "/".join(str(p) for p in error.absolute_path) or "(root)"


@dataclass
class FakeStedi:
    """The fake's state: what it accepted, what broke the contract, the faults it plays."""

    contract: Contract
    base_url: str = ""
    violations: list[str] = field(default_factory=list)
    #: accepted eligibility request bodies, in order
    checks: list[dict[str, Any]] = field(default_factory=list)
    #: accepted claims by idempotency key: (body, answer)
    claims: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)
    #: every request received (method path, headers) in order
    received: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: (status, headers, remaining count or None for every request) of the faults to play
    faults: list[list[Any]] = field(default_factory=list)
    #: more requests than this in flight answer 429 (None: no limit)
    concurrency: int | None = None
    latency: float = 0.0
    in_flight: int = 0
    peak: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The connector's ``api_url`` for this fake."""
        return self.base_url + VERSION

    def reset(self) -> None:
        """Forget everything (each test starts clean)."""
        with self._lock:
            self.violations.clear()
            self.checks.clear()
            self.claims.clear()
            self.received.clear()
            self.faults.clear()
            self.concurrency, self.latency, self.in_flight, self.peak = None, 0.0, 0, 0

    def fail(
        self, status: int, times: int | None = 1, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next ``times`` requests (None: all) with ``status``."""
        with self._lock:
            self.faults.append([status, dict(headers or {}), times])

    def take_violations(self) -> list[str]:
        """The violations so far, cleared."""
        with self._lock:
            found, self.violations[:] = list(self.violations), []
            return found

    # -- the app ----------------------------------------------------------------------
    @property
    def app(self) -> Starlette:
        """The ASGI app."""
        return Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT"])]
        )

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self.received.append((f"{request.method} {path}", headers))
        route = path.removeprefix(VERSION) if path.startswith(VERSION + "/") else None
        if request.method != "POST" or route not in (ELIGIBILITY, CLAIMS):
            self._violate(f"route: {request.method} {path} is not an operation the fake serves")
            return JSONResponse({"message": "Not Found"}, status_code=404)
        assert route is not None
        if not headers.get("authorization", "").removeprefix("Key ").strip():
            return self._answer(route, 403, {"message": "Missing Authentication Token"})
        if headers.get("authorization") not in (API_KEY, f"Key {API_KEY}"):
            return self._answer(route, 403, {"message": "Forbidden"})
        if not headers.get("content-type", "").startswith("application/json"):
            self._violate(f"{route}: content-type {headers.get('content-type')!r}")
        try:
            body = json.loads(await request.body())
        except ValueError:
            self._violate(f"{route}: body is not JSON")
            return self._answer(route, 400, {"message": "Invalid JSON"})
        for problem in self.contract.request_problems(route, body):
            self._violate(f"{route}: {problem}")
        fault = self._fault()
        if fault is not None:
            status, extra = fault
            # a status the file does not declare for the operation (401) is the test's choice
            declared = (route, status) in self.contract.answers
            body = {"message": "injected fault"}
            if not declared:
                return JSONResponse(body, status_code=status, headers=extra)
            return self._answer(route, status, body, extra)
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            over = self.concurrency is not None and self.in_flight > self.concurrency
        try:
            if over:
                return self._answer(route, 429, {"message": "Too many concurrent requests"})
            if self.latency:
                await asyncio.sleep(self.latency)
            if route == ELIGIBILITY:
                return self._eligibility(body)
            return self._claim(body, headers.get("idempotency-key"))
        finally:
            with self._lock:
                self.in_flight -= 1

    def _fault(self) -> tuple[int, dict[str, str]] | None:
        with self._lock:
            if not self.faults:
                return None
            status, extra, times = self.faults[0]
            if times is not None:
                self.faults[0][2] = times - 1
                if times - 1 <= 0:
                    self.faults.pop(0)
            return status, extra

    def _eligibility(self, body: dict[str, Any]) -> Response:
        member = str((body.get("subscriber") or {}).get("memberId", ""))
        if member.upper().startswith("POISON"):
            return self._answer(
                ELIGIBILITY,
                400,
                self.contract.example(ELIGIBILITY, 400, "EligibilityCheck_example2"),
            )
        answer = self.contract.example(ELIGIBILITY, 200, "EligibilityCheck_example1")
        answer["tradingPartnerServiceId"] = body.get("tradingPartnerServiceId")
        if member.upper().startswith("INACTIVE"):
            answer["benefitsInformation"] = [
                {"code": "6", "name": "Inactive", "serviceTypeCodes": ["30"]}
            ]
            answer["planDateInformation"] = {"planBegin": "20230101", "planEnd": "20231231"}
        with self._lock:
            self.checks.append(body)
        return self._answer(ELIGIBILITY, 200, answer)

    def _claim(self, body: Any, key: str | None) -> Response:
        if key is None:
            self._violate(f"{CLAIMS}: no Idempotency-Key (Stedi recommends one on every claim)")
        else:
            for e in self.contract.idempotency.iter_errors(key):
                self._violate(f"{CLAIMS}: Idempotency-Key: {e.validator}")
        with self._lock:
            seen = self.claims.get(key) if key is not None else None
        if seen is not None:
            if seen[0] != body:
                return self._answer(CLAIMS, 422, {"message": "Request changed"})
            return self._answer(CLAIMS, 200, seen[1])
        answer = self.contract.example(CLAIMS, 200, "ClaimsSubmission_example1")
        with self._lock:
            self.claims[key or f"anonymous-{len(self.claims)}"] = (body, answer)
        return self._answer(CLAIMS, 200, answer)

    def _answer(
        self, path: str, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> Response:
        for problem in self.contract.answer_problems(path, status, body):
            self._violate(problem)
        return JSONResponse(body, status_code=status, headers=headers)

    def _violate(self, line: str) -> None:
        with self._lock:
            self.violations.append(line)


_SESSION: dict[str, FakeStedi] = {}


def session_fake(config: Any) -> FakeStedi:
    """The session's fake (started on first use); skips, or fails with REQUIRE_SERVICES=1,
    without Stedi's OpenAPI file in ../shared."""
    if not SPEC.is_file():
        require_service("Stedi OpenAPI file", f"{SPEC} not found (../shared is absent)")
    fake = _SESSION.get("fake")
    if fake is None:
        fake = FakeStedi(Contract(json.loads(SPEC.read_text(encoding="utf-8"))))
        stack = ExitStack()
        fake.base_url = stack.enter_context(serve_in_thread(fake.app))
        _SESSION["fake"] = fake
        config.add_cleanup(stack.close)
        config.add_cleanup(lambda: _SESSION.pop("fake", None))
    return fake


@pytest.fixture(name="stedi")
def stedi_fixture(request: Any) -> Iterator[FakeStedi]:
    """The session's fake, reset; at the end no request may have broken the contract."""
    fake = session_fake(request.config)
    fake.reset()
    yield fake
    violations = fake.take_violations()
    assert violations == [], "requests that break stedi-healthcare.json:\n" + "\n".join(violations)
