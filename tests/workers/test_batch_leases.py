"""Long agent batches: while a Message Batch is pending for longer than the work subscription's
ack deadline, the consumer's lease keeper extends the leases of the batch's messages (and
renews its patient leases), so no other worker is handed the same items and the batch is
submitted to Anthropic once. Real SDK, the local fake Messages API, the embedded queue with a
1 s ack deadline, two worker threads."""

from __future__ import annotations

import time
from collections import Counter
from typing import cast

import httpx2
import pytest

from app.agent.batches import PollPolicy
from app.agent.claude import ClaudeAgent
from app.core.models import Cadence
from app.queue.base import Message
from app.queue.sqlite import SqliteQueue
from app.queue.topology import WORK_SUBSCRIPTION, ensure_topology
from app.secrets.stores import MemorySecretStore
from app.service.serving import serve_in_thread
from connectors.memory import MemoryConnector
from tests.fake_anthropic import FakeAnthropic, plan_model
from tests.helpers import demo_runtime
from tests.workers.test_workers import FakeHealthie, work
from workers.loop import WorkerLoop

ACK_DEADLINE = 1  # seconds
POLL = 0.4  # seconds between batch polls
POLLS = 8  # the batch ends after POLLS * POLL = 3.2 s: three ack deadlines


class CountingQueue(SqliteQueue):
    """The embedded queue, counting how often each work message is delivered."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.deliveries: Counter[str] = Counter()

    def pull(self, subscription: str, max_messages: int = 100) -> list[Message]:
        messages = super().pull(subscription, max_messages)
        if subscription == WORK_SUBSCRIPTION:
            self.deliveries.update(m.message_id for m in messages)
        return messages


@pytest.fixture
def slow_batches():
    fake = FakeAnthropic(plan_model(), batch_polls=POLLS)
    with serve_in_thread(fake.app()) as url:
        yield fake, url


def test_a_batch_longer_than_the_ack_deadline_is_submitted_once(tmp_path, slow_batches):
    fake, url = slow_batches
    queue = CountingQueue()
    ensure_topology(queue, work_ack_deadline_seconds=ACK_DEADLINE)
    rt = demo_runtime(
        tmp_path,
        http_transport=httpx2.MockTransport(FakeHealthie()),
        queue=queue,
        anthropic_api_key_secret="anthropic/key",
        anthropic_base_url=url,
        work_ack_deadline_seconds=ACK_DEADLINE,
    )
    cast(MemorySecretStore, rt.secrets).set("anthropic/key", "sk-ant-test")
    integration = rt.integrations["demo-clinic"]
    rt.integrations["demo-clinic"] = integration.model_copy(
        update={
            "cadence": Cadence.DAILY,  # batches apply to every cadence but hourly
            "agent": integration.agent.model_copy(update={"backend": "claude"}),
        }
    )
    agent = cast(ClaudeAgent, rt.agent("demo-clinic"))
    agent.poll = PollPolicy(initial=POLL, factor=1.0, maximum=POLL)

    loop = WorkerLoop(rt, concurrency=2, batch_size=10, idle_wait=0.05)
    work(rt, "1", "2", "3", "4")
    started = time.monotonic()
    loop.start()
    try:
        warehouse = cast(MemoryConnector, rt.connectors("demo-clinic")["warehouse"])
        until = started + 30
        while len(warehouse.table("patients")) < 4 and time.monotonic() < until:
            time.sleep(0.05)
        took = time.monotonic() - started
        time.sleep(ACK_DEADLINE + 0.5)  # a lease that lapsed now would be pulled again
    finally:
        loop.stop(grace=10)
    assert set(warehouse.table("patients")) == {"1", "2", "3", "4"}
    assert took > 3 * ACK_DEADLINE  # the batch really outlived the ack deadline
    assert fake.counts["batches.create"] == 1
    assert fake.counts["messages"] == 0  # and no item was decided again directly
    assert sorted(queue.deliveries.values()) == [1, 1, 1, 1]  # each message delivered once
    assert queue.depth(WORK_SUBSCRIPTION) == 0
    rt.close()
