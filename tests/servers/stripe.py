"""A local, stateful Stripe for the connector's tests: every request is checked against its
operation in Stripe's published OpenAPI definition for API version 2023-08-16 (the subset in
``../shared/openapi``), customers, search and invoice items behave as Stripe documents them,
and answers are shaped from Stripe's own fixtures (``stripe-fixtures3.json``).

::

    request ─▶ Authorization: Bearer sk_test_…/sk_live_…   else 401 (every key is an account
                                                           of its own: tests never share state)
            ─▶ Stripe-Version: 2023-08-16                  else a violation
            ─▶ the operation by method + path template     none: 404 and a violation
                 query and form body decoded (``metadata[k]=v``, ``address[line1]=``, ``a[0]``)
                 into the JSON shape, typed by the operation's schema, then validated with
                 openapi-schema-validator (OAS 3.0): an undeclared parameter, a wrong type,
                 a missing required one -> 400 invalid_request_error and a violation
            ─▶ test controls: ``failing`` (status, headers), ``enforce_rate`` (Stripe's
                 published per-second limits, 429 beyond them)
            ─▶ Idempotency-Key on a POST                   same key, endpoint and parameters:
                 the saved answer replayed (``Idempotent-Replayed: true``); other parameters:
                 400 idempotency_error. Saved once execution began (not for a 400 of
                 validation, a 401 or a 429), kept for the session (Stripe: at least 24 h)
            ─▶ handler: customers (create, retrieve, update, list), customer search (the
                 ``metadata['k']:'v' AND …`` subset of Stripe's query language), invoice
                 items (create, list by customer with pagination)

Search reads an index, not the customers: with ``lagging()`` the index keeps the state it had
when the lag began (new customers are not found, changed ones are found as they were) until
``catch_up()``, as Stripe's eventually consistent search does ("searchable in less than a
minute"). Retrieve and list read the customers themselves (strongly consistent).

Like Stripe's, error messages quote the request (``Invalid email address: …`` under
``poisoned()``), so the connector's tests prove none reaches an engine error.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread
import pytest
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.service.serving import serve_in_thread
from tests.conftest import SHARED, require_service
from tests.servers import Shared

SPEC = SHARED / "openapi" / "stripe-customers-invoices-2023-08-16.subset.json"
FIXTURES = SHARED / "openapi" / "stripe-fixtures3.json"
VERSION = "2023-08-16"
URI = "urn:stripe:spec3:2023-08-16"
#: https://stripe.com/docs/rate-limits: per second in live / test mode; search 20 in both
RATES = {"live": {"read": 100, "write": 100, "search": 20}, "test": {"read": 25, "write": 25}}
RATES["test"]["search"] = 20
_CLAUSE = re.compile(r"^metadata\['([^'\\]+)'\]:'((?:[^'\\]|\\.)*)'$")
_INT = re.compile(r"^-?[0-9]+$")


def _key(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class Operation:
    """One operation of the definition and where its schemas are."""

    method: str
    template: str
    regex: re.Pattern[str]
    pointer: str  # JSON pointer of the operation object
    spec: dict[str, Any]


class Contract:
    """The definition: operations by request, form decoding and validation."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.registry: Registry[Any] = Registry().with_resource(
            URI, Resource.from_contents(spec, default_specification=DRAFT4)
        )
        self.operations: list[Operation] = []
        for template, item in spec["paths"].items():
            regex = re.compile("^" + re.sub(r"\{[^}]+\}", "([^/]+)", template) + "$")
            for method, op in item.items():
                pointer = f"/paths/{_key(template)}/{method}"
                self.operations.append(Operation(method.upper(), template, regex, pointer, op))
        # a literal path (``/v1/customers/search``) wins over a template (``/{customer}``)
        self.operations.sort(key=lambda o: o.template.count("{"))
        self._validators: dict[str, OAS30Validator] = {}

    def match(self, method: str, path: str) -> Operation | None:
        """The operation for a request, or None."""
        return next(
            (o for o in self.operations if o.method == method and o.regex.match(path)), None
        )

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A schema with its top-level local ``$ref`` followed."""
        while "$ref" in schema:
            node: Any = self.spec
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            schema = node
        return schema

    def problems(self, pointer: str, value: Any, where: str) -> list[str]:
        """What breaks the schema at ``pointer``: field paths and keywords, never values."""
        validator = self._validators.get(pointer)
        if validator is None:
            validator = OAS30Validator({"$ref": f"{URI}#{pointer}"}, registry=self.registry)
            self._validators[pointer] = validator
        out = []
        for error in validator.iter_errors(value):
            path = "/".join(str(p) for p in error.absolute_path) or "(root)"
            extra = ""
            if error.validator == "additionalProperties" and isinstance(error.instance, dict):
                allowed = set(error.schema.get("properties", {}))
                extra = f" {sorted(set(error.instance) - allowed)}"
            out.append(f"{where} {path}: {error.validator}{extra}")
        return out

    def check(
        self, op: Operation, query: list[tuple[str, str]], form: list[tuple[str, str]]
    ) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        """The request's query and body in the JSON shape, and what breaks the operation."""
        problems: list[str] = []
        params = {p["name"]: (i, p) for i, p in enumerate(op.spec.get("parameters") or [])}
        decoded = unflatten(query)
        typed_query: dict[str, Any] = {}
        for name, value in decoded.items():
            if name not in params or params[name][1]["in"] != "query":
                problems.append(f"query {name}: not a parameter of {op.method} {op.template}")
                continue
            i, param = params[name]
            typed_query[name] = self.coerce(value, param["schema"])
            problems += self.problems(
                f"{op.pointer}/parameters/{i}/schema", typed_query[name], f"query {name}"
            )
        for name, (_, param) in params.items():
            if param["in"] == "query" and param.get("required") and name not in decoded:
                problems.append(f"query {name}: required")
        content = (op.spec.get("requestBody") or {}).get("content", {})
        body: dict[str, Any] = {}
        form_type = "application/x-www-form-urlencoded"
        if form_type in content:
            schema_pointer = f"{op.pointer}/requestBody/content/{_key(form_type)}/schema"
            body = self.coerce(unflatten(form), content[form_type]["schema"])
            problems += self.problems(schema_pointer, body, "body")
        elif form:
            problems.append(f"body: {op.method} {op.template} takes none")
        return typed_query, body, problems

    def coerce(self, value: Any, schema: dict[str, Any]) -> Any:
        """Form strings typed as the schema declares (integers, booleans, arrays)."""
        schema = self.resolve(schema)
        if "anyOf" in schema:
            for branch in schema["anyOf"]:
                typed = self.coerce(value, branch)
                if _fits(typed, self.resolve(branch)):
                    return typed
            return value
        kind = schema.get("type")
        if kind == "object" and isinstance(value, dict):
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties")
            extra = extra if isinstance(extra, dict) else None
            return {
                k: self.coerce(v, props[k]) if k in props else self.coerce(v, extra) if extra else v
                for k, v in value.items()
            }
        if kind == "array" and isinstance(value, list):
            return [self.coerce(v, schema.get("items", {})) for v in value]
        if isinstance(value, str):
            if kind == "integer" and _INT.match(value):
                return int(value)
            if kind == "boolean" and value in ("true", "false"):
                return value == "true"
        return value


