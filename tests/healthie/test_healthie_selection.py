"""Entry selection from config: built from the committed fragment, checked against a schema."""

from __future__ import annotations

import json

import httpx2
import pytest
from graphql import FieldNode, FragmentDefinitionNode, FragmentSpreadNode, parse, print_ast

from app.core.errors import ConfigurationError
from app.healthie import operations
from app.healthie.selection import build_entry_fragment, is_excluded, schema_from_file
from sandbox.executable import SCHEMA_PATH
from tests.healthie.test_client import entries_handler, make


@pytest.fixture(scope="module")
def sandbox_schema():
    return schema_from_file(SCHEMA_PATH)


def _top_fields(text: str) -> list[str]:
    (entry,) = [
        d
        for d in parse(text).definitions
        if isinstance(d, FragmentDefinitionNode) and d.name.value == "PatientEntry"
    ]
    names = []
    for s in entry.selection_set.selections:
        assert isinstance(s, FieldNode | FragmentSpreadNode)  # an inline fragment has no name
        names.append(s.name.value)
    return names


def test_no_changes_gives_the_committed_selection(sandbox_schema):
    built = build_entry_fragment(sandbox_schema)
    assert print_ast(parse(built)) == print_ast(parse(operations.load("entry")))


def test_exclusions_drop_fields_and_fragments_left_unused(sandbox_schema):
    built = build_entry_fragment(
        sandbox_schema, exclude_fields=["appointments", "upcoming_appointments", "metadata"]
    )
    fields = _top_fields(built)
    assert "appointments" not in fields
    assert "metadata" not in fields
    assert "id" in fields
    assert "EntryAppointment" not in built  # otherwise "fragment never used" at Healthie


def test_extra_selection_is_added_and_validated(healthie_schema):
    built = build_entry_fragment(
        healthie_schema, extra_selection="height  active_tags { id created_at }"
    )
    assert _top_fields(built)[-2:] == ["height", "active_tags"]


@pytest.mark.parametrize(
    ("extra", "exclude", "message"),
    [
        ("form_answer_groups { id }", (), "PatientEntry.form_answer_groups (FormAnswerGroup)"),
        ("... on User { form_answer_groups { id } }", (), "PatientEntry.form_answer_groups"),
        ("no_such_field", (), "Cannot query field 'no_such_field'"),
        ("dob {", (), "does not parse"),
        (None, ("id",), "cannot drop 'id'"),
        (None, ("not_selected",), "['not_selected']"),
    ],
)
def test_refusals_name_the_problem(healthie_schema, extra, exclude, message):
    with pytest.raises(ConfigurationError) as caught:
        build_entry_fragment(healthie_schema, extra_selection=extra, exclude_fields=exclude)
    assert message in str(caught.value)


def test_nested_forbidden_types_are_found_by_path(healthie_schema):
    with pytest.raises(ConfigurationError, match=r"PatientEntry\.appointments\.\w*") as caught:
        build_entry_fragment(
            healthie_schema, extra_selection="appointments { id form_answer_group { id } }"
        )
    assert "FormAnswerGroup" in str(caught.value)


def test_the_sandbox_subset_refuses_what_it_does_not_serve(sandbox_schema):
    with pytest.raises(ConfigurationError, match="height"):
        build_entry_fragment(sandbox_schema, extra_selection="height")


def test_excluded_type_names():
    assert is_excluded("ChartingNoteAddendum")
    assert is_excluded("Note")
    assert not is_excluded("User")
    assert not is_excluded("Notification")


def test_the_client_sends_the_configured_fragment(sandbox_schema):
    fragment = build_entry_fragment(sandbox_schema, exclude_fields=["policies", "billing_items"])
    seen: list[httpx2.Request] = []
    client = make(entries_handler(seen), entry_fragment=fragment)
    client.fetch_entries(["1", "2"])
    query = json.loads(seen[0].content)["query"]
    assert "policies" not in query
    assert "p1: user(id: $id1)" in query
    assert client.entry_cost < 97  # fewer fields, smaller estimate, bigger batches
