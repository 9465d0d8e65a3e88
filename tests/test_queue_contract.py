"""The queue contract, run against every backend (the Pub/Sub emulator joins in issue 5)."""

from __future__ import annotations

import time

import pytest

from app.queue.base import SubscriptionSpec
from app.queue.sqlite import SqliteQueue


@pytest.fixture(params=["sqlite-memory", "sqlite-file"])
def queue(request, tmp_path):
    q = SqliteQueue(":memory:" if request.param == "sqlite-memory" else tmp_path / "q.db")
    q.ensure_topic("t")
    q.ensure_topic("dlq")
    q.ensure_subscription(SubscriptionSpec(name="dlq", topic="dlq"))
    q.ensure_subscription(SubscriptionSpec(name="all", topic="t", ack_deadline_seconds=1,
                                           max_delivery_attempts=2, dead_letter_topic="dlq"))
    q.ensure_subscription(SubscriptionSpec(name="daily", topic="t", filter={"cadence": "daily"}))
    yield q
    q.close()


def test_publish_fans_out_by_filter_and_ack_removes(queue):
    queue.publish("t", b"a", {"cadence": "daily"})
    queue.publish("t", b"b", {"cadence": "hourly"})
    assert sorted(m.data for m in queue.pull("all")) == [b"a", b"b"]
    daily = queue.pull("daily")
    assert [m.data for m in daily] == [b"a"]
    assert daily[0].attributes == {"cadence": "daily"}
    queue.ack("daily", [daily[0].ack_id])
    assert queue.pull("daily") == []


def test_leased_messages_are_invisible_until_deadline_or_nack(queue):
    queue.publish("t", b"x")
    first = queue.pull("all")
    assert [m.delivery_attempt for m in first] == [1]
    assert queue.pull("all") == []
    queue.nack("all", [first[0].ack_id])
    again = queue.pull("all")
    assert [(m.data, m.delivery_attempt) for m in again] == [(b"x", 2)]


def test_expired_lease_redelivers(queue):
    queue.publish("t", b"x")
    assert len(queue.pull("all")) == 1
    time.sleep(1.1)
    assert [m.delivery_attempt for m in queue.pull("all")] == [2]


def test_exhausted_messages_go_to_the_dead_letter_topic(queue):
    queue.publish("t", b"x", {"k": "v"})
    for _ in range(2):
        (m,) = queue.pull("all")
        queue.nack("all", [m.ack_id])
    assert queue.pull("all") == []
    (dead,) = queue.pull("dlq")
    assert dead.data == b"x"
    assert dead.attributes["k"] == "v"
    assert dead.attributes["dead_letter_source_subscription"] == "all"


def test_ensure_is_idempotent_and_unknown_names_fail(queue):
    from app.errors import ConfigurationError

    queue.ensure_topic("t")
    queue.ensure_subscription(SubscriptionSpec(name="all", topic="t"))
    with pytest.raises(ConfigurationError):
        queue.publish("missing", b"x")
    with pytest.raises(ConfigurationError):
        queue.pull("missing")


def test_publish_many_returns_ids_in_order(queue):
    ids = queue.publish_many("t", [(b"1", {}), (b"2", {})])
    assert len(set(ids)) == 2
    assert [m.message_id for m in queue.pull("all")] == ids