def _fits(value: Any, schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if "enum" in schema and value not in schema["enum"]:
        return False
    return {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
    }.get(str(kind), True)


def unflatten(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding to JSON: ``a[b][c]=v`` nests, ``a[0]``/``a[]`` make lists."""
    root: dict[str, Any] = {}
    for name, value in pairs:
        head, _, rest = name.partition("[")
        parts = [head] + (rest[:-1].split("][") if rest else [])
        node = root
        for i, part in enumerate(parts):
            if part == "":
                part = str(len(node))
            if i == len(parts) - 1:
                node[part] = value
            else:
                nxt = node.setdefault(part, {})
                node = nxt if isinstance(nxt, dict) else node
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    node = {k: _lists(v) for k, v in node.items()}
    if node and all(k.isdigit() for k in node):
        return [node[k] for k in sorted(node, key=int)]
    return node


def _error(status: int, kind: str, message: str, **more: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **more}}, status_code=status)


@dataclass
class Account:
    """One API key's Stripe account: its objects, saved idempotent answers and controls."""

    mode: str
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    index: dict[str, dict[str, Any]] = field(default_factory=dict)  # what search sees
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    saved: dict[str, tuple[str, int, Any]] = field(default_factory=dict)  # key -> answer
    violations: list[str] = field(default_factory=list)
    #: (method, template, idempotency key or None) per request, in order
    log: list[tuple[str, str, str | None]] = field(default_factory=list)
    lag: bool = False
    poison: bool = False
    fault: tuple[int, int | None, dict[str, str]] | None = None
    enforce_rate: bool = False
    sent: dict[str, list[float]] = field(default_factory=dict)
    rate_limited: int = 0
    replayed: int = 0  # answers replayed for an Idempotency-Key
    #: parties that must all have asked for a list of invoice items before any is answered
    race: threading.Barrier | None = None

    def take_violations(self) -> list[str]:
        """The violations recorded so far (and forget them)."""
        out, self.violations = self.violations, []
        return out

    def calls(self, method: str, template: str) -> list[str | None]:
        """The idempotency keys (or None) of the requests to one operation."""
        return [k for m, t, k in self.log if (m, t) == (method, template)]

    @contextlib.contextmanager
    def failing(
        self, status: int, *, times: int | None = None, headers: dict[str, str] | None = None
    ) -> Iterator[None]:
        """Answer requests (``times`` of them, or all) with ``status`` and ``headers``."""
        self.fault = (status, times, dict(headers or {}))
        try:
            yield
        finally:
            self.fault = None

    @contextlib.contextmanager
    def lagging(self) -> Iterator[None]:
        """Search sees the index as it is now until the block ends (then it catches up)."""
        self.lag = True
        try:
            yield
        finally:
            self.lag = False
            self.catch_up()

    def catch_up(self) -> None:
        """Search sees every customer as it is."""
        self.index = copy.deepcopy(self.customers)

    @contextlib.contextmanager
    def poisoned(self) -> Iterator[None]:
        """Refuse, as Stripe would, a customer email ``kpoison@…`` and a billing item
        ``poison`` (400 invalid_request_error quoting the value)."""
        self.poison = True
        try:
            yield
        finally:
            self.poison = False


class FakeStripe:
    """The fake's accounts and its ASGI app (serve ``app``; ``base_url`` is where it runs)."""

    def __init__(self, contract: Contract, fixtures: dict[str, Any]) -> None:
        self.contract = contract
        self.fixtures = fixtures
        self.lock = threading.RLock()
        self.accounts: dict[str, Account] = {}
        self.base_url = ""
        methods = ["GET", "POST", "DELETE"]
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=methods)])

    def account(self, api_key: str) -> Account:
        """The account of ``api_key`` (``sk_test_``/``rk_test_``: test mode, else live)."""
        with self.lock:
            mode = "test" if "_test_" in api_key else "live"
            return self.accounts.setdefault(api_key, Account(mode))

    @staticmethod
    def new_key(mode: str = "test") -> str:
        """A fresh API key: an empty account of its own."""
        return f"sk_{mode}_{secrets.token_hex(12)}"

    async def _endpoint(self, request: Request) -> JSONResponse:
        raw = await request.body()
        api_key = request.headers.get("authorization", "").removeprefix("Bearer ")
        race = self.accounts[api_key].race if api_key in self.accounts else None
        listing = request.method == "GET" and request.url.path == "/v1/invoiceitems"
        if race is not None and listing:
            await anyio.to_thread.run_sync(race.wait, 10.0)  # concurrent workers, interleaved
        with self.lock:
            return self._handle(request, raw)

    def _handle(self, request: Request, raw: bytes) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        api_key = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or not re.match(r"^[sr]k_(test|live)_\w+$", api_key):
            return _error(401, "invalid_request_error", "Invalid API Key provided")
        account = self.account(api_key)
        method, path = request.method, request.url.path
        if request.headers.get("stripe-version") != VERSION:
            account.violations.append(f"{method} {path}: Stripe-Version is not {VERSION}")
        op = self.contract.match(method, path)
        key = request.headers.get("idempotency-key")
        account.log.append((method, op.template if op else path, key))
        if op is None:
            account.violations.append(f"{method} {path}: no such operation")
            return _error(404, "invalid_request_error", "Unrecognized request URL")
        if method == "POST" and "x-www-form-urlencoded" not in request.headers.get(
            "content-type", ""
        ):
            account.violations.append(f"{method} {op.template}: not a form body")
        query = parse_qsl(request.url.query, keep_blank_values=True)
        form = parse_qsl(raw.decode(), keep_blank_values=True) if raw else []
        typed_query, body, problems = self.contract.check(op, query, form)
        if problems:
            account.violations += [f"{method} {op.template}: {p}" for p in problems]
            return _error(400, "invalid_request_error", "; ".join(problems))
        if account.fault is not None:
            status, times, headers = account.fault
            if times is not None:
                account.fault = (status, times - 1, headers) if times > 1 else None
            kind = "api_error" if status >= 500 else "invalid_request_error"
            answer = _error(status, kind, "injected by the test")
            answer.headers.update(headers)
            return answer
        if account.enforce_rate and self._over_rate(account, op, method):
            account.rate_limited += 1
            return _error(429, "invalid_request_error", "Too many requests", code="rate_limit")
        saved = account.saved.get(key) if key and method == "POST" else None
        fingerprint = json.dumps([method, path, body], sort_keys=True)
        if saved is not None:
            if saved[0] != fingerprint:
                return _error(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters "
                    f"they were first used with. Try using a key other than '{key}' if you "
                    "meant to execute a different request.",
                )
            account.replayed += 1
            answer = JSONResponse(saved[2], status_code=saved[1])
            answer.headers["Idempotent-Replayed"] = "true"
            return answer
        status, payload = self._run(account, op, path, typed_query, body)
        if key and method == "POST":
            account.saved[key] = (fingerprint, status, copy.deepcopy(payload))
        answer = JSONResponse(payload, status_code=status)
        answer.headers["Request-Id"] = "req_" + secrets.token_hex(7)
        return answer

    def _over_rate(self, account: Account, op: Operation, method: str) -> bool:
        now = time.monotonic()
        kinds = ["write"] if method != "GET" else ["read"]
        if op.template.endswith("/search"):
            kinds.append("search")
        for kind in kinds:
            sent = [t for t in account.sent.get(kind, []) if now - t < 1.0]
            account.sent[kind] = sent
            if len(sent) >= RATES[account.mode][kind]:
                return True
        for kind in kinds:
            account.sent[kind].append(now)
        return False

    # -- the operations ------------------------------------------------------------------
    def _run(
        self, account: Account, op: Operation, path: str, query: dict[str, Any], body: Any
    ) -> tuple[int, Any]:
        ident = path.rsplit("/", 1)[-1]
        handlers = {
            ("GET", "/v1/customers"): lambda: _page(list(account.customers.values()), query),
            ("POST", "/v1/customers"): lambda: self._save_customer(account, None, body),
            ("GET", "/v1/customers/search"): lambda: _search(account, query),
            ("GET", "/v1/customers/{customer}"): lambda: _get(account.customers, ident),
            ("POST", "/v1/customers/{customer}"): lambda: self._save_customer(account, ident, body),
            ("GET", "/v1/invoiceitems"): lambda: _page(
                [i for i in account.items.values() if i["customer"] == query.get("customer")]
                if "customer" in query
                else list(account.items.values()),
                query,
            ),
            ("POST", "/v1/invoiceitems"): lambda: self._create_item(account, body),
        }
        handler = handlers.get((op.method, op.template))
        if handler is None:
            account.violations.append(f"{op.method} {op.template}: not implemented by the fake")
            return 501, {"error": {"type": "api_error", "message": "not implemented"}}
        result: tuple[int, Any] = handler()
        return result

    def _save_customer(self, account: Account, ident: str | None, body: Any) -> tuple[int, Any]:
        email = body.get("email")
        if (
            isinstance(email, str)
            and email
            and ("@" not in email or (account.poison and email.startswith("kpoison@")))
        ):
            return 400, {
                "error": {
                    "type": "invalid_request_error",
                    "code": "email_invalid",
                    "param": "email",
                    "message": f"Invalid email address: {email}",
                }
            }
        if ident is None:
            customer = copy.deepcopy(self.fixtures["customer"])
            customer.update(
                id="cus_" + secrets.token_hex(7),
                created=int(time.time()),
                livemode=account.mode == "live",
                address=None,
                discount=None,
                shipping=None,
                metadata={},
                email=None,
                name=None,
                phone=None,
                description=None,
            )
        elif ident in account.customers:
            customer = account.customers[ident]
        else:
            return _missing(ident)
        for name in ("name", "email", "phone", "description"):
            if name in body:
                customer[name] = body[name] or None
        if "address" in body:
            address = body["address"]
            customer["address"] = (
                {
                    k: address.get(k) or None
                    for k in ("city", "country", "line1", "line2", "postal_code", "state")
                }
                if isinstance(address, dict)
                else None
            )
        customer["metadata"] = _merge(customer["metadata"], body.get("metadata"))
        account.customers[customer["id"]] = customer
        if not account.lag:
            account.index[customer["id"]] = copy.deepcopy(customer)
        return 200, customer

    def _create_item(self, account: Account, body: Any) -> tuple[int, Any]:
        billing = (body.get("metadata") or {}).get("healthie_billing_item_id")
        if account.poison and billing == "poison":
            return 400, {
                "error": {
                    "type": "invalid_request_error",
                    "param": "metadata",
                    "message": f"Invalid billing item: {billing}",
                }
            }
        if body.get("customer") not in account.customers:
            return _missing(str(body.get("customer")))
        item = copy.deepcopy(self.fixtures["invoiceitem"])
        now = int(time.time())
        item.update(
            id="ii_" + secrets.token_hex(12),
            customer=body["customer"],
            date=now,
            amount=body.get("amount"),
            currency=body.get("currency"),
            description=body.get("description"),
            invoice=None,
            parent=None,
            livemode=account.mode == "live",
            period={"start": now, "end": now},
            metadata=_merge({}, body.get("metadata")),
        )
        account.items[item["id"]] = item
        return 200, item


