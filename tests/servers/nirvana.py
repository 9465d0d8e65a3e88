"""A local Nirvana for the connector's tests, following Nirvana's *documented* request and
answer shapes (Nirvana publishes no machine-readable contract: ``../shared/openapi/
SOURCES.md``). It therefore proves the connector sends what the documentation pages name,
not that Nirvana accepts it.

::

    request ─▶ route: POST /v1/estimate or /v1/discover            else 404 + a violation
            ─▶ ``apikey`` header is the test key                     else 401
            ─▶ body vs DOCUMENTED (a closed JSON Schema of the fields named on
               nirvana-docs.readme.io "Best Practices": payer_id, provider_npi, member_id,
               member_dob, member_first_name, member_last_name, provider_session_cost
               in cents; /discover takes no session cost)             -> violation
            ─▶ the documented rate limit: more than ``per_minute`` checks (default 50) in
               a 60-second window answer 429 for the rest of the window
            ─▶ faults (``fail``); member_id "POISON…" answers 400 (credentialing)
            ─▶ the answer: the documented benefit fields (copayment, coinsurance,
               remaining_deductible, remaining_oop_max, member_obligation) with assumed
               values in cents, and ``coverage_status`` (an unverified name, see
               connectors/nirvana.py); member_id "INACTIVE…": inactive

Which fields are *required* is not documented beyond "member_first_name and member_last_name
are optional": the fake requires payer_id, provider_npi, member_id and member_dob. The date
format (YYYY-MM-DD) is the connector's assumption, checked here as the same assumption.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.service.serving import serve_in_thread

API_KEY = "test-nirvana-key"
PREFIX = "/v1"

_TEXT = {"type": "string", "minLength": 1}
DOCUMENTED: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["payer_id", "provider_npi", "member_id", "member_dob"],
    "properties": {
        "payer_id": _TEXT,
        "provider_npi": {"type": "string", "pattern": r"^\d{10}$"},
        "member_id": _TEXT,
        "member_dob": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "member_first_name": _TEXT,
        "member_last_name": _TEXT,
        "provider_session_cost": {"type": "integer", "minimum": 0},
    },
}
DISCOVER = {
    **DOCUMENTED,
    "properties": {
        k: v for k, v in DOCUMENTED["properties"].items() if k != "provider_session_cost"
    },
}


@dataclass
class FakeNirvana:
    """The fake's state (see the module docstring)."""

    base_url: str = ""
    violations: list[str] = field(default_factory=list)
    #: accepted check bodies with their endpoint, in order
    checks: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    received: list[dict[str, str]] = field(default_factory=list)
    faults: list[list[Any]] = field(default_factory=list)
    per_minute: int = 50
    window: float = 60.0
    _window: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The connector's ``api_url`` for this fake."""
        return self.base_url + PREFIX

    def reset(self) -> None:
        """Forget everything."""
        with self._lock:
            self.violations.clear()
            self.checks.clear()
            self.received.clear()
            self.faults.clear()
            self._window.clear()
            self.per_minute, self.window = 50, 60.0

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

    @property
    def app(self) -> Starlette:
        """The ASGI app."""
        return Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])

    async def _handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self.received.append(headers)
        endpoint = path.removeprefix(PREFIX + "/") if path.startswith(PREFIX + "/") else ""
        if request.method != "POST" or endpoint not in ("estimate", "discover"):
            self._violate(f"route: {request.method} {path}")
            return JSONResponse({"message": "Not Found"}, status_code=404)
        if headers.get("apikey") != API_KEY:
            if "authorization" in headers:
                self._violate("auth: the key was sent as Authorization, not apikey")
            return JSONResponse({"message": "Unauthorized"}, status_code=401)
        try:
            body = json.loads(await request.body())
        except ValueError:
            self._violate(f"/{endpoint}: body is not JSON")
            return JSONResponse({"message": "Invalid JSON"}, status_code=400)
        schema = DOCUMENTED if endpoint == "estimate" else DISCOVER
        for e in Draft202012Validator(schema).iter_errors(body):
            where = "/".join(str(p) for p in e.absolute_path) or "(root)"
            self._violate(f"/{endpoint}: documented shape: {where}: {e.message}")
        fault = self._fault()
        if fault is not None:
            return JSONResponse(
                {"message": "injected fault"}, status_code=fault[0], headers=fault[1]
            )
        if self._over_limit():
            return JSONResponse({"message": "Too Many Requests"}, status_code=429)
        member = str(body.get("member_id", "")).upper()
        if member.startswith("POISON"):
            return JSONResponse({"message": "Provider credentialing error"}, status_code=400)
        with self._lock:
            self.checks.append((endpoint, body))
        return JSONResponse(_answer(endpoint, member.startswith("INACTIVE")))

    def _over_limit(self) -> bool:
        """The documented limit: ``per_minute`` checks, then 429 until the window ends."""
        now = time.monotonic()
        with self._lock:
            self._window[:] = [t for t in self._window if now - t < self.window]
            if len(self._window) >= self.per_minute:
                return True
            self._window.append(now)
            return False

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

    def _violate(self, line: str) -> None:
        with self._lock:
            self.violations.append(line)


def _answer(endpoint: str, inactive: bool) -> dict[str, Any]:
    """The documented benefit fields; values (cents) and ``coverage_status`` assumed."""
    answer: dict[str, Any] = {
        "coverage_status": "inactive" if inactive else "active",
        "copayment": 2500,
        "coinsurance": 20,
        "remaining_deductible": 50000,
        "remaining_oop_max": 150000,
        "benefit_structure": "copay",
    }
    if endpoint == "estimate":
        answer["member_obligation"] = 2500
    return answer


_SESSION: dict[str, FakeNirvana] = {}


def session_fake(config: Any) -> FakeNirvana:
    """The session's fake, started on first use (needs nothing from ../shared)."""
    fake = _SESSION.get("fake")
    if fake is None:
        fake = FakeNirvana()
        stack = ExitStack()
        fake.base_url = stack.enter_context(serve_in_thread(fake.app))
        _SESSION["fake"] = fake
        config.add_cleanup(stack.close)
        config.add_cleanup(lambda: _SESSION.pop("fake", None))
    return fake


@pytest.fixture(name="nirvana")
def nirvana_fixture(request: Any) -> Iterator[FakeNirvana]:
    """The session's fake, reset; at the end no request may have broken the documented
    shapes."""
    fake = session_fake(request.config)
    fake.reset()
    yield fake
    violations = fake.take_violations()
    assert violations == [], "requests that break Nirvana's documented shapes:\n" + "\n".join(
        violations
    )
