"""Compiling an instruction document into a plan, with the fake API scripted as the model."""

from __future__ import annotations

import json

import pytest

from app.agent.compile import (
    COMPILE_TOOL,
    CompileRefusal,
    compile_plan,
    compile_tool_schema,
    run_compile,
)
from app.agent.plan import CompiledPlan
from app.core.config import load_integration
from app.core.errors import PlanValidationError
from connectors.memory import MemoryConnector
from tests.fake_anthropic import DEMO_CONFIG, DEMO_PLAN, FakeAnthropic, serve

pytestmark = pytest.mark.e2e

INTEGRATION = load_integration(DEMO_CONFIG)
TARGETS = {"warehouse": MemoryConnector("warehouse")}
COMMITTED = CompiledPlan.model_validate_json(DEMO_PLAN.read_text(encoding="utf-8"))


def demo_answer(body=None) -> dict:
    """What a good model answers: the committed plan without the engine's own fields."""
    plan = json.loads(DEMO_PLAN.read_text(encoding="utf-8"))
    for key in ("version", "integration", "instructions_sha256"):
        plan.pop(key)
    return {"plan": plan, "unexpressible": []}


def test_schema_is_generated_from_the_plan_models_without_engine_fields():
    schema = compile_tool_schema()
    plan = schema["properties"]["plan"]["anyOf"][0]
    assert "operations" in plan["required"]
    assert "instructions_sha256" not in plan["properties"]
    assert "PlanStep" in schema["$defs"]


def test_compiles_the_demo_document_into_the_committed_plan(tmp_path):
    fake = FakeAnthropic(demo_answer)
    out = tmp_path / "demo.plan.json"
    with serve(fake) as client:
        message = run_compile(INTEGRATION, TARGETS, client, out)
    assert message.startswith(f"Wrote {out}")
    written = CompiledPlan.model_validate_json(out.read_text(encoding="utf-8"))
    assert written == COMMITTED  # same steps, and the same sha256 of the unchanged document
    body = fake.requests[0]
    assert body["tool_choice"]["name"] == COMPILE_TOOL
    assert "phone_e164" in body["system"]  # transforms documented
    assert "upsert_row" in body["system"]  # target operations documented
    assert "Never sync a patient" in body["messages"][0]["content"]


def test_unexpressible_instructions_are_refused_by_name(tmp_path):
    fake = FakeAnthropic(
        lambda body: {
            "plan": None,
            "unexpressible": [
                {"instruction": "4. Never sync a patient who...", "reason": "needs judgement"}
            ],
        }
    )
    out = tmp_path / "x.plan.json"
    with serve(fake) as client:
        message = run_compile(INTEGRATION, TARGETS, client, out)
        result = compile_plan(client, INTEGRATION, TARGETS)
    assert isinstance(result, CompileRefusal)
    assert message.startswith("Not compiled: 1 instruction")
    assert "4. Never sync" in message
    assert not out.exists()


def test_a_plan_that_does_not_run_gets_one_correction():
    answers = iter(
        [
            {
                "plan": {
                    "operations": [
                        {
                            "target": "warehouse",
                            "operation": "upsert_row",
                            "when": "entry.[[[",
                            "args": {},
                        }
                    ]
                },
                "unexpressible": [],
            }
        ]
    )
    fake = FakeAnthropic(lambda body: next(answers, None) or demo_answer())
    with serve(fake) as client:
        result = compile_plan(client, INTEGRATION, TARGETS)
    assert isinstance(result, CompiledPlan)
    assert fake.counts["messages"] == 2
    feedback = fake.requests[1]["messages"][-1]["content"][0]
    assert feedback["is_error"] is True
    assert "JMESPath" in feedback["content"]


def test_a_plan_writing_to_an_unknown_target_is_invalid_twice():
    bad = demo_answer()
    bad["plan"]["operations"][0]["target"] = "elsewhere"
    fake = FakeAnthropic(lambda body: bad)
    with serve(fake) as client, pytest.raises(PlanValidationError, match="unknown target"):
        compile_plan(client, INTEGRATION, TARGETS)
