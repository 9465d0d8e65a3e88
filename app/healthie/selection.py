"""What the entry selects: the PatientEntry fragment, adjusted per integration and proven safe.

An entry never reaches session notes or clinical documentation. :func:`reached_types` walks a
document against a schema and lists every (field path, type) it selects;
:func:`forbidden_selections` keeps those whose type is excluded (:data:`EXCLUDED_TYPES`, or any
charting-note type). Production (:func:`build_entry_fragment`, run when an integration's
client is built) and the contract tests share this walk.

:func:`build_entry_fragment` starts from the committed fragment
(``operations/entry.graphql``), drops ``exclude_fields`` (top-level fields of PatientEntry),
adds ``extra_selection`` (GraphQL selection text, e.g. ``"gender_identity emergency_contacts
{ id name }"``), then refuses with a ConfigurationError anything that does not validate against
the schema or that reaches an excluded type, naming the field path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    NoUnusedFragmentsRule,
    SelectionSetNode,
    TypeInfo,
    TypeInfoVisitor,
    Visitor,
    build_schema,
    get_named_type,
    is_abstract_type,
    parse,
    print_ast,
    specified_rules,
    validate,
    visit,
)

from app.core.errors import ConfigurationError
from app.healthie import operations

#: Types an entry must never select (session notes and clinical documentation).
EXCLUDED_TYPES = frozenset(
    {"FormAnswerGroup", "FormAnswer", "Note", "Conversation", "Document", "Comment"}
)

ENTRY_FRAGMENT = "PatientEntry"

#: Validation rules for documents that hold only fragments (spread into queries at run time).
FRAGMENT_RULES = tuple(r for r in specified_rules if r is not NoUnusedFragmentsRule)


def is_excluded(type_name: str) -> bool:
    """Whether an entry may never select a value of type ``type_name``."""
    lowered = type_name.lower()
    return type_name in EXCLUDED_TYPES or any(
        marker in lowered for marker in ("chartingnote", "charting_note", "chart_note")
    )


@dataclass(frozen=True)
class Reached:
    """One selected field: its path (``PatientEntry.appointments.provider``) and type names.

    ``types`` is the field's named type and, for interfaces and unions, every possible type.
    """

    path: str
    field: str
    types: tuple[str, ...]


def reached_types(schema: GraphQLSchema, document: DocumentNode | str) -> list[Reached]:
    """Every field ``document`` selects, walked against ``schema`` (fragments by name)."""
    doc = parse(document) if isinstance(document, str) else document
    type_info = TypeInfo(schema)
    reached: list[Reached] = []
    path: list[str] = []

    class Collect(Visitor):
        def enter_operation_definition(self, node, *_):  # type: ignore[no-untyped-def]
            path.append(node.name.value if node.name else "query")

        def leave_operation_definition(self, *_):  # type: ignore[no-untyped-def]
            path.pop()

        def enter_fragment_definition(self, node, *_):  # type: ignore[no-untyped-def]
            path.append(node.name.value)

        def leave_fragment_definition(self, *_):  # type: ignore[no-untyped-def]
            path.pop()

        def enter_field(self, node, *_):  # type: ignore[no-untyped-def]
            path.append(node.name.value)
            field_type = type_info.get_type()
            if field_type is None:
                return
            named = get_named_type(field_type)
            names = [named.name]
            if is_abstract_type(named):
                names += [t.name for t in schema.get_possible_types(named)]
            reached.append(Reached(".".join(path), node.name.value, tuple(names)))

        def leave_field(self, *_):  # type: ignore[no-untyped-def]
            path.pop()

    visit(doc, TypeInfoVisitor(type_info, Collect()))
    return reached


def forbidden_selections(schema: GraphQLSchema, document: DocumentNode | str) -> list[Reached]:
    """The selections of ``document`` that reach an excluded type."""
    return [r for r in reached_types(schema, document) if any(is_excluded(t) for t in r.types)]


def schema_from_file(path: Path) -> GraphQLSchema:
    """A schema from SDL on disk (the sandbox subset, or a saved copy of Healthie's)."""
    try:
        return build_schema(path.read_text(encoding="utf-8"))
    except (OSError, GraphQLError, TypeError) as exc:
        raise ConfigurationError(f"cannot load GraphQL schema {path}: {exc}") from exc


def check_entry_fragment(schema: GraphQLSchema, fragment_text: str) -> None:
    """Validate fragment text (PatientEntry and its helpers) as the batched entries query
    would send it; ConfigurationError naming every problem and forbidden field path."""
    query = "query EntryCheck($id0: ID) { p0: user(id: $id0) { ...PatientEntry } }\n"
    try:
        document = parse(query + fragment_text)
    except GraphQLError as exc:
        raise ConfigurationError(f"entry selection does not parse: {exc.message}") from exc
    errors = validate(schema, document)
    if errors:
        problems = "; ".join(e.message for e in errors)
        raise ConfigurationError(f"entry selection does not validate: {problems}")
    forbidden = forbidden_selections(schema, document)
    if forbidden:
        paths = ", ".join(f"{r.path} ({'/'.join(r.types)})" for r in forbidden)
        raise ConfigurationError(
            f"entry selection reaches session notes or clinical documentation: {paths}"
        )


def build_entry_fragment(
    schema: GraphQLSchema,
    extra_selection: str | None = None,
    exclude_fields: Iterable[str] = (),
    base: str | None = None,
) -> str:
    """The PatientEntry fragment text for one integration, checked against ``schema``.

    ``base`` defaults to the committed ``operations/entry.graphql``. Raises
    ConfigurationError for an unknown excluded field, ``id``, a selection that does not parse
    or validate, or one that reaches an excluded type (the message names the path).
    """
    document = parse(base if base is not None else operations.load("entry"))
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    entry = fragments.get(ENTRY_FRAGMENT)
    if entry is None:
        raise ConfigurationError(f"the base entry selection has no fragment {ENTRY_FRAGMENT}")
    selections = list(entry.selection_set.selections)
    top = {s.name.value for s in selections if isinstance(s, FieldNode)}
    excluded = set(exclude_fields)
    if "id" in excluded:
        raise ConfigurationError("healthie.entry_exclude_fields cannot drop 'id'")
    unknown = sorted(excluded - top)
    if unknown:
        raise ConfigurationError(
            f"healthie.entry_exclude_fields names fields the entry does not select: {unknown}"
        )
    selections = [
        s for s in selections if not (isinstance(s, FieldNode) and s.name.value in excluded)
    ]
    if extra_selection and extra_selection.strip():
        try:
            extra = parse(f"fragment Extra on User {{ {extra_selection} }}")
        except GraphQLError as exc:
            raise ConfigurationError(
                f"healthie.entry_extra_selection does not parse: {exc.message}"
            ) from exc
        (extra_fragment,) = extra.definitions
        assert isinstance(extra_fragment, FragmentDefinitionNode)
        selections += list(extra_fragment.selection_set.selections)
    new_entry = FragmentDefinitionNode(
        name=entry.name,
        type_condition=entry.type_condition,
        directives=entry.directives,
        variable_definitions=entry.variable_definitions,
        selection_set=SelectionSetNode(selections=tuple(selections)),
    )
    fragments[ENTRY_FRAGMENT] = new_entry
    used = _reachable(ENTRY_FRAGMENT, fragments)
    text = "\n\n".join(print_ast(fragments[name]) for name in fragments if name in used) + "\n"
    check_entry_fragment(schema, text)
    return text


def _reachable(start: str, fragments: dict[str, FragmentDefinitionNode]) -> set[str]:
    """Fragment names spread (transitively) from ``start``, itself included."""
    found: set[str] = set()
    pending = [start]
    while pending:
        name = pending.pop()
        if name in found or name not in fragments:
            continue
        found.add(name)
        stack: list[SelectionSetNode] = [fragments[name].selection_set]
        while stack:
            for sel in stack.pop().selections:
                if isinstance(sel, FragmentSpreadNode):
                    pending.append(sel.name.value)
                elif isinstance(sel, FieldNode | InlineFragmentNode) and sel.selection_set:
                    stack.append(sel.selection_set)
    return found


def validate_fragment_file(schema: GraphQLSchema, text: str) -> list[str]:
    """Validation messages for one operations file (unused fragments are allowed)."""
    try:
        document = parse(text)
    except GraphQLError as exc:
        return [exc.message]
    return [e.message for e in validate(schema, document, FRAGMENT_RULES)]
