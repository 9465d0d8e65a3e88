"""A local HubSpot for the connector's tests: an HTTP router in front of the two Prisms, with
the state and the faults Prism cannot give.

::

    request ─▶ record it (``sent``)
            ─▶ fault injection (``fail_next``, ``failing``)    429 with policyName and
                                                                Retry-After, 5xx, 401
            ─▶ Prism: /crm/v3/properties/... -> the properties   validates the request
               Prism, everything else -> the contacts Prism      (path, body, Bearer auth)
               (``Prefer: dynamic=true``: the specs' examples    against HubSpot's OpenAPI
               are null, so Prism generates its answer)          file; refused -> Prism's
                                                                 status is returned as is
            ─▶ the router's own answer, from its state          properties and contacts
                                                                 with HubSpot's semantics

What comes from where, honestly: **Prism** decides whether a request is valid (and logs every
violation; the fixture asserts none at the end of each test); it keeps nothing. **The router**
answers every accepted request from its tables, with this module's reading of HubSpot's
documented behaviour: properties exist once created (``batch/read`` returns the existing ones,
``batch/create`` adds, an existing name is a 207 OBJECT_ALREADY_EXISTS); an upsert finds a
contact by the unique ``idProperty`` or creates one, refuses a property that does not exist or
an ``idProperty`` that is not unique (400 VALIDATION_ERROR) and a new contact whose email another
contact has (409 CONFLICT, whole request); ``batch/update`` takes HubSpot ids (an unknown id is
a 207 OBJECT_NOT_FOUND naming it in ``context.ids``); search evaluates ``filterGroups`` (ORed
groups of ANDed EQ/IN filters, emails compared case-insensitively) and pages by ``after``.
``poisoned`` makes HubSpot refuse chosen inputs: a 207 naming them (or, ``whole=True``, a 400 for
the request) whose messages quote the value, as HubSpot's do, so the tests prove none reaches an
engine error. Without Prism URLs (the bench) requests are answered from the state unvalidated.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.service.serving import serve_in_thread
from tests.servers.prism import (  # noqa: F401 - the fixtures the router's fixture needs
    Prism,
    prism_hubspot_contacts,
    prism_hubspot_properties,
)

NOW = "2026-12-01T09:30:00.000Z"
Answer = tuple[int, dict[str, Any], dict[str, str]]
Poison = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class Sent:
    """One request the router received, and the status it answered."""

    method: str
    path: str
    body: Any
    status: int


@dataclass
class Fault:
    """The next ``times`` requests (on ``path`` when set) answer ``status``."""

    status: int
    times: int | None = 1
    policy: str | None = None
    retry_after: str | None = None
    path: str | None = None


@dataclass
class HubSpotRouter:
    """See the module docstring. ``contacts``/``properties``: the Prisms (None: unvalidated)."""

    contacts: Prism | None = None
    properties: Prism | None = None
    sent: list[Sent] = field(default_factory=list)
    props: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, dict[str, str]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    poison: Poison | None = None
    poison_whole: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)
    url: str = ""
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(50_001))
    _client: httpx2.Client = field(default_factory=lambda: httpx2.Client(timeout=60.0))

    # -- state ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty tables, no faults, nothing recorded (between tests)."""
        with self.lock:
            self.sent.clear()
            self.props.clear()
            self.records.clear()
            self.faults.clear()
            self.poison, self.poison_whole = None, False

    def add_contact(self, **properties: str) -> str:
        """An existing contact (made before the engine); its HubSpot id."""
        with self.lock:
            cid = str(next(self._ids))
            self.records[cid] = _stored(properties)
            return cid

    def count(self, path_end: str) -> int:
        """Requests received whose path ends with ``path_end``."""
        return sum(s.path.endswith(path_end) for s in self.sent)

    # -- faults --------------------------------------------------------------------------
    def fail_next(self, status: int, times: int | None = 1, **kw: Any) -> None:
        """The next ``times`` requests answer ``status`` (``policy``, ``retry_after``,
        ``path``); ``times`` None: every request until cleared."""
        with self.lock:
            self.faults.append(Fault(status, times, **kw))

    @contextlib.contextmanager
    def failing(self, status: int) -> Iterator[None]:
        """Every request answered with ``status`` while the block runs."""
        self.fail_next(status, None, policy="TEN_SECONDLY_ROLLING", retry_after="0")
        try:
            yield
        finally:
            with self.lock:
                self.faults.clear()

    @contextlib.contextmanager
    def poisoned(self, poison: Poison, *, whole: bool = False) -> Iterator[None]:
        """Inputs ``poison`` picks are refused while the block runs (see the docstring)."""
        self.poison, self.poison_whole = poison, whole
        try:
            yield
        finally:
            self.poison, self.poison_whole = None, False

    # -- HTTP ----------------------------------------------------------------------------
    def app(self) -> Starlette:
        """The ASGI app (served by :func:`serving`)."""
        return Starlette(routes=[Route("/{path:path}", self._endpoint, methods=["GET", "POST"])])

    async def _endpoint(self, request: Request) -> Response:
        body = await request.body()
        # dispatch forwards to Prism with a blocking client: off the event loop
        status, payload, headers = await anyio.to_thread.run_sync(
            self.dispatch, request.method, request.url.path, dict(request.headers), body
        )
        return JSONResponse(payload, status_code=status, headers=headers)

    def transport(self) -> httpx2.MockTransport:
        """The router as an httpx transport (no server; for the bench)."""

        def handle(request: httpx2.Request) -> httpx2.Response:
            status, payload, headers = self.dispatch(
                request.method, request.url.path, dict(request.headers), request.content
            )
            return httpx2.Response(status, json=payload, headers=headers)

        return httpx2.MockTransport(handle)

    def dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Answer:
        """One request: recorded, faulted, validated by Prism, answered from the state."""
        body = json.loads(raw) if raw else None
        with self.lock:
            status, payload, out = self._answer(method, path, headers, raw, body)
            self.sent.append(Sent(method, path, body, status))
        return status, payload, out

    def _answer(
        self, method: str, path: str, headers: dict[str, str], raw: bytes, body: Any
    ) -> Answer:
        fault = next((f for f in self.faults if f.path in (None, path)), None)
        if fault is not None:
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
            return _fault(fault)
        if not headers.get("authorization", "").startswith("Bearer "):
            return _error(401, "INVALID_AUTHENTICATION", "Authentication credentials not found")
        prism = self.properties if path.startswith("/crm/v3/properties") else self.contacts
        if prism is not None:
            forwarded = self._client.request(
                method,
                prism.url + path,
                content=raw,
                headers={
                    "authorization": headers["authorization"],
                    "content-type": "application/json",
                    "prefer": "dynamic=true",
                },
            )
            if forwarded.status_code >= 400:
                return forwarded.status_code, _json(forwarded), {}
        handler = ROUTES.get((method, path))
        if handler is None:
            return _error(404, "NOT_FOUND", f"the router does not serve {method} {path}")
        return handler(self, body)

    # -- properties ----------------------------------------------------------------------
    def _props_read(self, body: dict[str, Any]) -> Answer:
        names = [i["name"] for i in body["inputs"]]
        results = [self.props[n] for n in names if n in self.props]
        return 200, _batch(results), {}

    def _props_create(self, body: dict[str, Any]) -> Answer:
        results, errors = [], []
        for item in body["inputs"]:
            if item["name"] in self.props:
                errors.append(_std("OBJECT_ALREADY_EXISTS", "exists", names=[item["name"]]))
                continue
            prop = {"description": "", "options": [], "hasUniqueValue": False, **item}
            self.props[item["name"]] = prop
            results.append(prop)
        return (207 if errors else 201), _batch(results, errors), {}

    # -- contacts ------------------------------------------------------------------------
    def _upsert(self, body: dict[str, Any]) -> Answer:
        refused = self._refused(body["inputs"])
        if refused is not None:
            return refused
        planned: list[tuple[str | None, dict[str, str], dict[str, Any]]] = []
        errors = []
        for item in body["inputs"]:  # checked whole before anything is applied
            if self.poison is not None and self.poison(item):
                errors.append(_std("VALIDATION_ERROR", _quote(item), ids=[item["id"]]))
                continue
            idp = item.get("idProperty")
            problem = self._check_properties(item["properties"], idp)
            if problem is not None:
                return problem
            props = _stored(item["properties"])
            if idp is None:  # no idProperty: ``id`` is a HubSpot object id
                if item["id"] not in self.records:
                    errors.append(_std("OBJECT_NOT_FOUND", "no such contact", ids=[item["id"]]))
                    continue
                cid: str | None = item["id"]
            else:
                props[idp] = item["id"]
                cid = next((c for c, p in self.records.items() if p.get(idp) == item["id"]), None)
            email = props.get("email")
            if (
                cid is None
                and email
                and any(p.get("email") == email for p in self.records.values())
            ):
                return _error(409, "CONFLICT", f"Contact already exists: {email}")
            planned.append((cid, props, item))
        results = []
        for cid, props, _item in planned:
            new = cid is None
            if cid is None:
                cid = str(next(self._ids))
                self.records[cid] = {}
            self.records[cid].update(props)
            results.append(_contact(cid, self.records[cid], new=new))
        return (207 if errors else 200), _batch(results, errors), {}

    def _update(self, body: dict[str, Any]) -> Answer:
        refused = self._refused(body["inputs"])
        if refused is not None:
            return refused
        results, errors = [], []
        for item in body["inputs"]:
            if self.poison is not None and self.poison(item):
                errors.append(_std("VALIDATION_ERROR", _quote(item), ids=[item["id"]]))
                continue
            problem = self._check_properties(item["properties"], item.get("idProperty"))
            if problem is not None:
                return problem
            if item["id"] not in self.records:
                errors.append(_std("OBJECT_NOT_FOUND", "no such contact", ids=[item["id"]]))
                continue
            props = _stored(item["properties"])
            for name, value in props.items():
                unique = self.props.get(name, {}).get("hasUniqueValue")
                taken = [c for c, p in self.records.items() if p.get(name) == value and value]
                if unique and taken and taken != [item["id"]]:
                    return _error(400, "VALIDATION_ERROR", f"{value} is not unique for {name}")
            self.records[item["id"]].update(props)
            results.append(_contact(item["id"], self.records[item["id"]]))
        return (207 if errors else 200), _batch(results, errors), {}

    def _search(self, body: dict[str, Any]) -> Answer:
        groups = body.get("filterGroups") or []
        hits = [
            (cid, p)
            for cid, p in sorted(self.records.items())
            if any(all(_passes(p, f) for f in g["filters"]) for g in groups)
        ]
        start = int(body.get("after") or 0)
        limit = int(body.get("limit") or 10)
        page = hits[start : start + limit]
        wanted = body.get("properties") or ["email", "firstname", "lastname"]
        answer: dict[str, Any] = {
            "total": len(hits),
            "results": [
                _contact(cid, {k: v for k, v in p.items() if k in wanted}) for cid, p in page
            ],
        }
        if start + limit < len(hits):
            answer["paging"] = {"next": {"after": str(start + limit)}}
        return 200, answer, {}

    def _check_properties(self, props: dict[str, Any], idp: str | None) -> Answer | None:
        standard = {"email", "firstname", "lastname", "phone", "mobilephone", "address"}
        standard |= {"city", "state", "zip", "country", "company", "jobtitle"}
        unknown = [n for n in props if n not in self.props and n not in standard]
        if unknown:
            return _error(400, "VALIDATION_ERROR", f"Property {unknown[0]!r} does not exist")
        if idp is not None and not self.props.get(idp, {}).get("hasUniqueValue"):
            return _error(400, "VALIDATION_ERROR", f"{idp} is not a unique property")
        return None

    def _refused(self, inputs: list[dict[str, Any]]) -> Answer | None:
        """The whole request's 400 when ``poisoned(whole=True)`` picks one of its inputs."""
        bad = [i for i in inputs if self.poison is not None and self.poison(i)]
        if not bad or not self.poison_whole:
            return None
        return _error(400, "VALIDATION_ERROR", _quote(bad[0]))


