"""The subset schema shipped in the package, with every resolver attached."""

from __future__ import annotations

from pathlib import Path

from graphql import GraphQLObjectType, GraphQLSchema, build_schema

from sandbox.mutations import MUTATION_RESOLVERS
from sandbox.resolvers import READ_RESOLVERS

# Beside this module, shipped as package data (pyproject includes *.graphql).
SCHEMA_PATH = Path(__file__).resolve().with_name("schema.graphql")


def build_executable_schema() -> GraphQLSchema:
    """Build ``sandbox/schema.graphql`` and attach the read and mutation resolvers.

    Raises ``KeyError`` if a resolver names a field the subset does not declare, so the
    resolvers and the generated schema cannot drift apart silently.
    """
    sdl = SCHEMA_PATH.read_text(encoding="utf-8")
    schema = build_schema(sdl)
    for (type_name, field_name), fn in {**READ_RESOLVERS, **MUTATION_RESOLVERS}.items():
        owner = schema.type_map[type_name]
        assert isinstance(owner, GraphQLObjectType)
        owner.fields[field_name].resolve = fn
    return schema
