"""The compiled fast path answers exactly what graphql-core answers, or steps aside."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from graphql import (
    ExecutionResult,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    OperationDefinitionNode,
    execute,
    parse,
)

from app.healthie.client import _entries_document
from sandbox.core import Sandbox
from sandbox.executable import build_executable_schema
from sandbox.fastpath import Bail, Unsupported, compile_query

SCHEMA = build_executable_schema()


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    sandbox = Sandbox(patients=400, seed=13)
    sandbox.apply_random_changes(30, seed=2)
    return sandbox


def both(sb: Sandbox, query: str, variables: dict[str, Any]) -> tuple[str | None, str]:
    """(fast path JSON or None if it bailed, graphql-core JSON)."""
    document = parse(query)
    op = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    reference = execute(SCHEMA, document, context_value=sb, variable_values=variables)
    assert isinstance(reference, ExecutionResult)
    expected = json.dumps({"data": reference.data, "errors": bool(reference.errors)})
    try:
        data = compile_query(SCHEMA, document, op).execute(SCHEMA, sb, variables)
    except Bail:
        return None, expected
    return json.dumps({"data": data, "errors": False}), expected


def random_id(rng: random.Random, sb: Sandbox) -> Any:
    return rng.choice(
        [
            str(1_000_000 + rng.randrange(sb.org.size)),
            str(1_000_000 + rng.randrange(sb.org.size)),
            1_000_000 + rng.randrange(sb.org.size),  # an Int variable for an ID
            "10001",  # a provider
            "999",
            "not-an-id",
            None,
        ]
    )


def test_entry_batches_match_graphql_core(sb: Sandbox) -> None:
    rng = random.Random(5)
    for _ in range(25):
        n = rng.choice((1, 3, 15, 40, 100))
        query = _entries_document(n).payload["query"]
        variables = {f"id{i}": random_id(rng, sb) for i in range(n)}
        fast, expected = both(sb, query, variables)
        assert fast == expected


def _selection(rng: random.Random, owner: GraphQLObjectType, depth: int) -> str:
    names = [n for n, f in owner.fields.items() if not any(a.type for a in f.args.values())]
    picked = rng.sample(names, min(len(names), rng.randint(1, 6)))
    parts = []
    for name in picked:
        inner = owner.fields[name].type
        while isinstance(inner, GraphQLNonNull | GraphQLList):
            inner = inner.of_type
        alias = f"{name}_{rng.randrange(3)}: " if rng.random() < 0.2 else ""
        if isinstance(inner, GraphQLObjectType):
            if depth >= 3:
                continue
            parts.append(
                f"{alias}{name} {{ id {_selection(rng, inner, depth + 1)} }}"
                if "id" in inner.fields
                else f"{alias}{name} {{ {_selection(rng, inner, depth + 1)} }}"
            )
        else:
            parts.append(alias + name)
    if rng.random() < 0.3:
        parts.append("__typename")
    return " ".join(parts) or "__typename"


ROOTS = (
    ("user(id: $id)", "User"),
    ("appointment(id: $id, include_deleted: $flag)", "Appointment"),
    ("users(first: $first, after: $after, order_by: $order) { nodes", "User"),
    (
        'appointments(first: $first, is_org: true, filter: "all", order_by: UPDATED_AT_DESC) '
        "{ nodes",
        "Appointment",
    ),
    ("appliedTags(first: $first) { nodes", "AppliedTag"),
    ("tags", "Tag"),
    ("currentUser", "User"),
)


def test_random_queries_match_graphql_core(sb: Sandbox) -> None:
    rng = random.Random(11)
    handled = 0
    for round_ in range(120):
        fields = []
        for k in range(rng.randint(1, 4)):
            root, type_name = rng.choice(ROOTS)
            owner = SCHEMA.type_map[type_name]
            assert isinstance(owner, GraphQLObjectType)
            body = _selection(rng, owner, 1)
            close = " }" if "{ nodes" in root else ""
            fields.append(f"r{k}: {root} {{ {body} }}{close}")
        query = (
            "query Q($id: ID, $flag: Boolean, $first: Int, $after: String, "
            f"$order: UserOrderKeys) {{ {' '.join(fields)} }}"
        )
        variables = {
            "id": random_id(rng, sb),
            "flag": rng.choice((True, False, None)),
            "first": rng.choice((None, 0, 1, 5, 30)),
            "after": rng.choice((None, None, "eyJrIjpbIjEwMDAwMTAiXX0=", "garbage")),
            "order": rng.choice((None, "UPDATED_AT_DESC", "CREATED_AT_ASC")),
        }
        fast, expected = both(sb, query, variables)
        if fast is not None:
            handled += 1
            assert fast == expected, (round_, query, variables)
        else:
            assert json.loads(expected)["errors"] or "garbage" in json.dumps(variables), query
    assert handled > 60


def test_unusual_operations_are_left_to_graphql_core() -> None:
    for query in (
        'mutation { createTag(input: {name: "x"}) { tag { id } } }',
        "query($s: Boolean!) { currentUser { id @include(if: $s) } }",
        "{ __schema { queryType { name } } }",
    ):
        document = parse(query)
        op = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
        with pytest.raises(Unsupported):
            compile_query(SCHEMA, document, op)
