"""Start-up check: does every operation the engine sends still validate against the live API?

The contract tests prove the operations against Healthie's *published* schema; this proves them
against the API the integration will actually call, at the pinned version (the client sends the
``Healthie-GraphQL-API-Version`` header on the introspection query too). A field Healthie
removed or retyped shows up here, at start-up, instead of as dead letters at the first flush.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gql import GraphQLRequest
from graphql import GraphQLError, GraphQLSchema, build_client_schema, get_introspection_query

from app.core.errors import ConfigurationError, InvalidResponse
from app.healthie import operations
from app.healthie.selection import forbidden_selections, validate_fragment_file

if TYPE_CHECKING:
    from app.healthie.client import HealthieClient


def live_schema(client: HealthieClient) -> GraphQLSchema:
    """Introspect the API ``client`` talks to (one request, at the client's pinned version)."""
    query = get_introspection_query(descriptions=False)
    data = client.execute(GraphQLRequest(query, operation_name="IntrospectionQuery"), {})
    if not isinstance(data.get("__schema"), dict):
        raise InvalidResponse("Healthie answered the introspection query without __schema")
    try:
        return build_client_schema(data)  # type: ignore[arg-type]
    except (GraphQLError, TypeError, KeyError) as exc:
        raise InvalidResponse(f"Healthie's introspection result is unusable: {exc}") from exc


def operation_documents(client: HealthieClient) -> dict[str, str]:
    """Every document the client sends: the operation files, and the batched entries and
    appointment queries exactly as built (with the client's entry fragment)."""
    from app.healthie.client import _appointments_document, _entries_text

    docs = {name: operations.load(name) for name in operations.names()}
    docs["entry"] = _entries_text(2, client.entry_fragment)
    body = _appointments_document(2).document.loc
    if body is not None:
        docs["appointment_patients_batch"] = body.source.body
    return docs


def problems_against(schema: GraphQLSchema, documents: dict[str, str]) -> dict[str, list[str]]:
    """Validation messages per document name (only documents with problems)."""
    found: dict[str, list[str]] = {}
    for name, text in sorted(documents.items()):
        messages = validate_fragment_file(schema, text)
        if name == "entry" and not messages:
            messages = [
                f"reaches excluded type at {r.path}" for r in forbidden_selections(schema, text)
            ]
        if messages:
            found[name] = messages
    return found


def check_operations_against_live_schema(client: HealthieClient) -> GraphQLSchema:
    """Introspect the live schema and validate every operation; returns the schema.

    Raises ConfigurationError listing each operation that no longer validates (with
    GraphQL's messages), and the client's error kinds when introspection itself fails.
    """
    schema = live_schema(client)
    problems = problems_against(schema, operation_documents(client))
    if problems:
        listing = "; ".join(f"{name}: {' / '.join(msgs[:3])}" for name, msgs in problems.items())
        raise ConfigurationError(
            f"operations no longer validate against Healthie API version "
            f"{client.api_version}: {listing}"
        )
    return schema
