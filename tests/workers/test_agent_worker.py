"""The worker with the Claude backend over the real SDK against the local fake Messages API:
one Message Batch per pulled batch for a daily integration, direct calls for an hourly one,
zero model calls for unchanged entries, and an invalid answer dead-lettered."""

from __future__ import annotations

from typing import cast

import httpx2
import pytest

from app.agent.batches import PollPolicy
from app.agent.claude import ClaudeAgent
from app.core.models import Cadence
from app.queue.topology import WORK_DLQ_SUBSCRIPTION
from app.secrets.stores import MemorySecretStore
from app.service.serving import serve_in_thread
from tests.fake_anthropic import FakeAnthropic, plan_model
from tests.helpers import demo_runtime
from tests.workers.test_workers import FakeHealthie, work
from workers.consumer import drain


@pytest.fixture
def fake_model():
    fake = FakeAnthropic(plan_model(), batch_polls=1)
    with serve_in_thread(fake.app()) as url:
        yield fake, url


def claude_runtime(tmp_path, url, cadence: Cadence):
    rt = demo_runtime(
        tmp_path,
        http_transport=httpx2.MockTransport(FakeHealthie()),
        anthropic_api_key_secret="anthropic/key",
        anthropic_base_url=url,
    )
    cast(MemorySecretStore, rt.secrets).set("anthropic/key", "sk-ant-test")
    integration = rt.integrations["demo-clinic"]
    rt.integrations["demo-clinic"] = integration.model_copy(
        update={
            "cadence": cadence,
            "agent": integration.agent.model_copy(update={"backend": "claude"}),
        }
    )
    cast(ClaudeAgent, rt.agent("demo-clinic")).poll = PollPolicy(
        initial=0.01, factor=1.0, maximum=0.01
    )
    return rt


def test_daily_integration_uses_one_batch_and_skips_unchanged(tmp_path, fake_model):
    fake, url = fake_model
    rt = claude_runtime(tmp_path, url, Cadence.DAILY)
    work(rt, "1", "2", "3", "4")
    counts = drain(rt)
    assert (counts.processed, counts.dead_lettered) == (4, 0)
    assert fake.counts["batches.create"] == 1
    assert fake.counts["messages"] == 0
    assert rt.connectors("demo-clinic")["warehouse"].table("patients")["3"]["first_name"] == "P3"
    before = sum(fake.counts.values())
    work(rt, "1", "2", "3", "4")
    again = drain(rt)
    assert again.skipped_unchanged == 4
    assert sum(fake.counts.values()) == before  # unchanged entries cost no model call
    rt.close()


def test_hourly_integration_calls_directly_once_per_changed_entry(tmp_path, fake_model):
    fake, url = fake_model
    rt = claude_runtime(tmp_path, url, Cadence.HOURLY)
    work(rt, "1", "2", "3")
    assert drain(rt).processed == 3
    assert fake.counts["messages"] == 3
    assert fake.counts["batches.create"] == 0
    rt.close()


def test_model_writing_another_patient_is_dead_lettered(tmp_path, fake_model):
    fake, url = fake_model
    honest = fake.model

    def hijacked(body):
        answer = honest(body)
        for op in answer.get("operations", []):
            op["args"]["patient_id"] = "999"
        return answer

    fake.model = hijacked
    rt = claude_runtime(tmp_path, url, Cadence.HOURLY)
    work(rt, "1")
    counts = drain(rt)
    assert counts.dead_lettered == 1
    assert rt.connectors("demo-clinic")["warehouse"].rows == {}
    (dead,) = rt.queue.pull(WORK_DLQ_SUBSCRIPTION)
    assert dead.attributes["error_kind"] == "plan_invalid"
    rt.close()
