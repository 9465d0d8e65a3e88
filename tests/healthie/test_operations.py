"""Contract: every operation the project sends validates against Healthie's published schema,
and the entry never reaches session notes or clinical documentation.

The type walk is ``app.healthie.selection``'s, the same one that checks an integration's entry
selection at start-up."""

from __future__ import annotations

from graphql import GraphQLSchema

from app.healthie.client import _appointments_document, _entries_document
from app.healthie.complexity import MAX_COMPLEXITY, MAX_DEPTH, depth, estimate
from app.healthie.schema_check import operation_documents, problems_against
from app.healthie.selection import forbidden_selections, reached_types
from tests.healthie.test_client import make


def _documents() -> dict[str, str]:
    client = make(lambda r: None)
    try:
        return operation_documents(client)
    finally:
        client.close()


def test_every_operation_validates_against_the_published_schema(healthie_schema: GraphQLSchema):
    documents = _documents()
    assert problems_against(healthie_schema, documents) == {}
    assert {
        "entry",
        "appointment_patients_batch",
        "sweep_users",
        "sweep_appointments",
        "sweep_applied_tags",
        "webhooks",
        "failed_webhooks",
    } <= set(documents)


def test_entry_never_reaches_notes_or_clinical_documentation(healthie_schema: GraphQLSchema):
    entry = _documents()["entry"]
    reached = reached_types(healthie_schema, entry)
    assert len(reached) > 40  # the walk really visited the selection
    assert forbidden_selections(healthie_schema, entry) == []


def test_exclusion_walk_catches_a_forbidden_selection(healthie_schema: GraphQLSchema):
    bad = 'query Q { user(id: "1") { id form_answer_groups { id } } }'
    (found,) = forbidden_selections(healthie_schema, bad)
    assert found.path == "Q.user.form_answer_groups"
    assert "FormAnswerGroup" in found.types


def test_every_operation_stays_under_healthies_limits(healthie_schema: GraphQLSchema):
    """Paged operations at their page size, and a full entries batch, fit the caps."""
    from gql import GraphQLRequest

    from app.healthie.pagination import DEFAULT_PAGE_SIZE

    for name, text in _documents().items():
        document = GraphQLRequest(text).document
        score = estimate(document, {"first": DEFAULT_PAGE_SIZE}, schema=healthie_schema)
        assert score <= MAX_COMPLEXITY, (name, score)
        assert depth(document) <= MAX_DEPTH, name
    batch = _entries_document(15).document
    assert estimate(batch, schema=healthie_schema) <= MAX_COMPLEXITY
    assert estimate(_appointments_document(60).document, schema=healthie_schema) <= MAX_COMPLEXITY
