"""Query complexity scored the way Healthie's rate-limit guide describes.

Every selected field costs 1 times the number of objects it is selected on; inside a
connection field (``users(first: 3)``), fields below ``nodes``/``edges`` are selected on
``first``/``last`` objects (100 when neither is given). Plain lists are not multiplied.
The guide's example, ``users(first: 3) { nodes { id appointments { id notes } } }``,
scores 14.
"""

from __future__ import annotations

from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
)

DEFAULT_PAGE = 100


def complexity(
    document: DocumentNode,
    variables: dict[str, Any] | None = None,
    operation_name: str | None = None,
) -> int:
    """Score the operation ``operation_name`` (or the only one) of ``document``."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    chosen = next(
        (
            o
            for o in operations
            if operation_name is None or (o.name and o.name.value == operation_name)
        ),
        None,
    )
    if chosen is None:
        return 0
    return _score(chosen.selection_set, 1, fragments, variables or {}, False)


def _page(node: FieldNode, variables: dict[str, Any]) -> int | None:
    for arg in node.arguments or ():
        if arg.name.value in ("first", "last"):
            if isinstance(arg.value, IntValueNode):
                return int(arg.value.value)
            if isinstance(arg.value, VariableNode):
                value = variables.get(arg.value.name.value)
                return int(value) if value is not None else None
    return None


def _score(
    selection_set: SelectionSetNode | None,
    mult: int,
    fragments: dict[str, FragmentDefinitionNode],
    variables: dict[str, Any],
    in_connection: bool,
    page: int = DEFAULT_PAGE,
) -> int:
    if selection_set is None:
        return 0
    total = 0
    for sel in selection_set.selections:
        if isinstance(sel, FragmentSpreadNode):
            frag = fragments.get(sel.name.value)
            if frag is not None:
                total += _score(frag.selection_set, mult, fragments, variables, in_connection, page)
        elif isinstance(sel, InlineFragmentNode):
            total += _score(sel.selection_set, mult, fragments, variables, in_connection, page)
        elif isinstance(sel, FieldNode):
            total += mult
            child_mult = (
                mult * page if in_connection and sel.name.value in ("nodes", "edges") else mult
            )
            size = _page(sel, variables)
            is_conn = size is not None or sel.name.value in ("users", "appointments_connection")
            total += _score(
                sel.selection_set, child_mult, fragments, variables, is_conn, size or DEFAULT_PAGE
            )
    return total
