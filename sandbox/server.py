"""Healthie's GraphQL endpoint over HTTP, served from a :class:`~sandbox.core.Sandbox`.

``POST /graphql`` goes through, in order: injected latency and 5xx faults, authentication,
the API version header, the rate limit, parsing and validation (cached per query text,
because the engine sends the same aliased batch document again and again), the complexity
budget, then execution: plain read queries through the compiled fast path of
:mod:`sandbox.fastpath` (cached with the parsed document), everything else, and anything the
fast path gives up on, with graphql-core against the subset schema. ``GET /_sandbox/stats``
(the sandbox's own, not Healthie's) counts the requests received, those refused by the rate
limit, and the executed operations by name, so a benchmark in another process can measure
requests per entry where they arrive.

Refusals follow Healthie's guides where they say something:

* rate limit, complexity and version problems are GraphQL errors with the documented
  messages and ``extensions.code`` values, HTTP 200 (the guides show only the body);
* authentication: the guide describes the headers but not the refusal. Following the
  error-handling guide's commitment to RFC 9110 status codes, a missing or wrong
  ``Authorization: Basic <key>`` or ``AuthorizationSource: API`` gets HTTP 401 with a
  GraphQL ``errors`` body.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, OrderedDict
from collections.abc import Awaitable
from threading import Lock
from typing import Any, TypeGuard

from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    execute,
    parse,
    validate,
)
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.complexity import complexity
from sandbox.core import Sandbox
from sandbox.executable import build_executable_schema
from sandbox.fastpath import Bail, Plan, Unsupported, compile_query
from sandbox.versions import HEADER, check_version

UNAUTHENTICATED = (
    "API Key is invalid or missing. "
    "Send 'Authorization: Basic <key>' and 'AuthorizationSource: API'."
)
TOO_MANY_REQUESTS = {
    "message": "Too many requests. Please try again later.",
    "extensions": {"code": "TOO_MANY_REQUESTS"},
}


class _Documents:
    """A small LRU of parsed and validated documents keyed by query text, with the compiled
    fast-path plan of each query operation (None when graphql-core must run it)."""

    def __init__(self, schema: GraphQLSchema, size: int = 256) -> None:
        self._schema, self._size = schema, size
        self._cache: OrderedDict[str, tuple[DocumentNode | None, list[GraphQLError]]] = (
            OrderedDict()
        )
        self._plans: OrderedDict[tuple[int, str | None], Plan | None] = OrderedDict()
        self._lock = Lock()

    def plan(self, document: DocumentNode, op: OperationDefinitionNode) -> Plan | None:
        """The compiled plan for ``op`` of a cached ``document``."""
        key = (id(document), op.name.value if op.name else None)
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
        try:
            plan: Plan | None = compile_query(self._schema, document, op)
        except Unsupported:
            plan = None
        with self._lock:
            self._plans[key] = plan
            if len(self._plans) > self._size:
                self._plans.popitem(last=False)
        return plan

    def get(self, query: str) -> tuple[DocumentNode | None, list[GraphQLError]]:
        with self._lock:
            if query in self._cache:
                self._cache.move_to_end(query)
                return self._cache[query]
        try:
            document: DocumentNode | None = parse(query)
            errors = validate(self._schema, document)  # type: ignore[arg-type]
        except GraphQLError as exc:
            document, errors = None, [exc]
        with self._lock:
            self._cache[query] = (document, errors)
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return document, errors


def _never_awaitable(_value: object) -> TypeGuard[Awaitable[Any]]:
    """Every resolver is synchronous; skipping graphql-core's per-value check saves ~15 %."""
    return False


def _json(body: dict[str, Any], status: int = 200) -> Response:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(content, status_code=status, media_type="application/json")


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode | None:
    ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    for op in ops:
        if name is None or (op.name is not None and op.name.value == name):
            return op
    return None