def _merge(held: dict[str, str], sent: Any) -> dict[str, str]:
    """Stripe's metadata update: keys merged, "" removes a key, ``metadata=""`` all keys."""
    if sent == "":
        return {}
    out = dict(held)
    for k, v in (sent or {}).items():
        if v == "":
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _missing(ident: str) -> tuple[int, Any]:
    return 404, {
        "error": {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "message": f"No such object: '{ident}'",
        }
    }


def _get(objects: dict[str, dict[str, Any]], ident: str) -> tuple[int, Any]:
    return (200, objects[ident]) if ident in objects else _missing(ident)


def _page(objects: list[dict[str, Any]], query: dict[str, Any]) -> tuple[int, Any]:
    """A list answer: newest first, ``limit`` (default 10) after ``starting_after``."""
    ordered = sorted(
        objects, key=lambda o: (o.get("created") or o.get("date") or 0, o["id"]), reverse=True
    )
    if "starting_after" in query:
        ids = [o["id"] for o in ordered]
        if query["starting_after"] in ids:
            ordered = ordered[ids.index(query["starting_after"]) + 1 :]
    limit = int(query.get("limit") or 10)
    data = ordered[:limit]
    return 200, {"object": "list", "data": data, "has_more": len(ordered) > limit, "url": ""}