ROUTES: dict[tuple[str, str], Callable[[HubSpotRouter, Any], Answer]] = {
    ("POST", "/crm/v3/properties/contacts/batch/read"): HubSpotRouter._props_read,
    ("POST", "/crm/v3/properties/contacts/batch/create"): HubSpotRouter._props_create,
    ("POST", "/crm/v3/objects/contacts/batch/upsert"): HubSpotRouter._upsert,
    ("POST", "/crm/v3/objects/contacts/batch/update"): HubSpotRouter._update,
    ("POST", "/crm/v3/objects/contacts/search"): HubSpotRouter._search,
}


def _stored(props: dict[str, Any]) -> dict[str, str]:
    out = {k: "" if v is None else str(v) for k, v in props.items()}
    if out.get("email"):
        out["email"] = out["email"].lower()  # HubSpot stores addresses lower-cased
    return out


def _passes(props: dict[str, str], f: dict[str, Any]) -> bool:
    value = props.get(f["propertyName"], "")
    if f["propertyName"] == "email":
        value = value.lower()
    if f["operator"] == "EQ":
        return bool(value) and value == f.get("value")
    if f["operator"] == "IN":
        return bool(value) and value in (f.get("values") or [])
    raise AssertionError(f"the router does not evaluate operator {f['operator']}")


