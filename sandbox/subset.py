"""Generate ``sandbox/schema.graphql``: the slice of Healthie's schema the sandbox serves.

The subset is the union of everything selected by two sets of GraphQL documents:

* the engine's own operations (``app/healthie/operations/*.graphql``), and
* :data:`SANDBOX_SURFACE` below: the extra root fields the sandbox serves (listing users,
  tags, appointment and webhook mutations…), written as ordinary operations so that the
  "declared list of extra root fields" is itself validated against the real schema.

Every kept declaration is cut out of the shared schema's syntax tree and printed back, so a
field keeps its exact type, arguments, defaults, description and deprecation. Fields and
arguments nobody selects are dropped; required arguments and required input fields are
always kept (dropping them would let operations validate here that fail at Healthie).
Input objects keep every field unless :data:`INPUT_FIELDS` narrows them; enums keep all
values.

Run ``python -m sandbox.subset --shared ../shared/healthie/schema.graphql`` after changing
either set of documents and commit the output; the runtime never reads the shared schema.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from graphql import (
    DefinitionNode,
    DocumentNode,
    FieldDefinitionNode,
    GraphQLInputObjectType,
    GraphQLNamedType,
    GraphQLSchema,
    InputObjectTypeDefinitionNode,
    InputValueDefinitionNode,
    NonNullTypeNode,
    NoUnusedFragmentsRule,
    ObjectTypeDefinitionNode,
    TypeInfo,
    TypeInfoVisitor,
    TypeNode,
    build_ast_schema,
    get_named_type,
    parse,
    print_ast,
    specified_rules,
    validate,
    visit,
)
from graphql.language import ArgumentNode, FieldNode, ListTypeNode, NamedTypeNode, Visitor

# Operation files may hold only fragments (entry.graphql): the engine spreads them into the
# aliased batch queries it builds at run time, so "unused fragment" is not an error here.
FRAGMENT_FILE_RULES = tuple(r for r in specified_rules if r is not NoUnusedFragmentsRule)

REPO = Path(__file__).resolve().parents[1]
OPERATIONS_DIR = REPO / "app" / "healthie" / "operations"
OUTPUT = Path(__file__).resolve().with_name("schema.graphql")

# The sandbox's own served surface beyond the engine's operations. Arguments listed here are
# the ones the resolvers honour; fields are what a caller can select.
SANDBOX_SURFACE = """
fragment SandboxUser on User {
  id first_name last_name full_name email phone_number dob active archived_at updated_at
  created_at record_identifier metadata
  active_tags { id name created_at updated_at }
  dietitian { id }
  providers { id }
  user_group { id name }
}
fragment SandboxAppointment on Appointment {
  id date length contact_type pm_status deleted_at created_at updated_at location
  appointment_location_id
  user { id } attendees { id } provider { id full_name email }
  appointment_type { id name }
  recurring_appointment { id repeat_interval repeat_times }
}
fragment SandboxWebhook on Webhook {
  id url is_enabled should_retry event_type signature_secret warned_at
  webhook_events {
    id event_type created_at updated_at retry_count first_failed_at last_failed_at
  }
}
fragment SandboxAppliedTag on AppliedTag {
  id created_at updated_at tag_id user_id tag { id name } user { id }
}
fragment SandboxPageInfo on PageInfo { has_next_page has_previous_page start_cursor end_cursor }
fragment SandboxMessages on FieldError { field message }

