"""The Healthie target's GraphQL edge: its documents, how their answers become error kinds, and
the declaration check that keeps clinical documentation out of reach.

Documents are the committed ``app/healthie/operations/write_*.graphql`` files (validated
against Healthie's published schema by ``tests/healthie/test_operations.py`` and against the
live schema by serve's start-up check, like every operation of the engine). They are sent
through the engine's :class:`~app.healthie.client.HealthieClient`, so pacing, the circuit,
retries and the mapping of transport failures are the client's.

What this module adds on top of the client:

* **messages**: Healthie refuses a mutation's input with HTTP 200 and the payload's
  ``messages`` (``[{field, message}]``) instead of GraphQL errors. Any message is a
  :class:`~app.core.errors.TargetRejected` naming the operation, the patient id and the
  refused *fields*; Healthie's message text is dropped because it may quote the value.
* **GraphQL errors**: the client's InvalidResponse quotes Healthie's first error message,
  which for a variable that fails coercion quotes the variable's value (a patient value), so
  it is replaced by a message naming only the document and the patient.
* **no clinical reach** (:func:`check_declarations`): every document a Healthie target sends
  must be a ``write_*`` file whose root fields are on :data:`ALLOWED_ROOTS` and whose
  selections and argument names stay clear of notes, form answers, charting and documents.
  A connector class whose declarations break this fails when it is defined (at import).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from gql import GraphQLRequest
from graphql import FieldNode, OperationDefinitionNode, parse
from pydantic import BaseModel

from app.core.errors import InvalidResponse, TargetRejected
from app.healthie import operations
from app.healthie.client import HealthieClient

#: Root fields a Healthie target may send: profile fields and metadata, tags, tasks and
#: appointment fields, and the reads that check ownership before a write.
ALLOWED_ROOTS = frozenset(
    {
        "updateClient",
        "createTag",
        "bulkApply",
        "removeAppliedTag",
        "createTask",
        "updateAppointment",
        "user",
        "tags",
        "appointment",
    }
)

#: Name fragments of session notes, charting and clinical documentation (Healthie's
#: FormAnswerGroup, ChartingNote*, Note, Document, care plans, diagnoses ...). No selected
#: field, no root field and no argument of a Healthie target may contain one.
CLINICAL_MARKERS = (
    "form_answer",
    "formanswer",
    "chart",
    "note",
    "document",
    "diagnos",
    "care_plan",
    "careplan",
    "medication",
    "allerg",
    "lab_",
    "prescription",
    "journal",
    "entries",
    "clinical",
    "quick_notes",
)


def is_clinical(name: str) -> bool:
    """Whether a field or argument name points at clinical documentation."""
    lowered = name.lower()
    return any(marker in lowered for marker in CLINICAL_MARKERS)


def _fields(node: Any) -> Iterable[FieldNode]:
    selection_set = getattr(node, "selection_set", None)
    for selection in selection_set.selections if selection_set else ():
        if isinstance(selection, FieldNode):
            yield selection
        yield from _fields(selection)


def document_problems(name: str, text: str | None = None) -> list[str]:
    """Why the operation file ``name`` (or ``text`` under that name) may not be sent by a
    Healthie target (empty: it may)."""
    if not name.startswith("write_"):
        return [f"{name}: a Healthie target sends only write_*.graphql operations"]
    problems = []
    document = parse(operations.load(name) if text is None else text)
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            problems.append(f"{name}: fragments are not allowed")
            continue
        for root in definition.selection_set.selections:
            if isinstance(root, FieldNode) and root.name.value not in ALLOWED_ROOTS:
                problems.append(f"{name}: root field {root.name.value} is not allowed")
        for field in _fields(definition):
            if is_clinical(field.name.value):
                problems.append(f"{name}: selects {field.name.value}")
    return sorted(set(problems))


def check_declarations(
    owner: str, documents: Iterable[str], args_models: Iterable[type[BaseModel]]
) -> None:
    """TypeError when a declared document or an argument reaches clinical documentation."""
    problems = [p for name in documents for p in document_problems(name)]
    for model in args_models:
        problems += [
            f"{model.__name__}.{field}" for field in model.model_fields if is_clinical(field)
        ]
    if problems:
        raise TypeError(f"{owner} would reach clinical documentation: {'; '.join(problems)}")


@cache
def request(name: str) -> GraphQLRequest:
    """The parsed document of ``write_<...>.graphql``."""
    return GraphQLRequest(operations.load(name))


def run(
    client: HealthieClient, name: str, variables: dict[str, Any], patient_id: str
) -> dict[str, Any]:
    """``data`` of one document; GraphQL errors become an InvalidResponse free of values."""
    try:
        data = client.execute(request(name), variables)
    except InvalidResponse:
        # from None: the client's message (and its cause) can quote a coerced variable value.
        raise InvalidResponse(
            f"Healthie refused the {name} document for patient {patient_id} (GraphQL error)"
        ) from None
    if data.get("__errors__"):
        raise InvalidResponse(
            f"Healthie answered {name} for patient {patient_id} with GraphQL errors"
        )
    return data


def mutate(
    client: HealthieClient,
    name: str,
    root: str,
    result: str,
    input_: Mapping[str, Any],
    patient_id: str,
) -> dict[str, Any]:
    """Send a mutation; its ``result`` object, or TargetRejected for its ``messages``."""
    payload = run(client, name, {"input": dict(input_)}, patient_id).get(root)
    if not isinstance(payload, dict):
        raise InvalidResponse(
            f"Healthie answered {root} for patient {patient_id} without a payload"
        )
    messages = payload.get("messages") or []
    if messages:
        fields = sorted({str(m.get("field") or "(none)") for m in messages if isinstance(m, dict)})
        raise TargetRejected(
            f"Healthie refused {root} for patient {patient_id}: fields {', '.join(fields)}"
        )
    value = payload.get(result)
    if value is None:
        raise InvalidResponse(
            f"Healthie answered {root} for patient {patient_id} with neither {result} nor messages"
        )
    return value if isinstance(value, dict) else {"items": value}