def _search(account: Account, query: dict[str, Any]) -> tuple[int, Any]:
    wanted = []
    for clause in str(query["query"]).split(" AND "):
        found = _CLAUSE.match(clause.strip())
        if found is None:
            account.violations.append("GET /v1/customers/search: a clause the fake cannot read")
            return 400, {
                "error": {
                    "type": "invalid_request_error",
                    "param": "query",
                    "message": "Invalid search query",
                }
            }
        wanted.append((found.group(1), re.sub(r"\\(.)", r"\1", found.group(2))))
    data = [
        c
        for c in account.index.values()
        if all((c.get("metadata") or {}).get(k) == v for k, v in wanted)
    ]
    limit = int(query.get("limit") or 10)
    return 200, {
        "object": "search_result",
        "url": "/v1/customers/search",
        "has_more": len(data) > limit,
        "next_page": None,
        "data": data[:limit],
        "total_count": len(data),
    }


@contextlib.contextmanager
def running_fake() -> Iterator[FakeStripe]:
    """Start the fake on a free port (skips, or fails with REQUIRE_SERVICES=1, without
    Stripe's definition and fixtures in ../shared)."""
    if not SPEC.is_file() or not FIXTURES.is_file():
        require_service("Stripe OpenAPI definition", f"{SPEC} not found (../shared is absent)")
    contract = Contract(json.loads(SPEC.read_text(encoding="utf-8")))
    fixtures = json.loads(FIXTURES.read_text(encoding="utf-8"))["resources"]
    fake = FakeStripe(contract, fixtures)
    with serve_in_thread(fake.app) as url:
        fake.base_url = url
        yield fake


_SESSION: Shared[FakeStripe] = Shared("the Stripe fake", running_fake)


@pytest.fixture(scope="session")
def stripe_fake() -> Iterator[FakeStripe]:
    """The session's fake (one server however many holders)."""
    with _SESSION.use() as fake:
        yield fake
