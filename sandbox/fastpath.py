"""A specialised executor for plain read queries over the subset schema.

graphql-core resolves every field through a general machinery (paths, info objects, error
boundaries, awaitable checks) that costs ~60 ms for the engine's 100-alias entry batch. The
sandbox's schema has no interfaces or unions, so a query's shape is known once it is
parsed: :func:`compile_query` turns an operation into a tree of plain closures, cached with
the parsed document, that read attributes and call the same resolvers graphql-core would.

Anything unusual is left to graphql-core, which stays the reference:

* at compile time (:class:`Unsupported`): mutations and subscriptions, directives,
  introspection, abstract types, fragment arguments;
* at run time (:class:`Bail`): any error at all (a resolver raising, a null in a non-null
  position, a value a scalar cannot represent, invalid variables). The caller then runs the
  query again through graphql-core, which produces the exact errors and partial data. Read
  resolvers have no side effects beyond generating patients, which is deterministic.

``tests/test_sandbox_fastpath.py`` checks that both produce identical JSON on many random
queries and batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLEnumType,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
)
from graphql.execution.values import VariableValues, get_argument_values, get_variable_values

Complete = Callable[[Any, "_Info"], Any]


class Unsupported(Exception):  # noqa: N818 - a verdict, not a failure
    """The operation uses something the fast path does not handle; use graphql-core."""


class Bail(Exception):  # noqa: N818 - a verdict, not a failure
    """Something went wrong while executing; run the query through graphql-core instead."""


@dataclass(slots=True)
class _Info:
    """What the sandbox's resolvers read from graphql-core's ``GraphQLResolveInfo``."""

    context: Any
    variables: VariableValues | None


@dataclass(frozen=True, slots=True)
class _Field:
    key: str
    name: str
    definition: GraphQLField
    node: FieldNode
    static_args: dict[str, Any] | None  # None: the arguments use variables
    complete: Complete


class Plan:
    """A compiled query operation; :meth:`execute` returns the ``data`` dict or raises
    :class:`Bail`."""

    def __init__(self, operation: OperationDefinitionNode, fields: list[_Field]) -> None:
        self._operation = operation
        self._fields = fields

    def execute(self, schema: GraphQLSchema, context: Any, variables: dict[str, Any] | None) -> Any:
        """Run the plan against ``context`` (the sandbox)."""
        coerced = get_variable_values(
            schema, self._operation.variable_definitions or (), variables or {}
        )
        if isinstance(coerced, list):
            raise Bail("invalid variables")
        info = _Info(context, coerced)
        return _object(self._fields)(None, info)


def compile_query(
    schema: GraphQLSchema, document: DocumentNode, operation: OperationDefinitionNode
) -> Plan:
    """Compile ``operation`` of an already validated ``document``; raises Unsupported."""
    if operation.operation is not OperationType.QUERY or operation.directives:
        raise Unsupported("only plain queries")
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    for fragment in fragments.values():
        if fragment.directives or getattr(fragment, "variable_definitions", None):
            raise Unsupported("fragment directives or arguments")
    root = schema.query_type
    assert root is not None
    return Plan(operation, _fields(schema, root, [operation.selection_set], fragments))


def _collect(
    owner: GraphQLObjectType,
    selection_sets: list[SelectionSetNode],
    fragments: dict[str, FragmentDefinitionNode],
) -> dict[str, list[FieldNode]]:
    """Field nodes by response key, in first-seen order (GraphQL's CollectFields)."""
    out: dict[str, list[FieldNode]] = {}

    def visit(selection_set: SelectionSetNode, seen: set[str]) -> None:
        for sel in selection_set.selections:
            if sel.directives:
                raise Unsupported("directives")
            if isinstance(sel, FieldNode):
                key = sel.alias.value if sel.alias else sel.name.value
                out.setdefault(key, []).append(sel)
            elif isinstance(sel, InlineFragmentNode):
                condition = sel.type_condition
                if condition is None or condition.name.value == owner.name:
                    visit(sel.selection_set, seen)
                else:
                    raise Unsupported("type condition on another type")
            elif isinstance(sel, FragmentSpreadNode):
                if getattr(sel, "arguments", None):
                    raise Unsupported("fragment arguments")
                name = sel.name.value
                if name in seen:
                    continue
                seen.add(name)
                fragment = fragments[name]
                if fragment.type_condition.name.value != owner.name:
                    raise Unsupported("type condition on another type")
                visit(fragment.selection_set, seen)

    seen: set[str] = set()
    for selection_set in selection_sets:
        visit(selection_set, seen)
    return out


def _fields(
    schema: GraphQLSchema,
    owner: GraphQLObjectType,
    selection_sets: list[SelectionSetNode],
    fragments: dict[str, FragmentDefinitionNode],
) -> list[_Field]:
    out = []
    for key, nodes in _collect(owner, selection_sets, fragments).items():
        name = nodes[0].name.value
        if name.startswith("__"):
            if name != "__typename":
                raise Unsupported("introspection")
            definition = GraphQLField(GraphQLNonNull(schema.type_map["String"]))  # type: ignore[arg-type]
            out.append(_Field(key, name, definition, nodes[0], {}, _constant(owner.name)))
            continue
        definition = owner.fields[name]
        static: dict[str, Any] | None = {}
        if definition.args:
            if not _uses_variables(nodes[0]):
                static = get_argument_values(definition, nodes[0])
            else:
                static = None
        subsets = [n.selection_set for n in nodes if n.selection_set is not None]
        complete = _completer(schema, definition.type, subsets, fragments)
        out.append(_Field(key, name, definition, nodes[0], static, complete))
    return out


def _constant(value: str) -> Complete:
    return lambda _value, _info: value


def _uses_variables(node: FieldNode) -> bool:
    found = False

    def walk(value: Any) -> None:
        nonlocal found
        if isinstance(value, VariableNode):
            found = True
        for attr in ("values", "fields"):
            for child in getattr(value, attr, None) or ():
                walk(getattr(child, "value", child))

    for arg in node.arguments or ():
        walk(arg.value)
    return found


def _completer(
    schema: GraphQLSchema,
    type_: GraphQLOutputType,
    subsets: list[SelectionSetNode],
    fragments: dict[str, FragmentDefinitionNode],
) -> Complete:
    if isinstance(type_, GraphQLNonNull):
        inner = _completer(schema, type_.of_type, subsets, fragments)

        def non_null(value: Any, info: _Info) -> Any:
            if value is None:
                raise Bail("null in a non-null position")
            return inner(value, info)

        return non_null
    if isinstance(type_, GraphQLList):
        item = _completer(schema, type_.of_type, subsets, fragments)

        def as_list(value: Any, info: _Info) -> Any:
            if value is None:
                return None
            if not isinstance(value, list | tuple):
                raise Bail("not a list")
            return [item(v, info) for v in value]

        return as_list
    if isinstance(type_, GraphQLScalarType | GraphQLEnumType):
        return _leaf(type_)
    if isinstance(type_, GraphQLObjectType):
        fields = _object(_fields(schema, type_, subsets, fragments))
        return lambda value, info: None if value is None else fields(value, info)
    raise Unsupported(f"abstract type {type_}")


def _leaf(type_: GraphQLScalarType | GraphQLEnumType) -> Complete:
    coerce = type_.coerce_output_value
    plain_strings = type_.name in ("String", "ID")

    def leaf(value: Any, _info: _Info) -> Any:
        if value is None:
            return None
        if plain_strings and type(value) is str:
            return value
        try:
            coerced = coerce(value)
        except Exception as exc:  # noqa: BLE001 - any failure means graphql-core reports it
            raise Bail("leaf coercion") from exc
        if coerced is None:
            raise Bail("leaf coerced to null")
        return coerced

    return leaf


def _object(fields: list[_Field]) -> Complete:
    resolved = [(f, f.definition.resolve) for f in fields]

    def complete(source: Any, info: _Info) -> Any:
        out: dict[str, Any] = {}
        for field, resolve in resolved:
            try:
                args = field.static_args
                if args is None:
                    args = get_argument_values(field.definition, field.node, info.variables)
                if resolve is not None:
                    value = resolve(source, info, **args)
                else:
                    value = (
                        source.get(field.name)
                        if isinstance(source, Mapping)
                        else getattr(source, field.name, None)
                    )
                    if callable(value):
                        value = value(info, **args)
            except Bail:
                raise
            except Exception as exc:  # noqa: BLE001 - graphql-core reports resolver errors
                raise Bail(f"resolver {field.name}") from exc
            out[field.key] = field.complete(value, info)
        return out

    return complete
