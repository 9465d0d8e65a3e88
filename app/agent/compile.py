"""Compile an instruction document into a reviewed, deterministic plan (one model call).

``healthie-sync compile INTEGRATION`` asks Claude once to translate the integration's
instruction document into the JSON plan format of ``app.agent.plan``, through a forced tool
whose schema is generated from ``CompiledPlan``. The model is given the plan format's
documentation, the closed list of transforms, JMESPath notes, the targets' operations (the same
generated schemas the run-time agent sees) and the shape of an entry. It must either return a
plan or name each instruction the format cannot express; it may not approximate.

The answer is checked before anything is written: it must parse as a ``CompiledPlan``, load into
``PlanAgent`` (every JMESPath compiles, every transform exists), and produce a plan that passes
``validate_plan`` on a synthetic sample entry, with and without a previous version. An answer
that fails gets one corrective turn. The written file records ``instructions_sha256`` so a later
edit of the document is noticed at load time. A person reviews the plan before it goes live.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.agent import plan as plan_module
from app.agent.api import call_with_retries
from app.agent.base import validate_plan
from app.agent.plan import CompiledPlan, PlanAgent
from app.agent.tools import build_tools, canonical, model_schema
from app.agent.transforms import TRANSFORMS, apply_transform
from app.core.config import Integration
from app.core.errors import ConfigurationError, FatalError, PlanValidationError
from app.core.models import Entry
from app.healthie.entry import canonicalize, content_hash
from app.healthie.operations import load as load_operation
from app.state.base import PatientState
from connectors.base import Declared

COMPILE_TOOL = "submit_compiled_plan"
#: Compiling is rare and reviewed, so it uses the most capable current model the SDK lists.
DEFAULT_COMPILE_MODEL = "claude-opus-5-5"
#: Plan fields the engine fills in itself; the model never writes them.
ENGINE_FIELDS = ("version", "integration", "instructions_sha256")

#: A made-up entry (no real patient) exercising the common fields, for the smoke run.
SAMPLE_ENTRY: dict[str, Any] = {
    "id": "900001",
    "first_name": "Sample",
    "last_name": "Patient",
    "email": " S@Example.org ",
    "phone_number": "555-010-0199",
    "dob": "1990-01-02",
    "active": True,
    "archived_at": None,
    "gender": "Female",
    "sex": "Female",
    "metadata": '{"source": "sample"}',
    "record_identifier": "R-1",
    "user_group": {"id": "1", "name": "Group"},
    "dietitian": {"id": "9", "full_name": "Provider One", "email": "p1@example.org"},
    "providers": [{"id": "9", "full_name": "Provider One", "email": "p1@example.org"}],
    "location": {
        "id": "5",
        "line1": "1 Main St",
        "line2": None,
        "city": "Town",
        "state": "NY",
        "zip": "10001",
        "country": "US",
    },
    "active_tags": [{"id": "1", "name": "sample-tag"}],
    "policies": [
        {
            "id": "3",
            "name": "Plan",
            "num": "X1",
            "group_num": "G1",
            "priority_type": "primary",
            "holder_relationship": "Self",
            "effective_start": "2026-01-01",
            "effective_end": None,
            "insurance_plan": {"id": "7", "payer_name": "Payer", "payer_id": "P7"},
        }
    ],
    "appointments": [
        {
            "id": "800001",
            "date": "2026-03-01T15:00:00Z",
            "pm_status": "Occurred",
            "deleted_at": None,
            "appointment_type": {"id": "2", "name": "Initial"},
            "provider": {"id": "9", "full_name": "Provider One"},
            "contact_type": "Video Call",
        },
        {
            "id": "800002",
            "date": "2026-04-01T15:00:00Z",
            "pm_status": None,
            "deleted_at": "2026-03-15T10:00:00Z",
            "appointment_type": None,
            "provider": None,
            "contact_type": None,
        },
    ],
}


class Unexpressible(BaseModel):
    """One instruction the plan format cannot express, and why."""

    model_config = ConfigDict(extra="forbid")

    instruction: str = Field(description="The instruction's number and a short quote.")
    reason: str


class CompileAnswer(BaseModel):
    """The input of ``submit_compiled_plan``."""

    model_config = ConfigDict(extra="forbid")

    plan: dict[str, Any] | None = None
    unexpressible: list[Unexpressible] = Field(default_factory=list)


@dataclass(frozen=True)
class CompileRefusal:
    """The document cannot be compiled as it stands: these instructions need the model."""

    instructions: tuple[Unexpressible, ...]

    def message(self) -> str:
        """A readable explanation for the person running ``compile``."""
        lines = [f"- {u.instruction}: {u.reason}" for u in self.instructions]
        return "\n".join(
            [
                f"Not compiled: {len(lines)} instruction(s) cannot be expressed as a plan:",
                *lines,
                "Keep agent.backend = 'claude' for this integration, or reword these instructions.",
            ]
        )


def compile_tool_schema() -> dict[str, Any]:
    """The input schema of ``submit_compiled_plan``, generated from ``CompiledPlan``."""
    plan, defs = model_schema(CompiledPlan, "")
    for name in ENGINE_FIELDS:
        plan["properties"].pop(name, None)
    plan["required"] = [r for r in plan.get("required", []) if r not in ENGINE_FIELDS]
    unexpressible, _ = model_schema(Unexpressible, "")
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "plan": {
                "anyOf": [plan, {"type": "null"}],
                "description": "The plan, or null when any instruction is unexpressible.",
            },
            "unexpressible": {"type": "array", "items": unexpressible},
        },
        "required": ["plan", "unexpressible"],
        "additionalProperties": False,
        "$defs": defs,
    }
    out: dict[str, Any] = canonical(schema)
    return out


def _transforms_doc() -> str:
    names = ", ".join(sorted([*TRANSFORMS, "lookup", "default"]))
    return f"Transforms (closed list): {names}.\n{apply_transform.__doc__ or ''}".strip()


def compile_system_prompt(connectors: Mapping[str, Declared]) -> str:
    """Everything the model needs to write a plan, generated from the code it must satisfy."""
    operations = build_tools(connectors)[0]["input_schema"]
    return "\n\n".join(
        [
            "You compile a healthcare organization's plain-language instruction document into a "
            "deterministic JSON plan for the healthie-sync engine. Call submit_compiled_plan once. "
            "Express every instruction exactly; never approximate, guess field names that are not "
            "in the entry shape, or drop a condition. If any instruction cannot be expressed with "
            "the format below (it needs judgement, free-text understanding, data outside the "
            "entry, or a transform not in the list), return plan = null and list each such "
            "instruction in unexpressible with the reason.",
            "## Plan format\n" + (plan_module.__doc__ or ""),
            "## " + _transforms_doc(),
            "## JMESPath\nExpressions are JMESPath (jmespath.org) evaluated over "
            '{"entry": ..., "previous": ..., "item": ..., "run": ...}. '
            "Use `|| `[]`` to default a missing list, filters like "
            "`entry.appointments[?deleted_at == null]`, `contains()`, "
            "`sort()`, `length()`. Literals are written in backticks.",
            "## Targets and their operations (JSON Schema of one operation)\n"
            + json.dumps(operations["properties"]["operations"]["items"], sort_keys=True),
            "## Entry shape (GraphQL selection; lists of objects are sorted by id, "
            "timestamps UTC)\n" + load_operation("entry"),
        ]
    )


def _sample(integration: Integration, data: Mapping[str, Any]) -> Entry:
    canon = canonicalize(dict(data))
    return Entry(
        integration_id=integration.id,
        patient_id=str(canon["id"]),
        data=canon,
        content_hash=content_hash(canon),
        fetched_at=datetime.now(UTC),
    )


def check_answer(
    tool_input: Mapping[str, Any],
    integration: Integration,
    connectors: Mapping[str, Declared],
    instructions_text: str,
    sample: Mapping[str, Any],
) -> CompiledPlan | CompileRefusal:
    """Validate a ``submit_compiled_plan`` input; PlanValidationError says what is wrong."""
    try:
        answer = CompileAnswer.model_validate(dict(tool_input))
        if answer.unexpressible:
            return CompileRefusal(tuple(answer.unexpressible))
        if answer.plan is None:
            raise PlanValidationError("plan is null but no instruction is listed as unexpressible")
        sha = hashlib.sha256(instructions_text.encode("utf-8")).hexdigest()
        body = {k: v for k, v in answer.plan.items() if k not in ENGINE_FIELDS}
        plan = CompiledPlan.model_validate(
            {**body, "version": 1, "integration": integration.id, "instructions_sha256": sha}
        )
        agent = PlanAgent(plan)
        entry = _sample(integration, sample)
        previous = PatientState(
            integration_id=integration.id,
            patient_id=entry.patient_id,
            content_hash=entry.content_hash,
            entry=entry.data,
            outcome="written",
            updated_at=entry.fetched_at,
        )
        # a time inside the plan's run_when window: outside it, decide() defers (retriable)
        now = datetime.now(UTC)
        as_of = now if agent.runs_at(now) else (agent.opens_at(now) or now)
        for prev in (None, previous):
            validate_plan(agent.decide(integration, entry, prev, as_of=as_of), entry, connectors)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise PlanValidationError(f"the plan does not match the format: {problems}") from None
    except (ConfigurationError, FatalError) as exc:
        raise PlanValidationError(f"the plan does not run: {exc}") from None
    return plan


def compile_plan(
    client: anthropic.Anthropic,
    integration: Integration,
    connectors: Mapping[str, Declared],
    model: str | None = None,
    *,
    sample_entry: Mapping[str, Any] | None = None,
    max_output_tokens: int = 16000,
) -> CompiledPlan | CompileRefusal:
    """Ask Claude once (plus at most one correction) to compile the instruction document."""
    instructions = integration.agent.instructions.read_text(encoding="utf-8")
    sample = sample_entry or SAMPLE_ENTRY
    client = client.with_options(max_retries=0)
    params: dict[str, Any] = {
        "model": model or DEFAULT_COMPILE_MODEL,
        "max_tokens": max_output_tokens,
        "system": compile_system_prompt(connectors),
        "tools": [
            {
                "name": COMPILE_TOOL,
                "description": "Submit the compiled plan.",
                "input_schema": compile_tool_schema(),
            }
        ],
        "tool_choice": {"type": "tool", "name": COMPILE_TOOL, "disable_parallel_tool_use": True},
        "messages": [
            {
                "role": "user",
                "content": (
                    f'<instructions integration="{integration.id}">\n{instructions.strip()}\n'
                    "</instructions>"
                ),
            }
        ],
    }

    def call() -> Any:
        return call_with_retries(
            lambda: client.messages.create(**params),
            "Anthropic compile",
            max_retries=4,
            max_wait=60.0,
            sleep=time.sleep,
        )

    error = ""
    for attempt in range(2):
        message = call()
        uses = [b for b in message.content if b.type == "tool_use" and b.name == COMPILE_TOOL]
        if len(uses) != 1:
            error = f"expected one {COMPILE_TOOL} call, got {len(uses)}"
        else:
            try:
                return check_answer(uses[0].input, integration, connectors, instructions, sample)
            except PlanValidationError as exc:
                error = str(exc)
        if attempt == 0:
            params["messages"] = [
                *params["messages"],
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": b.id, "name": b.name, "input": b.input}
                        for b in uses
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": b.id,
                            "is_error": True,
                            "content": f"Refused: {error}. Submit the whole corrected answer.",
                        }
                        for b in uses
                    ]
                    or [{"type": "text", "text": f"Refused: {error}"}],
                },
            ]
    raise PlanValidationError(f"the compiled plan was invalid twice: {error}")


def write_plan(plan: CompiledPlan, out_path: Path) -> None:
    """Write the plan file (stable formatting, so a recompile shows a readable diff)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(
        plan.model_dump(mode="json", exclude_none=False), indent=2, ensure_ascii=False
    )
    out_path.write_text(text + "\n", encoding="utf-8")


def run_compile(
    integration: Integration,
    connectors: Mapping[str, Declared],
    client: anthropic.Anthropic,
    out_path: Path,
) -> str:
    """Compile, write ``out_path`` when the whole document compiled, and say what happened.

    A refusal writes nothing and returns its explanation (starting ``Not compiled:``); an
    invalid answer raises PlanValidationError."""
    result = compile_plan(client, integration, connectors, integration.agent.model)
    if isinstance(result, CompileRefusal):
        return result.message()
    write_plan(result, out_path)
    return (
        f"Wrote {out_path} ({len(result.operations)} steps, instructions sha256 "
        f"{result.instructions_sha256[:12]}). Review it, then set agent.backend = 'plan' and "
        f"agent.plan to this file in the integration's config."
    )
