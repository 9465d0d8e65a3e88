"""The shape of one patient entry as an integration selects it, for typing plan paths.

The ``PatientEntry`` fragment (``app/healthie/operations/entry.graphql``), with the
integration's ``entry_exclude_fields`` dropped and ``entry_extra_selection`` added, walked
into ``app.agent.plan_paths`` shapes: with a GraphQL schema each field gets its type (list,
object, scalar, enum; non-null unwrapped); without one only the selection's nesting is known.
Fragments are followed by name, inline fragments merged, aliases used as the keys an entry has.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLList,
    GraphQLNonNull,
    GraphQLSchema,
    InlineFragmentNode,
    SelectionSetNode,
    is_enum_type,
    is_leaf_type,
    parse,
)

from app.agent.plan_paths import Either, Leaf, Lst, Obj, Shape, Unknown
from app.healthie import operations
from app.healthie.selection import ENTRY_FRAGMENT

BUILTIN_SCALARS = frozenset({"String", "Int", "Float", "Boolean", "ID"})


def entry_shape(
    schema: GraphQLSchema | None,
    *,
    extra_selection: str | None = None,
    exclude_fields: Iterable[str] = (),
    base: str | None = None,
) -> Obj:
    """The shape of one patient entry as the integration selects it (see the module
    docstring). Raises GraphQLError when the base or extra selection does not parse; whether
    the selection validates is ``selection.build_entry_fragment``'s job."""
    document = parse(base if base is not None else operations.load("entry"))
    fragments = _fragments(document)
    user = schema.get_type("User") if schema is not None else None
    builder = _ShapeBuilder(schema, fragments)
    fields = builder.collect(fragments[ENTRY_FRAGMENT].selection_set, user)
    for name in exclude_fields:
        fields.pop(name, None)
    if extra_selection and extra_selection.strip():
        extra = parse(f"fragment Extra on User {{ {extra_selection} }}")
        for key, shape in builder.collect(_fragments(extra)["Extra"].selection_set, user).items():
            fields[key] = _merge(fields.get(key), shape)
    # fields the engine adds to the last entry of a patient Healthie no longer has
    # (workers/pipeline.gone_entry): the rules decide once more on it
    fields.setdefault("merged_into", Leaf("ID"))
    fields.setdefault("deleted", Leaf("Boolean"))
    return Obj("User", fields)


def _fragments(document: DocumentNode) -> dict[str, FragmentDefinitionNode]:
    return {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}


def _merge(old: Shape | None, new: Shape) -> Shape:
    """A field selected twice (directly and through a fragment) has both sub-selections."""
    if isinstance(old, Obj) and isinstance(new, Obj):
        merged = dict(old.fields)
        for key, shape in new.fields.items():
            merged[key] = _merge(merged.get(key), shape)
        return Obj(new.name, merged)
    if isinstance(old, Lst) and isinstance(new, Lst):
        return Lst(_merge(old.item, new.item))
    if isinstance(old, Either) and isinstance(new, Either):
        item = _merge(old.item, new.item)
        return Either(item) if isinstance(item, Obj | Leaf) else new
    return new


@dataclass
class _ShapeBuilder:
    schema: GraphQLSchema | None
    fragments: dict[str, FragmentDefinitionNode]
    _seen: set[str] = field(default_factory=set)

    def collect(self, selection_set: SelectionSetNode, parent: Any) -> dict[str, Shape]:
        fields: dict[str, Shape] = {}
        for sel in selection_set.selections:
            if isinstance(sel, FieldNode):
                key = (sel.alias or sel.name).value
                fields[key] = _merge(fields.get(key), self.field(sel, parent))
                continue
            if isinstance(sel, FragmentSpreadNode):
                fragment = self.fragments.get(sel.name.value)
                if fragment is None or sel.name.value in self._seen:
                    continue
                self._seen.add(sel.name.value)
                inner = self.collect(fragment.selection_set, self._type(fragment, parent))
                self._seen.discard(sel.name.value)
            elif isinstance(sel, InlineFragmentNode):
                inner = self.collect(sel.selection_set, self._type(sel, parent))
            else:  # pragma: no cover - graphql-core has no other selection kinds
                continue
            for key, shape in inner.items():
                fields[key] = _merge(fields.get(key), shape)
        return fields

    def _type(self, node: FragmentDefinitionNode | InlineFragmentNode, parent: Any) -> Any:
        if self.schema is None or node.type_condition is None:
            return parent
        return self.schema.get_type(node.type_condition.name.value) or parent

    def field(self, node: FieldNode, parent: Any) -> Shape:
        name = node.name.value
        if name == "__typename":
            return Leaf("String")
        if self.schema is None:
            if node.selection_set is None:
                return Either(Leaf("scalar"))
            return Either(Obj(name, self.collect(node.selection_set, None)))
        definition = getattr(parent, "fields", {}).get(name)
        if definition is None:  # the selection's validation reports it; nothing to type here
            return Unknown(f"{getattr(parent, 'name', '?')} has no field {name!r} in the schema")
        return self._wrap(definition.type, node)

    def _wrap(self, gtype: Any, node: FieldNode) -> Shape:
        if isinstance(gtype, GraphQLNonNull):
            return self._wrap(gtype.of_type, node)
        if isinstance(gtype, GraphQLList):
            return Lst(self._wrap(gtype.of_type, node))
        if is_leaf_type(gtype):
            opaque = not is_enum_type(gtype) and gtype.name not in BUILTIN_SCALARS
            return Leaf(gtype.name, opaque=opaque)
        fields = self.collect(node.selection_set, gtype) if node.selection_set else {}
        return Obj(gtype.name, fields)