def create_app(sandbox: Sandbox, *, fast_path: bool = True) -> Starlette:
    """Return an ASGI app serving ``sandbox`` at ``POST /graphql``.

    ``fast_path=False`` executes everything with graphql-core (for comparisons).
    """
    schema = build_executable_schema()
    documents = _Documents(schema)
    # every POST /graphql, refused or not (the operation counters count executed ones only)
    traffic: Counter[str] = Counter()

    def authorized(request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        return (
            auth == f"Basic {sandbox.api_key}"
            and request.headers.get("authorizationsource", "") == "API"
        )

    def run(
        document: DocumentNode,
        op: OperationDefinitionNode,
        variables: dict[str, Any] | None,
        operation_name: str | None,
    ) -> ExecutionResult:
        def go() -> ExecutionResult:
            result = execute(
                schema,
                document,
                context_value=sandbox,
                variable_values=variables,
                operation_name=operation_name,
                is_awaitable=_never_awaitable,
            )
            assert isinstance(result, ExecutionResult)  # every resolver is synchronous
            return result

        if op.operation is OperationType.MUTATION:
            return go()  # sandbox methods lock themselves and deliver webhooks unlocked
        plan = documents.plan(document, op) if fast_path else None
        with sandbox.lock:
            if plan is not None:
                try:
                    return ExecutionResult(data=plan.execute(schema, sandbox, variables))
                except Bail:
                    pass  # graphql-core reports the errors exactly
            return go()

    async def graphql_endpoint(request: Request) -> Response:
        traffic["requests"] += 1
        faults = sandbox.faults
        if faults.latency():
            await asyncio.sleep(faults.latency())
        if faults.server_error():
            return Response("Internal Server Error", status_code=500, media_type="text/plain")
        if not authorized(request):
            return _json(
                {
                    "errors": [
                        {"message": UNAUTHENTICATED, "extensions": {"code": "UNAUTHENTICATED"}}
                    ]
                },
                status=401,
            )
        version = check_version(request.headers.get(HEADER), sandbox.clock.date())
        if version.error is not None:
            return _json({"errors": [version.error]})
        if faults.rate_limited():
            traffic["rate_limited"] += 1
            return _json({"errors": [TOO_MANY_REQUESTS]})
        try:
            payload = json.loads(await request.body())
            query = payload.get("query") if isinstance(payload, dict) else None
        except ValueError as exc:
            return _json({"errors": [{"message": f"Invalid JSON body: {exc}"}]}, 400)
        if not isinstance(query, str):
            return _json({"errors": [{"message": "Invalid GraphQL request: no query"}]}, 400)
        variables = payload.get("variables") or None
        operation_name = payload.get("operationName") or None
        document, errors = documents.get(query)
        if document is None or errors:
            return _json({"errors": [e.formatted for e in errors]})
        op = _operation(document, operation_name)
        if op is None:
            return _json({"errors": [{"message": f"Unknown operation named '{operation_name}'."}]})
        name = op.name.value if op.name else "anonymous"
        budget = faults.config.complexity_budget
        if budget is not None:
            score = complexity(document, variables, operation_name)
            if score > budget:
                message = (
                    f"Query has complexity of {score}, which exceeds max complexity of {budget}"
                )
                return _json({"errors": [{"message": message}]})
        sandbox.counters[name] += 1
        result = await run_in_threadpool(run, document, op, variables, operation_name)
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [e.formatted for e in result.errors]
        if version.warnings:
            body["extensions"] = {"warnings": version.warnings}
        return _json(body)

    async def health(_: Request) -> Response:
        return JSONResponse({"ok": True})

    async def stats(_: Request) -> Response:
        return JSONResponse(
            {
                "requests": traffic["requests"],
                "rate_limited": traffic["rate_limited"],
                "operations": dict(sandbox.counters),
            }
        )

    return Starlette(
        routes=[
            Route("/graphql", graphql_endpoint, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/_sandbox/stats", stats, methods=["GET"]),
        ]
    )
