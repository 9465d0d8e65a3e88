"""The tool the model answers through, generated from the integration's connector declarations.

The model sees exactly one tool, ``submit_write_plan``, and is forced to call it. Its input
schema is built from each target's ``Connector.operations``: one ``oneOf`` variant per
(target, operation) pair whose ``args`` is the operation's pydantic model as JSON Schema. No
schema is written by hand, so adding a connector operation changes what the model may propose,
and nothing else does.

The output is deterministic (targets and operations sorted, ``$defs`` renamed per variant,
canonical key order) because it sits at the front of the prompt-cached prefix: one changed byte
would turn every cache read into a cache write.

The schema only *guides* the model. ``parse_answer`` and ``app.agent.base.validate_plan`` are
what the engine trusts: an answer that does not validate is refused whatever the schema said.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.core.errors import PlanValidationError
from app.core.models import WriteOperation, WritePlan
from connectors.base import Declared, error_location

TOOL_NAME = "submit_write_plan"

TOOL_DESCRIPTION = (
    "Submit the write plan for the one patient in the entry. Call it exactly once. "
    "action=write with the operations to run in order, or action=skip with skip_reason when "
    "the instructions say to write nothing. Every operation names a configured target, one of "
    "its operations, and args matching that operation's schema; every patient_id argument must "
    "be the entry's patient id. rationale cites instruction numbers, ids and field names only, "
    "never names, contact details or other patient values."
)

# Keys of a JSON Schema node whose value is a mapping of *names* to schemas, so a property
# literally called "title" is not mistaken for the schema keyword when stripping titles.
_NAME_MAPPINGS = frozenset({"properties", "$defs", "definitions", "patternProperties"})


def _strip_titles(node: Any) -> Any:
    """Drop pydantic's generated ``title`` keywords: tokens in every request, no meaning."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "title" and isinstance(value, str):
                continue
            if key in _NAME_MAPPINGS and isinstance(value, dict):
                out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
            else:
                out[key] = _strip_titles(value)
        return out
    if isinstance(node, list):
        return [_strip_titles(item) for item in node]
    return node


def model_schema(model: type[BaseModel], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``model``'s JSON Schema with its ``$defs`` renamed ``<prefix><Name>`` (returned apart),
    so the schemas of several connectors can share one ``$defs`` without collisions."""
    schema = model.model_json_schema(ref_template=f"#/$defs/{prefix}{{model}}")
    defs = {f"{prefix}{name}": sub for name, sub in schema.pop("$defs", {}).items()}
    return _strip_titles(schema), _strip_titles(defs)


def operation_variants(
    connectors: Mapping[str, Declared],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One schema per (target, operation), sorted, and the ``$defs`` they refer to."""
    variants: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    for target in sorted(connectors):
        connector = connectors[target]
        for name in sorted(connector.operations):
            spec = connector.operations[name]
            args, sub_defs = model_schema(spec.args_model, f"{target}__{name}__")
            defs.update(sub_defs)
            if spec.description and "description" not in args:
                args["description"] = " ".join(spec.description.split())
            variants.append(
                {
                    "type": "object",
                    "description": f"{target}.{name} ({connector.kind} connector)",
                    "properties": {
                        "target": {"const": target},
                        "operation": {"const": name},
                        "args": args,
                    },
                    "required": ["target", "operation", "args"],
                    "additionalProperties": False,
                }
            )
    return variants, defs


def plan_input_schema(connectors: Mapping[str, Declared]) -> dict[str, Any]:
    """The JSON Schema of ``submit_write_plan``'s input for these targets."""
    if not connectors:
        raise PlanValidationError("an integration without targets cannot have a write plan")
    variants, defs = operation_variants(connectors)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "action": {"type": "string", "enum": ["write", "skip"]},
            "skip_reason": {
                "type": ["string", "null"],
                "description": "Why nothing is written (required when action is skip).",
            },
            "rationale": {
                "type": "string",
                "description": "Which instructions applied; ids and field names only, no PHI.",
            },
            "operations": {
                "type": "array",
                "description": "Operations in execution order; empty when action is skip.",
                "items": {"oneOf": variants},
            },
        },
        "required": ["action", "rationale", "operations"],
        "additionalProperties": False,
    }
    if defs:
        schema["$defs"] = dict(sorted(defs.items()))
    return schema


