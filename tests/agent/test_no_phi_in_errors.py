"""No patient value in an error text: compiled plans, transforms, plan validation, model answers.

Entries carry distinctive fake PHI (a name, a phone number, a birth date, an email). Plans,
transforms and answers are made to fail on exactly those values, and no raised error's text
(``str``, ``repr``, the formatted traceback, the ``Type: message`` a dead letter stores) may
contain any of them. The last test runs the consumer for real and reads the dead letter."""

from __future__ import annotations

import json
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx2
import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.agent.base import validate_plan
from app.agent.plan import CompiledPlan, PlanAgent
from app.agent.tools import describe_validation, parse_answer
from app.agent.transforms import TRANSFORMS
from app.core.config import load_integration
from app.core.errors import FatalError, HealthieSyncError, PlanValidationError
from app.core.models import Entry, WorkItem, WriteOperation, WritePlan
from app.healthie.entry import canonicalize, content_hash
from app.queue.topology import WORK_DLQ_SUBSCRIPTION, WORK_TOPIC
from app.state.base import PatientState
from connectors.memory import MemoryConnector
from tests.helpers import demo_runtime
from workers.consumer import drain

REPO = Path(__file__).resolve().parents[2]
INTEGRATION = load_integration(REPO / "config" / "integrations" / "demo-clinic.toml")
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)

NAME = "Marisol Quintanilla-Oyelaran"
PHONE = "(555) 867-5309"
DOB = "1971-04-19"
EMAIL = "marisol.q.oyelaran@example.net"
#: every way the values could show up (the phone's digits alone, too)
PHI = (NAME, "Quintanilla", PHONE, "867-5309", "5558675309", DOB, EMAIL, "oyelaran@")

PATIENT: dict[str, Any] = {
    "id": "4242",
    "first_name": "Marisol",
    "last_name": "Quintanilla-Oyelaran",
    "full_name": NAME,
    "phone_number": PHONE,
    "dob": DOB,
    "email": EMAIL,
    "active": True,
    "active_tags": [],
    "appointments": [],
    "mixed": [PHONE, 5],
    "contacts": [{"detail": {"email": EMAIL}}, {"detail": {"email": NAME}}],
    "dated": [{"v": DOB}, {"v": 5}],
}


def entry(data: dict[str, Any] | None = None) -> Entry:
    canon = canonicalize(dict(data or PATIENT))
    return Entry(
        integration_id=INTEGRATION.id,
        patient_id=str(canon["id"]),
        data=canon,
        content_hash=content_hash(canon),
        fetched_at=NOW,
    )


def previous() -> PatientState:
    e = entry()
    return PatientState(
        integration_id=e.integration_id,
        patient_id=e.patient_id,
        content_hash="before",
        entry=e.data,
        outcome="written",
        updated_at=NOW,
    )


def texts(exc: BaseException) -> list[str]:
    """Every text an error becomes: its str and repr, the whole formatted traceback (what a
    log line with exc_info prints) and the reason the consumer stores in a dead letter."""
    return [
        str(exc),
        repr(exc),
        "".join(traceback.format_exception(exc)),
        f"{type(exc).__name__}: {exc}",
    ]


def assert_no_phi(exc: BaseException) -> None:
    for text in texts(exc):
        leaked = [v for v in PHI if v.lower() in text.lower()]
        assert not leaked, f"{leaked} in {text!r}"


def plan(step: dict[str, Any], **extra: Any) -> PlanAgent:
    base = {"target": "warehouse", "operation": "upsert_row"}
    args = {
        "table": {"const": "patients"},
        "key": {"expr": "entry.id"},
        "patient_id": {"expr": "entry.id"},
    }
    return PlanAgent(
        CompiledPlan.model_validate(
            {
                "integration": INTEGRATION.id,
                "instructions_sha256": "0" * 64,
                "operations": [{**base, **step, "args": {**args, **step.get("args", {})}}],
                **extra,
            }
        )
    )


def values(spec: dict[str, Any]) -> dict[str, Any]:
    return {"args": {"values": {"fields": {"phone": spec}}}}


# Expressions that fail on the entry's values; several make jmespath quote them.
FAILING_EXPRESSIONS = {
    "type error on a phone": "abs(entry.phone_number)",
    "type error on a name": "join(', ', entry.full_name)",
    "type error in a plan function": "within_days(entry.dob, entry.email)",
    "mixed array": "max(entry.mixed)",
    "sort_by on objects": "sort_by(entry.contacts, &detail)",
    "sort_by on mixed keys": "sort_by(entry.dated, &v)",
    "ordering a string with a number": "entry.dob < length(entry.mixed)",
    "arity": "abs(entry.phone_number, entry.email)",
}


