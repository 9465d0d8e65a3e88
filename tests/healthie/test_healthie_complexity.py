"""The complexity estimate follows Healthie's rate-limit guide, and agrees with the sandbox."""

from __future__ import annotations

import pytest
from gql import GraphQLRequest
from graphql import parse

from app.healthie import operations
from app.healthie.client import _appointments_document, _entries_document
from app.healthie.complexity import depth, estimate, parse_complexity_error

GUIDE = "query { users(first: 3) { nodes { id appointments { id notes } } } }"


def test_the_guides_examples():
    assert estimate(parse(GUIDE)) == 14
    assert estimate(parse(GUIDE.replace("(first: 3)", ""))) == 402
    assert depth(parse(GUIDE)) == 4


def test_page_size_from_variables_and_schema_detected_connections(healthie_schema):
    q = parse("query Q($n: Int) { users(first: $n) { nodes { id } page_info { end_cursor } } }")
    assert estimate(q, {"n": 10}) == 1 + 1 + 10 + 1 + 1
    assert estimate(q) == 1 + 1 + 100 + 1 + 1  # no page size: Healthie's default of 100
    # with the schema, a connection is known by its type even without first/nodes hints
    plain = parse("query { appointments { edges { node { id } } } }")
    assert estimate(plain, schema=healthie_schema) == 1 + 1 + 100 + 100


def test_plain_lists_are_not_multiplied():
    q = parse('query { user(id: "1") { id appointments { id provider { id } } } }')
    assert estimate(q) == 6  # user id appointments id provider id, none multiplied


def test_fragments_and_aliases_count_per_use():
    one = estimate(_entries_document(1).document)
    assert estimate(_entries_document(7).document) == 7 * one


@pytest.mark.parametrize("name", operations.names())
def test_agrees_with_the_sandbox_scorer(name):
    from sandbox.complexity import complexity

    text = operations.load(name)
    if text.lstrip("# \n").startswith("fragment") or "query" not in text:
        loc = _entries_document(3).document.loc  # fragment-only file
        assert loc is not None
        text = loc.source.body
    document = GraphQLRequest(text).document
    assert estimate(document, {"first": 50}) == complexity(document, {"first": 50})
    appointments = _appointments_document(5).document
    assert estimate(appointments) == complexity(appointments)


def test_parses_healthies_refusal():
    refused = parse_complexity_error(
        "Query has complexity of 2274, which exceeds max complexity of 2000"
    )
    assert refused is not None
    assert (refused.score, refused.limit) == (2274, 2000)
    assert parse_complexity_error("Query has depth of 30, which exceeds max depth of 25") is None