def _contact(cid: str, props: dict[str, str], *, new: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": cid,
        "properties": {**props, "hs_object_id": cid},
        "createdAt": NOW,
        "updatedAt": NOW,
        "archived": False,
    }
    if new is not None:
        out["new"] = new
    return out


def _batch(results: list[Any], errors: list[Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "startedAt": NOW,
        "completedAt": NOW,
    }
    if errors:
        body["errors"], body["numErrors"] = errors, len(errors)
    return body


def _std(category: str, message: str, **context: list[str]) -> dict[str, Any]:
    return {"status": "error", "category": category, "message": message, "context": context}


def _quote(item: dict[str, Any]) -> str:
    # HubSpot's validation messages quote the refused value; so do these.
    return f"Property values were not valid: {json.dumps(item.get('properties'))}"


def _error(status: int, category: str, message: str) -> Answer:
    return status, {"status": "error", "category": category, "message": message}, {}


def _fault(fault: Fault) -> Answer:
    headers = {"retry-after": fault.retry_after} if fault.retry_after is not None else {}
    if fault.status == 429:
        policy = fault.policy or "TEN_SECONDLY_ROLLING"
        message = (
            "You have reached your daily limit."
            if policy == "DAILY"
            else ("You have reached your ten secondly limit.")
        )
        body = {
            "status": "error",
            "message": message,
            "errorType": "RATE_LIMIT",
            "correlationId": "c033cdaa-2c40-4a64-ae48-b4cec88dad24",
            "policyName": policy,
        }
        return 429, body, headers
    return fault.status, {"status": "error", "message": "injected", "category": "ERROR"}, headers


def _json(response: httpx2.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {"body": body}


# -- fixtures --------------------------------------------------------------------------------


def assert_valid_since(router: HubSpotRouter, marks: tuple[int, int]) -> None:
    """Neither Prism logged a contract violation after ``marks``."""
    problems = []
    for prism, mark in zip((router.contacts, router.properties), marks, strict=True):
        if prism is not None:
            problems += [f"{prism.spec.name}: {v}" for v in prism.violations(mark)]
    assert problems == [], "requests that break HubSpot's definitions:\n" + "\n".join(problems)


def marks(router: HubSpotRouter) -> tuple[int, int]:
    """Both Prisms' log positions now."""
    return tuple(p.mark() if p else 0 for p in (router.contacts, router.properties))  # type: ignore[return-value]


@pytest.fixture(scope="session")
def hubspot_server(
    prism_hubspot_contacts: Prism,  # noqa: F811 - the imported fixture
    prism_hubspot_properties: Prism,  # noqa: F811
) -> Iterator[HubSpotRouter]:
    """The session's router, served on 127.0.0.1, in front of both Prisms."""
    router = HubSpotRouter(prism_hubspot_contacts, prism_hubspot_properties)
    with serve_in_thread(router.app()) as url:
        router.url = url
        yield router
    router._client.close()


@pytest.fixture
def hubspot(hubspot_server: HubSpotRouter) -> Iterator[HubSpotRouter]:
    """The router emptied for one test; at its end neither Prism logged a violation."""
    hubspot_server.reset()
    before = marks(hubspot_server)
    yield hubspot_server
    assert_valid_since(hubspot_server, before)