@pytest.mark.parametrize("expr", FAILING_EXPRESSIONS.values(), ids=FAILING_EXPRESSIONS.keys())
@pytest.mark.parametrize("place", ["value", "when", "for_each", "skip_when", "for_each_removed"])
def test_a_failing_expression_names_its_place_never_the_value(expr: str, place: str) -> None:
    if place == "value":
        agent = plan(values({"expr": expr}))
    elif place == "skip_when":
        agent = plan({}, skip_when=expr)
    elif place == "for_each_removed":
        # evaluated on the entry itself (not the plan context): the same names, unprefixed
        agent = plan({"for_each_removed": expr.replace("entry.", "")})
    else:
        agent = plan({place: expr})
    with pytest.raises(FatalError) as info:
        agent.decide(INTEGRATION, entry(), previous(), as_of=NOW)
    assert_no_phi(info.value)
    where = "skip_when" if place == "skip_when" else "operations[0] (warehouse.upsert_row)"
    assert where in str(info.value)
    if place == "value":
        assert "args.values.fields.phone" in str(info.value)
    # the same error, as decide_many hands it to the pipeline (one slot per entry)
    (slot,) = agent.decide_many(INTEGRATION, [(entry(), previous())], as_of=NOW)
    assert isinstance(slot, FatalError)
    assert_no_phi(slot)


def test_the_reason_says_which_function_and_types_failed() -> None:
    with pytest.raises(FatalError) as info:
        plan(values({"expr": "abs(entry.phone_number)"})).decide(
            INTEGRATION, entry(), None, as_of=NOW
        )
    assert "abs() received string, expected number" in str(info.value)


def test_a_transform_failing_on_a_value_names_the_transform_never_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(value: Any) -> Any:
        raise ValueError(f"cannot read {value!r}")  # a transform quoting its input

    monkeypatch.setitem(TRANSFORMS, "explode", explode)
    agent = plan(values({"expr": "entry.phone_number", "transforms": ["strip", "explode"]}))
    with pytest.raises(FatalError) as info:
        agent.decide(INTEGRATION, entry(), None, as_of=NOW)
    assert_no_phi(info.value)
    assert "transform 'explode' failed: ValueError" in str(info.value)
    assert "args.values.fields.phone" in str(info.value)


def test_a_transform_with_a_bad_parameter_fails_on_the_value_without_it() -> None:
    agent = plan(values({"expr": "entry.mixed", "transforms": [{"name": "join", "sep": 5}]}))
    with pytest.raises(FatalError) as info:
        agent.decide(INTEGRATION, entry(), None, as_of=NOW)
    assert_no_phi(info.value)


def write(args: dict[str, Any], target: str = "warehouse", operation: str = "upsert_row"):
    return WritePlan(
        patient_id="4242",
        operations=(WriteOperation(target=target, operation=operation, args=args),),
    )


GOOD_ARGS = {"table": "patients", "key": "4242", "patient_id": "4242", "values": {}}
BAD_PLANS = {
    "value of the wrong type": write({**GOOD_ARGS, "values": {"phone": {"n": PHONE}}}),
    "key too long": write({**GOOD_ARGS, "key": (NAME + PHONE) * 5}),
    "key not a string": write({**GOOD_ARGS, "key": [NAME, DOB]}),
    "table not an identifier": write({**GOOD_ARGS, "table": EMAIL}),
    "another patient": write({**GOOD_ARGS, "patient_id": PHONE}),
    "a value where a column name goes": write({**GOOD_ARGS, "values": {EMAIL: "x"}}),
    "a value where the operation goes": write(GOOD_ARGS, operation=PHONE),
    "a value where the target goes": write(GOOD_ARGS, target=EMAIL),
}


@pytest.mark.parametrize("bad", list(BAD_PLANS.values()), ids=list(BAD_PLANS))
def test_plan_validation_names_fields_never_values(bad: WritePlan) -> None:
    connectors = {"warehouse": MemoryConnector("warehouse")}
    with pytest.raises(PlanValidationError) as info:
        validate_plan(bad, entry(), connectors)
    assert_no_phi(info.value)