query SandboxReads(
  $id: ID, $first: Int, $after: String, $ids: [ID], $order_by: UserOrderKeys,
  $keywords: String, $active_status: String, $include_deleted: Boolean,
  $appointment_order: AppointmentOrderKeys, $filter: String, $is_org: Boolean, $user_id: ID,
  $provider_id: ID, $is_active: Boolean, $with_all_statuses: Boolean,
  $tag_id: ID, $updated_after: ISO8601DateTime, $updated_before: ISO8601DateTime,
  $failed: Boolean, $resource_id: ID, $resource_type: SentWebhookResourceType,
  $sent_after: ISO8601DateTime, $sent_before: ISO8601DateTime
) {
  currentUser { id full_name email }
  user(id: $id) { ...SandboxUser }
  users(first: $first, after: $after, ids: $ids, order_by: $order_by, keywords: $keywords,
        active_status: $active_status) {
    total_count
    page_info { ...SandboxPageInfo }
    nodes { ...SandboxUser }
    edges { cursor node { ...SandboxUser } }
  }
  appointment(id: $id, include_deleted: $include_deleted) { ...SandboxAppointment }
  appointments(first: $first, after: $after, order_by: $appointment_order, filter: $filter,
               is_org: $is_org, user_id: $user_id, provider_id: $provider_id,
               is_active: $is_active, with_all_statuses: $with_all_statuses) {
    total_count page_info { ...SandboxPageInfo }
    nodes { ...SandboxAppointment } edges { cursor node { ...SandboxAppointment } }
  }
  appliedTags(first: $first, after: $after, tag_id: $tag_id, updated_after: $updated_after,
              updated_before: $updated_before) {
    total_count page_info { ...SandboxPageInfo }
    nodes { ...SandboxAppliedTag } edges { cursor node { ...SandboxAppliedTag } }
  }
  tags(ids: $ids) { id name created_at updated_at }
  webhooks(first: $first, after: $after) {
    total_count page_info { ...SandboxPageInfo }
    nodes { ...SandboxWebhook } edges { cursor node { ...SandboxWebhook } }
  }
  sentWebhooks(first: $first, after: $after, failed: $failed, resource_id: $resource_id,
               resource_type: $resource_type, sent_after: $sent_after,
               sent_before: $sent_before) {
    total_count page_info { ...SandboxPageInfo }
    nodes { id created_at event_type http_response_status resource_id resource_id_type
            url webhook_id }
    edges { cursor node { id } }
  }
}

