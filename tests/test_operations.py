"""Contract: every operation the project sends validates against Healthie's published schema,
and the entry never reaches session notes or clinical documentation."""

from __future__ import annotations

from graphql import (
    GraphQLSchema,
    TypeInfo,
    Visitor,
    get_named_type,
    parse,
    validate,
    visit,
)
from graphql.utilities import TypeInfoVisitor

from app.healthie import operations
from app.healthie.client import _appointments_document, _entries_document

EXCLUDED_TYPES = {
    "FormAnswerGroup",
    "FormAnswer",
    "Note",
    "Conversation",
    "Document",
    "Comment",
}


def _excluded(type_name: str) -> bool:
    lowered = type_name.lower()
    return type_name in EXCLUDED_TYPES or "chartingnote" in lowered or "chart_note" in lowered


def _documents() -> dict[str, str]:
    docs = {name: operations.load(name) for name in operations.names()}
    # fragments are sent inside the batched queries the client builds
    docs["entry"] = _entries_document(3).document.loc.source.body  # type: ignore[union-attr]
    docs["appointment_patients_batch"] = _appointments_document(3).document.loc.source.body  # type: ignore[union-attr]
    return docs


def test_every_operation_validates_against_the_published_schema(healthie_schema: GraphQLSchema):
    problems = {
        name: [e.message for e in validate(healthie_schema, parse(text))]
        for name, text in _documents().items()
    }
    assert {k: v for k, v in problems.items() if v} == {}
    assert len(problems) >= 4


def _reached_types(schema: GraphQLSchema, text: str) -> list[tuple[str, str]]:
    type_info = TypeInfo(schema)
    reached: list[tuple[str, str]] = []

    class Collect(Visitor):
        def enter_field(self, node, *_):  # type: ignore[no-untyped-def]
            field_type = type_info.get_type()
            if field_type is not None:
                reached.append((node.name.value, get_named_type(field_type).name))

    visit(parse(text), TypeInfoVisitor(type_info, Collect()))
    return reached


def test_entry_never_reaches_notes_or_clinical_documentation(healthie_schema: GraphQLSchema):
    reached = _reached_types(healthie_schema, _documents()["entry"])
    assert len(reached) > 40  # the walk really visited the selection
    offending = [(field, t) for field, t in reached if _excluded(t)]
    assert offending == []


def test_exclusion_walk_catches_a_forbidden_selection(healthie_schema: GraphQLSchema):
    bad = "query { user(id: \"1\") { id form_answer_groups { id } } }"
    reached = _reached_types(healthie_schema, bad)
    assert ("form_answer_groups", "FormAnswerGroup") in reached