BAD_ANSWERS = {
    "action": {"action": NAME, "rationale": "", "operations": []},
    "rationale too long": {"action": "write", "rationale": NAME * 100, "operations": []},
    "rationale not text": {"action": "write", "rationale": {"dob": DOB}, "operations": []},
    "operations not a list": {"action": "write", "rationale": "", "operations": PHONE},
    "a key that is a value": {"action": "write", "rationale": "", "operations": [], EMAIL: 1},
    "an operation missing args": {
        "action": "write",
        "rationale": "",
        "operations": [{"target": NAME, "operation": DOB}],
    },
    "args not an object": {
        "action": "write",
        "rationale": "",
        "operations": [{"target": "warehouse", "operation": "upsert_row", "args": PHONE}],
    },
}


@pytest.mark.parametrize("bad", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
def test_a_malformed_model_answer_is_refused_without_its_values(bad: dict[str, Any]) -> None:
    with pytest.raises(PlanValidationError) as info:
        parse_answer(bad, "4242", backend="claude")
    assert_no_phi(info.value)
    assert "tool input does not match the schema" in str(info.value)


# -- through the consumer: the dead letter it stores ---------------------------------------


def _healthie(request: httpx2.Request) -> httpx2.Response:
    body = json.loads(request.content)
    variables = body.get("variables") or {}
    data = {f"p{i}": dict(PATIENT) for i in range(len(variables))}
    return httpx2.Response(200, json={"data": data})


FAILING_PLANS = {
    "jmespath type error": values({"expr": "abs(entry.phone_number)"}),
    "invalid arguments": {"args": {"key": {"expr": "entry.contacts"}}},
    "another patient": {"args": {"patient_id": {"expr": "entry.phone_number"}}},
}


@pytest.mark.parametrize("step", FAILING_PLANS.values(), ids=FAILING_PLANS.keys())
def test_the_dead_letter_of_a_failing_plan_holds_no_patient_value(
    tmp_path: Path, step: dict[str, Any]
) -> None:
    path = tmp_path / "failing.plan.json"
    path.write_text(plan(step).plan.model_dump_json(), encoding="utf-8")
    runtime = demo_runtime(tmp_path, http_transport=httpx2.MockTransport(_healthie))
    try:
        integration = runtime.integrations[INTEGRATION.id]
        runtime.integrations[INTEGRATION.id] = integration.model_copy(
            update={"agent": integration.agent.model_copy(update={"plan": path})}
        )
        item = WorkItem(
            integration_id=INTEGRATION.id, patient_id="4242", flush_id="f", dirty_since=NOW
        )
        runtime.queue.publish_many(WORK_TOPIC, [(item.model_dump_json().encode(), {})])
        counts = drain(runtime)
        assert counts.dead_lettered == 1
        (dead,) = runtime.queue.pull(WORK_DLQ_SUBSCRIPTION)
        body = json.loads(dead.data)
        # The body keeps the computed write plan (its arguments are the patient's data, by
        # design, for a replay without the agent); every other part must be ids and kinds.
        body.pop("plan", None)
        stored = [
            json.dumps(body),
            json.dumps(dict(dead.attributes)),
            *(d.model_dump_json() for d in runtime.state.list_dead_letters()),
        ]
        assert dead.attributes["error"]  # the reason is there, and says what failed
        for text in stored:
            leaked = [v for v in PHI if v.lower() in text.lower()]
            assert not leaked, f"{leaked} in {text!r}"
    finally:
        runtime.close()


def test_every_error_here_is_an_engine_error() -> None:
    # the consumer settles engine errors by kind; anything else would be "unexpected"
    for expr in FAILING_EXPRESSIONS.values():
        (slot,) = plan(values({"expr": expr})).decide_many(
            INTEGRATION, [(entry(), None)], as_of=NOW
        )
        assert isinstance(slot, HealthieSyncError), expr


class _Cat(BaseModel):
    kind: Literal["cat"]


class _Dog(BaseModel):
    kind: Literal["dog"]


class _Quoting(BaseModel):
    """A model whose errors quote their input: a validator's own message, a union's tag."""

    model_config = ConfigDict(extra="forbid")

    phone: str
    kind: Annotated[_Cat | _Dog, Field(discriminator="kind")] | None = None

    @field_validator("phone")
    @classmethod
    def _digits(cls, value: str) -> str:
        raise ValueError(f"{value} is not a phone number")


def test_describe_validation_says_types_where_messages_quote_the_input() -> None:
    with pytest.raises(ValidationError) as info:
        _Quoting.model_validate({"phone": PHONE, "kind": {"kind": NAME}, DOB: 1})
    assert PHONE in str(info.value)  # pydantic's own text does quote it
    text = describe_validation(info.value)
    assert not [v for v in PHI if v in text], text
    assert "phone: value_error" in text
    assert "kind: union_tag_invalid" in text
    assert "<?>: Extra inputs are not permitted" in text