mutation SandboxWrites(
  $updateClient: updateClientInput!, $createTag: createTagInput, $bulkApply: bulkApplyInput,
  $removeAppliedTag: removeAppliedTagInput, $createTask: createTaskInput,
  $createAppointment: createAppointmentInput!, $updateAppointment: updateAppointmentInput!,
  $deleteAppointment: deleteAppointmentInput, $createWebhook: createWebhookInput,
  $updateWebhook: updateWebhookInput, $deleteWebhook: deleteWebhookInput,
  $expireWebhookSignature: expireWebhookSignatureInput, $sendTestWebhook: sendTestWebhookInput
) {
  updateClient(input: $updateClient) { user { ...SandboxUser } messages { ...SandboxMessages } }
  createTag(input: $createTag) { tag { id name } messages { ...SandboxMessages } }
  bulkApply(input: $bulkApply) { tags { id name } messages { ...SandboxMessages } }
  removeAppliedTag(input: $removeAppliedTag) { tag { id name } messages { ...SandboxMessages } }
  createTask(input: $createTask) {
    task { id content client_id user_id due_date complete priority created_at }
    messages { ...SandboxMessages }
  }
  createAppointment(input: $createAppointment) {
    appointment { ...SandboxAppointment } messages { ...SandboxMessages }
  }
  updateAppointment(input: $updateAppointment) {
    appointment { ...SandboxAppointment } messages { ...SandboxMessages }
  }
  deleteAppointment(input: $deleteAppointment) {
    appointment { id } messages { ...SandboxMessages }
  }
  createWebhook(input: $createWebhook) {
    webhook { ...SandboxWebhook } messages { ...SandboxMessages }
  }
  updateWebhook(input: $updateWebhook) {
    webhook { ...SandboxWebhook } messages { ...SandboxMessages }
  }
  deleteWebhook(input: $deleteWebhook) { webhook { id } messages { ...SandboxMessages } }
  expireWebhookSignature(input: $expireWebhookSignature) {
    webhook { ...SandboxWebhook } messages { ...SandboxMessages }
  }
  sendTestWebhook(input: $sendTestWebhook) { sent messages { ...SandboxMessages } }
}
"""

# Input objects narrowed to the fields the sandbox acts on. Healthie's updateClientInput and
# the appointment inputs reach dozens of nested input types the sandbox would only ignore.
INPUT_FIELDS: dict[str, frozenset[str]] = {
    "updateClientInput": frozenset(
        "id first_name last_name legal_name pronouns email phone_number dob gender sex "
        "timezone active metadata record_identifier additional_record_identifier "
        "user_group_id dietitian_id other_provider_ids location".split()
    ),
    "createAppointmentInput": frozenset(
        "user_id attendee_ids other_party_id appointment_type_id contact_type date datetime "
        "length location appointment_location_id providers suppress_webhook_notifications".split()
    ),
    "updateAppointmentInput": frozenset(
        "id pm_status date datetime contact_type appointment_type_id location "
        "appointment_location_id other_party_id suppress_webhook_notifications".split()
    ),
    "deleteAppointmentInput": frozenset("id suppress_webhook_notifications".split()),
    "createTaskInput": frozenset("content client_id user_id due_date priority complete".split()),
    "createWebhookInput": frozenset(
        "url event_type is_enabled should_retry webhook_events".split()
    ),
    "updateWebhookInput": frozenset(
        "id url event_type is_enabled should_retry webhook_events".split()
    ),
}


@dataclass
class Usage:
    """What the documents touch: fields and arguments per type, and every named type."""

    fields: dict[str, set[str]] = field(default_factory=dict)
    args: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    types: set[str] = field(default_factory=set)


def engine_operations(directory: Path = OPERATIONS_DIR) -> list[DocumentNode]:
    """Parse every ``*.graphql`` operation file of the engine, in name order."""
    return [parse(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.graphql"))]


def _named(node: TypeNode) -> str:
    while isinstance(node, NonNullTypeNode | ListTypeNode):
        node = node.type
    assert isinstance(node, NamedTypeNode)
    return node.name.value


def collect_usage(schema: GraphQLSchema, documents: Iterable[DocumentNode]) -> Usage:
    """Walk ``documents`` against ``schema`` and record every field, argument and type used.

    Raises ``ValueError`` when a document does not validate against ``schema``.
    """
    usage = Usage()
    for root in (schema.query_type, schema.mutation_type):
        if root is not None:
            usage.types.add(root.name)
    for doc in documents:
        errors = validate(schema, doc, FRAGMENT_FILE_RULES)
        if errors:
            raise ValueError("; ".join(e.message for e in errors))
        info = TypeInfo(schema)

        class Collector(Visitor):
            def __init__(self, info: TypeInfo) -> None:
                super().__init__()
                self.info = info

            def enter_field(self, node: FieldNode, *_: object) -> None:
                parent = self.info.get_parent_type()
                if parent is None or node.name.value.startswith("__"):
                    return
                usage.fields.setdefault(parent.name, set()).add(node.name.value)
                usage.types.add(get_named_type(self.info.get_type()).name)  # type: ignore[union-attr]

            def enter_argument(self, node: ArgumentNode, *_: object) -> None:
                parent, fdef = self.info.get_parent_type(), self.info.get_field_def()
                if parent is None or fdef is None:
                    return
                for fname, candidate in parent.fields.items():  # type: ignore[union-attr]
                    if candidate is fdef:
                        key = (parent.name, fname)
                        usage.args.setdefault(key, set()).add(node.name.value)

            def enter_named_type(self, node: NamedTypeNode, *_: object) -> None:
                usage.types.add(node.name.value)

        visit(doc, TypeInfoVisitor(info, Collector(info)))
    return usage


def _close_types(schema: GraphQLSchema, usage: Usage) -> None:
    """Add the types reached through kept arguments and input fields (transitively)."""
    pending = set(usage.types)
    for (type_name, field_name), arg_names in usage.args.items():
        fdef = schema.type_map[type_name].fields[field_name]  # type: ignore[attr-defined]
        pending.update(get_named_type(fdef.args[a].type).name for a in arg_names)
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        named: GraphQLNamedType = schema.type_map[name]
        if isinstance(named, GraphQLInputObjectType):
            keep = INPUT_FIELDS.get(name)
            for fname, fdef in named.fields.items():
                required = fdef.type.__class__.__name__ == "GraphQLNonNull"
                if keep is None or fname in keep or (required and fdef.default_value is None):
                    pending.add(get_named_type(fdef.type).name)
    usage.types = seen


def _keep_arg(arg: InputValueDefinitionNode, used: set[str]) -> bool:
    required = isinstance(arg.type, NonNullTypeNode) and arg.default_value is None
    return required or arg.name.value in used


def build_subset(shared_sdl: str, documents: Iterable[DocumentNode]) -> str:
    """Return the subset SDL covering ``documents`` cut from ``shared_sdl``."""
    shared_doc = parse(shared_sdl)
    schema = build_ast_schema(shared_doc)
    usage = collect_usage(schema, documents)
    for root in (schema.query_type, schema.mutation_type):
        if root is not None:
            for fname in usage.fields.get(root.name, set()):
                usage.types.add(get_named_type(root.fields[fname].type).name)
    _close_types(schema, usage)
    parts: list[str] = []
    for definition in shared_doc.definitions:
        name_node = getattr(definition, "name", None)
        if name_node is None:
            parts.append(print_ast(definition))  # the schema { query mutation } block
            continue
        if name_node.value not in usage.types:
            continue
        parts.append(print_ast(_filter(definition, usage)))
    header = (
        "# Generated by `python -m sandbox.subset` from Healthie's published schema (2026-01-01).\n"
        "# Do not edit: change app/healthie/operations or sandbox/subset.py and regenerate.\n\n"
    )
    return header + "\n\n".join(parts) + "\n"


def _filter(definition: DefinitionNode, usage: Usage) -> DefinitionNode:
    if isinstance(definition, ObjectTypeDefinitionNode):
        name = definition.name.value
        kept: list[FieldDefinitionNode] = []
        for fdef in definition.fields or ():
            if fdef.name.value not in usage.fields.get(name, set()):
                continue
            used = usage.args.get((name, fdef.name.value), set())
            args = tuple(a for a in fdef.arguments or () if _keep_arg(a, used))
            kept.append(FieldDefinitionNode(**{**_attrs(fdef), "arguments": args}))  # type: ignore[arg-type]
        return ObjectTypeDefinitionNode(**{**_attrs(definition), "fields": tuple(kept)})  # type: ignore[arg-type]
    if isinstance(definition, InputObjectTypeDefinitionNode):
        keep = INPUT_FIELDS.get(definition.name.value)
        if keep is None:
            return definition
        fields = tuple(f for f in definition.fields or () if _keep_arg(f, set(keep)))
        return InputObjectTypeDefinitionNode(**{**_attrs(definition), "fields": fields})  # type: ignore[arg-type]
    return definition


def _attrs(node: object) -> dict[str, object]:
    return {k: getattr(node, k) for k in node.keys if k != "loc"}  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: read the shared schema, write :data:`OUTPUT`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--shared", type=Path, required=True, help="Healthie schema.graphql")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    ns = parser.parse_args(argv)
    documents = [*engine_operations(), parse(SANDBOX_SURFACE)]
    sdl = build_subset(ns.shared.read_text(encoding="utf-8"), documents)
    ns.output.write_text(sdl, encoding="utf-8")
    print(f"wrote {ns.output} ({len(sdl.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
