"""Estimate a request's query complexity the way Healthie's rate-limit guide describes.

Healthie caps a request at :data:`MAX_COMPLEXITY` (2000) points. The guide's rules:

* every selected field costs 1 for each object it is selected on;
* inside a connection field (``users(first: 3)``) the fields below ``nodes``/``edges`` are
  selected on ``first``/``last`` objects, or on 100 when no page size is given;
* plain lists (``appointments { id }`` on a user) are not multiplied.

So ``users(first: 3) { nodes { id appointments { id notes } } }`` scores 1 + 1 + 3·(1 + 1 +
1 + 1) = 14, and 402 without ``first: 3``. Healthie also says field costs vary "based on their
type", so the estimate is a planning figure: the client sizes batches with it, and still
splits a batch when Healthie answers :func:`parse_complexity_error`'s message.

With a schema, a field is a connection when its type has ``nodes`` or ``edges``; without
one, when it takes ``first``/``last`` or selects ``nodes``/``edges``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)

MAX_COMPLEXITY = 2000
MAX_DEPTH = 25
DEFAULT_PAGE_SIZE = 100
_PAGED = ("nodes", "edges")

_COMPLEXITY_ERROR = re.compile(
    r"Query has complexity of (\d+), which exceeds max complexity of (\d+)"
)


@dataclass(frozen=True)
class ComplexityError:
    """What Healthie reported: the request's real score and the cap."""

    score: int
    limit: int


def parse_complexity_error(message: str) -> ComplexityError | None:
    """The score and cap in Healthie's complexity refusal, or None for any other message."""
    match = _COMPLEXITY_ERROR.search(message)
    return ComplexityError(int(match[1]), int(match[2])) if match else None


def estimate(
    document: DocumentNode,
    variables: dict[str, Any] | None = None,
    operation_name: str | None = None,
    schema: GraphQLSchema | None = None,
) -> int:
    """Score the operation ``operation_name`` (or the first) of ``document``; 0 if none."""
    walker = _Walker(document, variables or {}, schema)
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode) and (
            operation_name is None
            or (definition.name is not None and definition.name.value == operation_name)
        ):
            root = None
            if schema is not None:
                root = schema.get_root_type(definition.operation)
            return walker.score(definition.selection_set, 1, root, None)
    return 0


class _Walker:
    def __init__(
        self, document: DocumentNode, variables: dict[str, Any], schema: GraphQLSchema | None
    ) -> None:
        self.fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self.variables = variables
        self.schema = schema

    def score(
        self,
        selection_set: SelectionSetNode | None,
        mult: int,
        parent: GraphQLObjectType | None,
        page: int | None,
        seen: frozenset[str] = frozenset(),
    ) -> int:
        """Cost of ``selection_set`` selected on ``mult`` objects of type ``parent``.

        ``page`` is set when the selection set belongs to a connection of that page size.
        """
        if selection_set is None:
            return 0
        total = 0
        for sel in selection_set.selections:
            if isinstance(sel, FragmentSpreadNode):
                name = sel.name.value
                frag = self.fragments.get(name)
                if frag is not None and name not in seen:
                    inner = self._type(frag.type_condition.name.value) or parent
                    total += self.score(frag.selection_set, mult, inner, page, seen | {name})
            elif isinstance(sel, InlineFragmentNode):
                cond = sel.type_condition
                inner = (self._type(cond.name.value) if cond else None) or parent
                total += self.score(sel.selection_set, mult, inner, page, seen)
            elif isinstance(sel, FieldNode):
                total += mult
                child_type = self._field_type(parent, sel.name.value)
                child_mult = mult * page if page is not None and sel.name.value in _PAGED else mult
                child_page = self._page(sel, child_type)
                total += self.score(sel.selection_set, child_mult, child_type, child_page, seen)
        return total

    def _type(self, name: str) -> GraphQLObjectType | None:
        if self.schema is None:
            return None
        named = self.schema.get_type(name)
        return named if isinstance(named, GraphQLObjectType) else None

    def _field_type(self, parent: GraphQLObjectType | None, name: str) -> GraphQLObjectType | None:
        if parent is None or name not in parent.fields:
            return None
        named = get_named_type(parent.fields[name].type)
        return named if isinstance(named, GraphQLObjectType) else None

    def _page(self, node: FieldNode, field_type: GraphQLObjectType | None) -> int | None:
        """The page size if ``node`` is a connection field, else None."""
        size: int | None = None
        sized = False
        for arg in node.arguments or ():
            if arg.name.value not in ("first", "last"):
                continue
            if isinstance(arg.value, IntValueNode):
                size, sized = int(arg.value.value), True
            elif isinstance(arg.value, VariableNode):
                value = self.variables.get(arg.value.name.value)
                if value is not None:
                    size, sized = int(value), True
        if field_type is not None:
            is_connection = any(f in field_type.fields for f in _PAGED)
        else:
            selected = {
                s.name.value
                for s in (node.selection_set.selections if node.selection_set else ())
                if isinstance(s, FieldNode)
            }
            is_connection = sized or bool(selected & set(_PAGED))
        if not is_connection:
            return None
        return size if size is not None else DEFAULT_PAGE_SIZE


def depth(document: DocumentNode) -> int:
    """Nesting depth as the guide counts it (root fields are at depth 1; fragments inlined)."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }

    def walk(selection_set: SelectionSetNode | None, level: int, seen: frozenset[str]) -> int:
        if selection_set is None:
            return level - 1
        deepest = level - 1
        for sel in selection_set.selections:
            if isinstance(sel, FieldNode):
                deepest = max(
                    deepest,
                    walk(sel.selection_set, level + 1, seen) if sel.selection_set else level,
                )
            elif isinstance(sel, InlineFragmentNode):
                deepest = max(deepest, walk(sel.selection_set, level, seen))
            elif isinstance(sel, FragmentSpreadNode) and sel.name.value not in seen:
                frag = fragments.get(sel.name.value)
                if frag is not None:
                    deepest = max(deepest, walk(frag.selection_set, level, seen | {sel.name.value}))
        return deepest

    ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    return max((walk(op.selection_set, 1, frozenset()) for op in ops), default=0)
