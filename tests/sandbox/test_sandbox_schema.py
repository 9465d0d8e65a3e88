"""Contract: the sandbox's schema subset is a faithful slice of Healthie's published schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLObjectType,
    GraphQLSchema,
    build_schema,
    parse,
    print_ast,
    validate,
)

from sandbox.executable import SCHEMA_PATH
from sandbox.subset import FRAGMENT_FILE_RULES, SANDBOX_SURFACE, build_subset, engine_operations

SHARED = Path(__file__).resolve().parents[3] / "shared"
SHARED_SCHEMA = SHARED / "healthie" / "schema.graphql"


@pytest.fixture(scope="module")
def shared_sdl() -> str:
    if not SHARED_SCHEMA.exists():
        pytest.skip(f"Healthie's schema not found at {SHARED_SCHEMA} (../shared beside the repo)")
    return SHARED_SCHEMA.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def shared(shared_sdl: str) -> GraphQLSchema:
    return build_schema(shared_sdl)


@pytest.fixture(scope="module")
def subset() -> GraphQLSchema:
    return build_schema(SCHEMA_PATH.read_text(encoding="utf-8"))


def _default(value: object) -> object:
    return value if value is None or isinstance(value, str | int | float | bool) else repr(value)


@pytest.mark.shared
def test_every_declaration_matches_the_shared_schema(
    shared: GraphQLSchema, subset: GraphQLSchema
) -> None:
    for name, kept in subset.type_map.items():
        if name.startswith("__"):
            continue
        real = shared.type_map.get(name)
        assert real is not None, f"{name} is not in Healthie's schema"
        assert type(real) is type(kept), name
        if isinstance(kept, GraphQLObjectType):
            assert isinstance(real, GraphQLObjectType)
            assert [i.name for i in kept.interfaces] == [i.name for i in real.interfaces]
            for fname, field in kept.fields.items():
                assert fname in real.fields, f"{name}.{fname} does not exist at Healthie"
                rfield = real.fields[fname]
                assert str(field.type) == str(rfield.type), f"{name}.{fname}"
                assert field.deprecation_reason == rfield.deprecation_reason, f"{name}.{fname}"
                for aname, arg in field.args.items():
                    rarg = rfield.args.get(aname)
                    assert rarg is not None, f"{name}.{fname}({aname}) does not exist"
                    assert str(arg.type) == str(rarg.type), f"{name}.{fname}({aname})"
                    assert _default(arg.default_value) == _default(rarg.default_value)
                required = {
                    a
                    for a, d in rfield.args.items()
                    if str(d.type).endswith("!") and d.default_value is None
                }
                assert required <= set(field.args), f"{name}.{fname} dropped a required arg"
        elif isinstance(kept, GraphQLInputObjectType):
            assert isinstance(real, GraphQLInputObjectType)
            for fname, field in kept.fields.items():
                assert fname in real.fields, f"{name}.{fname}"
                assert str(field.type) == str(real.fields[fname].type), f"{name}.{fname}"
                assert _default(field.default_value) == _default(real.fields[fname].default_value)
            required = {f for f, d in real.fields.items() if str(d.type).endswith("!")}
            assert required <= set(kept.fields), f"{name} dropped a required input field"
        elif isinstance(kept, GraphQLEnumType):
            assert isinstance(real, GraphQLEnumType)
            assert list(kept.values) == list(real.values), name


@pytest.mark.shared
def test_committed_subset_is_what_the_generator_writes(shared_sdl: str) -> None:
    generated = build_subset(shared_sdl, [*engine_operations(), parse(SANDBOX_SURFACE)])
    assert SCHEMA_PATH.read_text(encoding="utf-8") == generated, (
        "sandbox/schema.graphql is stale: run "
        "python -m sandbox.subset --shared ../shared/healthie/schema.graphql"
    )


def test_engine_operations_validate_against_the_subset(subset: GraphQLSchema) -> None:
    documents = engine_operations()
    assert documents, "no operations found in app/healthie/operations"
    for doc in documents:
        assert validate(subset, doc, FRAGMENT_FILE_RULES) == [], print_ast(doc)[:200]
    # The aliased batch the engine builds from the entry fragment.
    fragments = "\n".join(print_ast(d) for d in documents)
    batch = parse(
        "query Entries($id0: ID, $id1: ID) { p0: user(id: $id0) { ...PatientEntry } "
        "p1: user(id: $id1) { ...PatientEntry } "
        "a0: appointment(id: $id0, include_deleted: true) { ...EntryAppointment } }\n"
        + fragments.replace("query AppointmentPatients", "query _Unused")
    )
    errors = [e for e in validate(subset, batch) if "never used" not in e.message]
    assert errors == []


def test_sandbox_surface_validates_against_the_subset(subset: GraphQLSchema) -> None:
    assert validate(subset, parse(SANDBOX_SURFACE)) == []