def canonical(value: Any) -> Any:
    """``value`` with every mapping's keys sorted (JSON round trip), for a byte-stable prefix."""
    return json.loads(json.dumps(value, sort_keys=True, ensure_ascii=False))


def build_tools(connectors: Mapping[str, Declared]) -> list[dict[str, Any]]:
    """The tool definitions the model sees (one tool), deterministic for a given set of targets."""
    tool = {
        "name": TOOL_NAME,
        "description": TOOL_DESCRIPTION,
        "input_schema": plan_input_schema(connectors),
    }
    return [canonical(tool)]


def tools_fingerprint(tools: list[dict[str, Any]]) -> str:
    """A short hash of the tool definitions (logged, so a cache-miss storm can be traced)."""
    text = json.dumps(tools, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def forced_tool_choice() -> dict[str, Any]:
    """``tool_choice`` that makes the model answer with exactly one ``submit_write_plan`` call."""
    return {"type": "tool", "name": TOOL_NAME, "disable_parallel_tool_use": True}


class OperationAnswer(BaseModel):
    """One operation as the model proposed it (arguments are checked by the connector)."""

    model_config = ConfigDict(extra="forbid")

    target: str
    operation: str
    args: dict[str, Any]


class PlanAnswer(BaseModel):
    """The input of a ``submit_write_plan`` call."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["write", "skip"]
    skip_reason: str | None = None
    rationale: str = Field(default="", max_length=2000)
    operations: list[OperationAnswer] = Field(default_factory=list)


# Error types whose pydantic message is built from the schema alone (the expected type, a
# limit, the allowed literals). Other messages can quote the input (``value_error`` carries a
# validator's own text, ``union_tag_invalid`` the tag given), so only their type is said.
_SCHEMA_MESSAGES = frozenset(
    {
        "missing",
        "extra_forbidden",
        "literal_error",
        "string_too_long",
        "string_too_short",
        "too_long",
        "too_short",
    }
)


def describe_validation(exc: ValidationError) -> str:
    """``exc`` as ``location: problem`` lines joined by ``; ``, with no input value in them
    (never ``str(exc)``, which appends ``input_value=...``): a model's answer may carry
    patient data, and this text reaches the model, the logs and dead letters."""
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        kind = err["type"]
        said = err["msg"] if kind in _SCHEMA_MESSAGES or kind.endswith("_type") else kind
        problems.append(f"{error_location(err['loc'])}: {said}")
    return "; ".join(problems)


def parse_answer(tool_input: Mapping[str, Any], patient_id: str, *, backend: str) -> WritePlan:
    """The WritePlan a ``submit_write_plan`` input describes; PlanValidationError when its shape
    is wrong. The plan's patient is always the entry's, never something the model chose."""
    try:
        answer = PlanAnswer.model_validate(dict(tool_input))
    except ValidationError as exc:
        raise PlanValidationError(
            f"tool input does not match the schema: {describe_validation(exc)}"
        ) from None
    if answer.action == "skip":
        if answer.operations:
            raise PlanValidationError("a skip plan must not carry operations")
        return WritePlan.skip(
            patient_id, answer.skip_reason or "skipped by the instructions", backend=backend
        ).model_copy(update={"rationale": answer.rationale})
    if not answer.operations:
        raise PlanValidationError("action is write but there are no operations; use skip")
    return WritePlan(
        patient_id=patient_id,
        operations=tuple(
            WriteOperation(target=op.target, operation=op.operation, args=op.args)
            for op in answer.operations
        ),
        rationale=answer.rationale,
        backend=backend,
    )
