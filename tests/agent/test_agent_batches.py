"""Message Batches through the real SDK against the fake API, and decide_many on every agent."""

from __future__ import annotations

from typing import cast

import pytest

from app.agent.base import BatchAgent, decide_many
from app.agent.batches import PollPolicy, custom_id
from app.agent.claude import ClaudeAgent
from app.agent.plan import PlanAgent
from app.core.config import load_integration
from app.core.errors import FatalError, PlanValidationError, UpstreamUnavailable
from app.core.models import Cadence, WritePlan
from connectors.memory import MemoryConnector
from tests.fake_anthropic import (
    DEMO_CONFIG,
    DEMO_PLAN,
    FakeAnthropic,
    demo_entry,
    plan_model,
    serve,
)

pytestmark = pytest.mark.e2e

INTEGRATION = load_integration(DEMO_CONFIG)  # daily cadence, use_batches = true
TARGETS = {"warehouse": MemoryConnector("warehouse")}
PLAN = PlanAgent.from_file(DEMO_PLAN)
FAST = PollPolicy(initial=0.01, factor=2.0, maximum=0.05, timeout=30)


def items(n: int):
    return [(demo_entry(str(100 + i)), None) for i in range(n)]


def make_agent(client, poll=FAST) -> ClaudeAgent:
    return ClaudeAgent(client, INTEGRATION, TARGETS, poll=poll, sleep=lambda s: None)


def test_one_batch_polled_until_ended_and_matched_back_by_custom_id():
    fake = FakeAnthropic(plan_model(), batch_polls=3)
    work = items(6)
    with serve(fake) as client:
        agent = make_agent(client)
        plans = agent.decide_many(INTEGRATION, work)
    for (entry, _), plan in zip(work, plans, strict=True):
        assert isinstance(plan, WritePlan)
        assert plan.patient_id == entry.patient_id
        assert plan.operations == PLAN.decide(INTEGRATION, entry, None).operations
    assert fake.counts["messages"] == 0
    assert fake.counts["batches.create"] == 1
    assert fake.counts["batches.results"] == 1
    assert fake.counts["batches.delete"] == 1  # results read, nothing left at Anthropic
    assert all(b.get("deleted") for b in fake.batches.values())
    assert fake.counts["batches.retrieve"] == 3 + 1 + 1  # in progress x3, ended, results' own
    totals = agent.usage.totals("demo-clinic")
    assert totals.batch.calls == 6
    assert totals.direct.calls == 0
    assert totals.batch.cache_read_input_tokens > 0
    sent = fake.batches[next(iter(fake.batches))]["requests"]
    assert [r["custom_id"] for r in sent] == [custom_id(i) for i in range(6)]


def test_errored_and_expired_items_are_retried_once_directly():
    outcomes = {custom_id(1): "errored", custom_id(3): "expired"}
    fake = FakeAnthropic(plan_model(), batch_outcome=lambda cid: outcomes.get(cid, "succeeded"))
    work = items(5)
    with serve(fake) as client:
        plans = make_agent(client).decide_many(INTEGRATION, work)
    assert all(isinstance(p, WritePlan) for p in plans)
    assert [cast(WritePlan, p).patient_id for p in plans] == [e.patient_id for e, _ in work]
    assert fake.counts["messages"] == 2


def test_a_failed_direct_retry_is_returned_in_the_items_slot():
    def outcome(cid):
        return "errored" if cid == custom_id(2) else "succeeded"

    fake = FakeAnthropic(plan_model(), batch_outcome=outcome)
    fake.fail_next(400, "invalid_request_error")
    with serve(fake) as client:
        plans = make_agent(client).decide_many(INTEGRATION, items(4))
    assert isinstance(plans[2], FatalError)
    assert all(isinstance(p, WritePlan) for i, p in enumerate(plans) if i != 2)


def test_an_invalid_batch_answer_gets_its_corrective_call_directly():
    good = plan_model()

    def model(body):
        if '"id":"101"' in body["messages"][0]["content"][0]["text"] and len(body["messages"]) == 1:
            return {"action": "write", "rationale": "", "operations": []}
        return good(body)

    fake = FakeAnthropic(model)
    with serve(fake) as client:
        plans = make_agent(client).decide_many(INTEGRATION, items(3))
    assert all(isinstance(p, WritePlan) for p in plans)
    assert fake.counts["messages"] == 1


def test_invalid_twice_in_a_batch_is_a_plan_validation_error_in_its_slot():
    fake = FakeAnthropic(lambda body: {"action": "write", "rationale": "", "operations": []})
    with serve(fake) as client:
        plans = make_agent(client).decide_many(INTEGRATION, items(2))
    assert all(isinstance(p, PlanValidationError) for p in plans)


def test_falls_back_to_direct_calls_when_batches_are_unavailable():
    fake = FakeAnthropic(plan_model(), batches_enabled=False)
    with serve(fake) as client:
        plans = make_agent(client).decide_many(INTEGRATION, items(3))
    assert all(isinstance(p, WritePlan) for p in plans)
    assert fake.counts["batches.create"] == 1
    assert fake.counts["messages"] == 3


def test_hourly_cadence_and_single_entries_go_direct():
    hourly = INTEGRATION.model_copy(update={"cadence": Cadence.HOURLY})
    fake = FakeAnthropic(plan_model())
    with serve(fake) as client:
        agent = ClaudeAgent(client, hourly, TARGETS, poll=FAST)
        agent.decide_many(hourly, items(3))
        daily = make_agent(client)
        daily.decide_many(INTEGRATION, items(1))
    assert "batches.create" not in fake.counts
    assert fake.counts["messages"] == 4


def test_a_batch_that_does_not_end_in_time_is_cancelled_and_retriable():
    fake = FakeAnthropic(plan_model(), batch_polls=1000)
    with serve(fake) as client:
        agent = make_agent(client, poll=PollPolicy(initial=1.0, timeout=0.5))
        plans = agent.decide_many(INTEGRATION, items(2))
    assert all(isinstance(p, UpstreamUnavailable) for p in plans)
    assert fake.counts["batches.cancel"] == 1


def test_decide_many_works_on_any_agent():
    work = items(3)
    assert isinstance(PLAN, BatchAgent)
    plans = decide_many(PLAN, INTEGRATION, work)
    assert [cast(WritePlan, p).patient_id for p in plans] == ["100", "101", "102"]

    class OnlyDecide:
        name = "minimal"

        def decide(self, integration, entry, previous):
            if entry.patient_id == "101":
                raise PlanValidationError("no")
            return WritePlan.skip(entry.patient_id, "nothing")

    out = decide_many(OnlyDecide(), INTEGRATION, work)
    assert isinstance(out[1], PlanValidationError)
    assert isinstance(out[0], WritePlan)
    assert isinstance(out[2], WritePlan)
