"""The queue contract, run against every backend: SQLite (memory and file) and the Pub/Sub emulator.

Every backend gets the same subscription specs. Where Pub/Sub's limits change the outcome
(ack deadline at least 10 s, at least 5 delivery attempts, delivery counts only with a
dead-letter policy, its own dead-letter attribute names), the expectation is a per-backend fact
in ``Env`` rather than a weaker assertion. Names carry a per-test suffix because the tests share
one emulator.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.core.errors import ConfigurationError, QueueUnavailable
from app.queue.base import CountingQueue, Message, Queue, SubscriptionSpec
from app.queue.pubsub import PubSubQueue, filter_expression
from app.queue.sqlite import SqliteQueue
from tests.pubsub_emulator import PROJECT, pubsub_emulator  # noqa: F401 - the fixture

REQUESTED_LEASE = 1  # seconds; Pub/Sub raises it to 10
LONG_LEASE = 600  # seconds: the ``long`` subscription's ack deadline, never waited out here
REQUESTED_ATTEMPTS = 2  # Pub/Sub raises it to 5


@dataclass(frozen=True)
class Env:
    """A queue with topic ``topic`` → subscriptions ``all`` (lease, dead letters), ``daily``
    (filtered) and ``long`` (a 600 s ack deadline), and ``dlq_topic`` → ``dlq``; plus what this
    backend makes of those specs."""

    queue: Queue
    backend: str
    suffix: str
    lease_seconds: int  # effective ack deadline of ``all``
    max_attempts: int  # effective deliveries of ``all`` before dead-lettering
    counts_without_dead_letter_policy: bool  # does ``daily`` report delivery_attempt > 1?
    dead_letter_source_key: str  # attribute naming the source subscription on a dead letter
    heartbeat_seconds: int  # the shortest heartbeat horizon the consumer can use here

    @property
    def long(self) -> str:
        return self.name("long")

    def name(self, base: str) -> str:
        return f"{base}-{self.suffix}"

    @property
    def topic(self) -> str:
        return self.name("t")

    @property
    def dlq_topic(self) -> str:
        return self.name("dlq-t")

    @property
    def all(self) -> str:
        return self.name("all")

    @property
    def daily(self) -> str:
        return self.name("daily")

    @property
    def dlq(self) -> str:
        return self.name("dlq")


BACKENDS = ["sqlite-memory", "sqlite-file", pytest.param("pubsub", marks=pytest.mark.pubsub)]


@pytest.fixture(params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path) -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:10]
    queue: Queue
    facts: dict[str, Any]
    if request.param == "pubsub":
        request.getfixturevalue("pubsub_emulator")
        queue = PubSubQueue(project=PROJECT, publish_timeout=10.0)
        facts = dict(
            lease_seconds=10,
            max_attempts=5,
            counts_without_dead_letter_policy=False,
            dead_letter_source_key="CloudPubSubDeadLetterSourceSubscription",
            heartbeat_seconds=10,  # Settings.work_heartbeat_seconds' minimum
        )
    else:
        queue = SqliteQueue(":memory:" if request.param == "sqlite-memory" else tmp_path / "q.db")
        facts = dict(
            lease_seconds=REQUESTED_LEASE,
            max_attempts=REQUESTED_ATTEMPTS,
            counts_without_dead_letter_policy=True,
            dead_letter_source_key="dead_letter_source_subscription",
            heartbeat_seconds=1,
        )
    e = Env(queue=queue, backend=request.param, suffix=suffix, **facts)
    queue.ensure_topic(e.topic)
    queue.ensure_topic(e.dlq_topic)
    queue.ensure_subscription(SubscriptionSpec(name=e.dlq, topic=e.dlq_topic))
    queue.ensure_subscription(
        SubscriptionSpec(
            name=e.all,
            topic=e.topic,
            ack_deadline_seconds=REQUESTED_LEASE,
            max_delivery_attempts=REQUESTED_ATTEMPTS,
            dead_letter_topic=e.dlq_topic,
        )
    )
    queue.ensure_subscription(
        SubscriptionSpec(name=e.daily, topic=e.topic, filter={"cadence": "daily"})
    )
    queue.ensure_subscription(
        SubscriptionSpec(
            name=e.long,
            topic=e.topic,
            ack_deadline_seconds=LONG_LEASE,
            max_delivery_attempts=REQUESTED_ATTEMPTS,
            dead_letter_topic=e.dlq_topic,
        )
    )
    yield e
    queue.close()


def pull_n(queue: Queue, subscription: str, n: int, timeout: float = 5.0) -> list[Message]:
    """Pull until ``n`` messages arrived (a pull may return fewer than are waiting)."""
    got: list[Message] = []
    until = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < until:
        got.extend(queue.pull(subscription, n - len(got)))
    return got


def test_publish_fans_out_by_filter_and_ack_removes(env):
    q = env.queue
    q.publish(env.topic, b"a", {"cadence": "daily"})
    q.publish(env.topic, b"b", {"cadence": "hourly"})
    assert sorted(m.data for m in pull_n(q, env.all, 2)) == [b"a", b"b"]
    daily = pull_n(q, env.daily, 1)
    assert [m.data for m in daily] == [b"a"]
    assert daily[0].attributes == {"cadence": "daily"}
    q.ack(env.daily, [daily[0].ack_id])
    assert q.pull(env.daily) == []  # b never reached it, a is gone


def test_excluded_messages_never_make_a_pull_look_empty(env):
    # The flusher stops draining at the first empty pull.
    q = env.queue
    q.publish_many(env.topic, [(b"h", {"cadence": "hourly"})] * 3 + [(b"d", {"cadence": "daily"})])
    assert [m.data for m in q.pull(env.daily, 1)] == [b"d"]


def test_leased_messages_are_invisible_until_deadline_or_nack(env):
    q = env.queue
    q.publish(env.topic, b"x")
    first = pull_n(q, env.all, 1)
    assert [m.delivery_attempt for m in first] == [1]
    assert q.pull(env.all) == []
    q.nack(env.all, [first[0].ack_id])
    again = pull_n(q, env.all, 1)
    assert [(m.data, m.delivery_attempt) for m in again] == [(b"x", 2)]
    assert again[0].message_id == first[0].message_id


def test_expired_lease_redelivers(env):
    q = env.queue
    q.publish(env.topic, b"x")
    assert len(pull_n(q, env.all, 1)) == 1
    leased_at = time.monotonic()
    assert q.pull(env.all) == []  # still leased
    time.sleep(max(0.0, env.lease_seconds + 0.1 - (time.monotonic() - leased_at)))
    redelivered = pull_n(q, env.all, 1, timeout=5.0)
    assert [m.delivery_attempt for m in redelivered] == [2]


def test_nack_with_delay_hides_the_message_for_that_long(env):
    q = env.queue
    q.publish(env.topic, b"x")
    (m,) = pull_n(q, env.all, 1)
    q.nack(env.all, [m.ack_id], delay_seconds=1.5)  # Pub/Sub has whole seconds: never less
    nacked_at = time.monotonic()
    assert q.pull(env.all) == []
    (again,) = pull_n(q, env.all, 1, timeout=6.0)
    assert time.monotonic() - nacked_at >= 1.45
    assert (again.data, again.delivery_attempt) == (b"x", 2)


def test_extend_keeps_a_lease_past_its_ack_deadline(env):
    """A worker still on a message (a Message Batch pending) extends its lease: the message
    stays invisible past the subscription's deadline, and the first lease's ack still works."""
    q = env.queue
    q.publish(env.topic, b"x")
    (m,) = pull_n(q, env.all, 1)
    leased_at = time.monotonic()
    for _ in range(3):  # extend at half the deadline, three times: 1.5 deadlines past the first
        time.sleep(env.lease_seconds / 2)
        q.extend(env.all, [m.ack_id], env.lease_seconds)
    assert time.monotonic() - leased_at > env.lease_seconds + 0.2
    assert q.pull(env.all) == []  # still leased, not redelivered
    q.ack(env.all, [m.ack_id])
    time.sleep(env.lease_seconds + 0.5)
    assert q.pull(env.all) == []  # acked with the extended lease: gone for good


def test_extend_ignores_settled_messages(env):
    """Extending an acked or nacked message changes nothing: a nacked one is still offered."""
    q = env.queue
    q.publish_many(env.topic, [(b"acked", {}), (b"nacked", {})])
    got = {m.data: m for m in pull_n(q, env.all, 2)}
    q.ack(env.all, [got[b"acked"].ack_id])
    q.nack(env.all, [got[b"nacked"].ack_id])
    q.extend(env.all, [got[b"acked"].ack_id, got[b"nacked"].ack_id], env.lease_seconds)
    again = pull_n(q, env.all, 1, timeout=env.lease_seconds / 2)  # before an extension ends
    assert [(m.data, m.delivery_attempt) for m in again] == [(b"nacked", 2)]


def heartbeat(queue: Queue, env: Env, ack_id: str, beats: int) -> float:
    """Hold ``ack_id`` on ``long`` as the consumer does: cut its lease to the heartbeat
    horizon, then renew it every third of the horizon, ``beats`` times. Returns the
    ``time.monotonic()`` of the last renewal."""
    queue.extend(env.long, [ack_id], env.heartbeat_seconds)
    last = time.monotonic()
    for _ in range(beats):
        time.sleep(env.heartbeat_seconds / 3)
        queue.extend(env.long, [ack_id], env.heartbeat_seconds)
        last = time.monotonic()
    return last


def test_a_holder_that_stops_heartbeating_loses_the_message_within_the_horizon(env):
    """A worker killed while holding a message stops renewing it: the message comes back one
    heartbeat horizon after the last renewal, not after the subscription's 600 s deadline,
    and the renewals were not deliveries (the redelivery is attempt 2)."""
    q = env.queue
    q.publish(env.topic, b"x")
    (m,) = pull_n(q, env.long, 1)
    last = heartbeat(q, env, m.ack_id, beats=4)  # then the holder "dies"
    assert q.pull(env.long) == []  # within the horizon: still its
    (again,) = pull_n(q, env.long, 1, timeout=env.heartbeat_seconds + 5)
    recovered = time.monotonic() - last
    assert recovered <= env.heartbeat_seconds + 3  # one horizon (and the backend's tick)
    assert (again.message_id, again.delivery_attempt) == (m.message_id, 2)


def test_a_heartbeating_holder_keeps_the_message_and_its_ack(env):
    """While the holder renews every third of the horizon, nobody else is handed the message,
    for several horizons; its first ack id still acknowledges it for good."""
    q = env.queue
    q.publish(env.topic, b"x")
    (m,) = pull_n(q, env.long, 1)
    started = time.monotonic()
    q.extend(env.long, [m.ack_id], env.heartbeat_seconds)
    while time.monotonic() - started < 3 * env.heartbeat_seconds:
        time.sleep(env.heartbeat_seconds / 3)
        assert q.pull(env.long) == []
        q.extend(env.long, [m.ack_id], env.heartbeat_seconds)
    q.ack(env.long, [m.ack_id])
    time.sleep(env.heartbeat_seconds + 0.5)
    assert q.pull(env.long) == []


def test_exhausted_messages_go_to_the_dead_letter_topic(env):
    q = env.queue
    q.publish(env.topic, b"x", {"k": "v"})
    for attempt in range(1, env.max_attempts + 1):
        (m,) = pull_n(q, env.all, 1)
        assert m.delivery_attempt == attempt
        q.nack(env.all, [m.ack_id])
    assert q.pull(env.all) == []
    (dead,) = pull_n(q, env.dlq, 1, timeout=10.0)
    assert dead.data == b"x"
    assert dead.attributes["k"] == "v"
    assert dead.attributes[env.dead_letter_source_key] == env.all


def test_delivery_attempt_is_counted_only_where_the_backend_counts_it(env):
    q = env.queue
    q.publish(env.topic, b"d", {"cadence": "daily"})
    (m,) = pull_n(q, env.daily, 1)
    q.nack(env.daily, [m.ack_id])
    (again,) = pull_n(q, env.daily, 1)
    # Pub/Sub reports attempts only on subscriptions with a dead-letter policy.
    assert [m.delivery_attempt, again.delivery_attempt] == (
        [1, 2] if env.counts_without_dead_letter_policy else [1, 1]
    )


def test_ensure_is_idempotent_and_unknown_names_fail(env):
    q = env.queue
    q.ensure_topic(env.topic)
    q.ensure_subscription(SubscriptionSpec(name=env.all, topic=env.topic))
    q.ensure_subscription(
        SubscriptionSpec(name=env.daily, topic=env.topic, filter={"cadence": "daily"})
    )
    q.publish(env.topic, b"still-filtered", {"cadence": "hourly"})
    assert q.pull(env.daily) == []
    with pytest.raises(ConfigurationError):
        q.publish(env.name("missing"), b"x")
    with pytest.raises(ConfigurationError):
        q.pull(env.name("missing"))
    with pytest.raises(ConfigurationError):
        q.ensure_subscription(SubscriptionSpec(name=env.name("orphan"), topic=env.name("none")))


def test_publish_many_returns_ids_in_order(env):
    q = env.queue
    ids = q.publish_many(env.topic, [(b"1", {}), (b"2", {})])
    assert len(set(ids)) == 2
    # Delivery order is not promised (Pub/Sub has none without ordering keys); the ids are.
    assert {m.message_id: m.data for m in pull_n(q, env.all, 2)} == {ids[0]: b"1", ids[1]: b"2"}


def test_messages_carry_their_publish_time_in_utc(env):
    q = env.queue
    before = datetime.now(UTC)
    q.publish(env.topic, b"x")
    (m,) = pull_n(q, env.all, 1)
    assert m.publish_time.utcoffset() == timedelta(0)
    slack = timedelta(seconds=2)
    assert before - slack <= m.publish_time <= datetime.now(UTC) + slack


# -- Pub/Sub specifics -----------------------------------------------------------------------


def test_counting_a_subscription_leases_nothing(env):
    """Where a backend can count held messages (``CountingQueue``: the dead-letter listing's
    drift check), counting is a read: the next pull still gets every message, first delivery."""
    queue = env.queue
    if not isinstance(queue, CountingQueue):
        assert env.backend == "pubsub"  # backlog is a Cloud Monitoring metric there
        return
    counter: CountingQueue = queue
    env.queue.publish_many(env.topic, [(b"a", {}), (b"b", {})])
    assert [counter.depth(env.all), counter.depth(env.all)] == [2, 2]
    leased = pull_n(env.queue, env.all, 2)
    assert sorted(m.delivery_attempt for m in leased) == [1, 1]
    assert counter.depth(env.all) == 2  # leased messages are still held
    env.queue.ack(env.all, [m.ack_id for m in leased])
    assert counter.depth(env.all) == 0


def test_filter_expression_quotes_keys_and_values():
    assert filter_expression({}) == ""
    assert filter_expression({"cadence": "daily", "a-b_1": "x"}) == (
        'attributes.a-b_1 = "x" AND attributes.cadence = "daily"'
    )
    assert filter_expression({"odd key": 'say "hi"\\\n'}) == (
        'attributes."odd key" = "say \\"hi\\"\\\\\\x0a"'
    )
    with pytest.raises(ConfigurationError):
        filter_expression({"k": "v" * 300})


@pytest.mark.pubsub
@pytest.mark.usefixtures("pubsub_emulator")
def test_pubsub_specs_are_clamped_to_pubsub_limits():
    import google.cloud.pubsub_v1 as pubsub_v1
    from google.pubsub_v1 import types

    suffix = uuid.uuid4().hex[:10]
    q = PubSubQueue(project=PROJECT)
    raw = pubsub_v1.SubscriberClient()
    try:
        q.ensure_topic(f"t-{suffix}")
        q.ensure_topic(f"dlq-{suffix}")
        q.ensure_subscription(
            SubscriptionSpec(
                name=f"s-{suffix}",
                topic=f"t-{suffix}",
                ack_deadline_seconds=1,
                max_delivery_attempts=2,
                dead_letter_topic=f"dlq-{suffix}",
                retention_seconds=60,
            )
        )
        sub = raw.get_subscription(subscription=f"projects/{PROJECT}/subscriptions/s-{suffix}")
        assert sub.ack_deadline_seconds == 10
        assert sub.dead_letter_policy.max_delivery_attempts == 5
        assert sub.dead_letter_policy.dead_letter_topic == f"projects/{PROJECT}/topics/dlq-{suffix}"
        assert sub.message_retention_duration.total_seconds() == 600
        pb = types.Subscription.pb(sub)
        assert pb.HasField("expiration_policy")
        assert not pb.expiration_policy.HasField("ttl")
    finally:
        raw.close()
        q.close()


@pytest.mark.pubsub
@pytest.mark.usefixtures("pubsub_emulator")
def test_pubsub_quoted_filter_is_accepted_and_applied():
    suffix = uuid.uuid4().hex[:10]
    q = PubSubQueue(project=PROJECT)
    try:
        q.ensure_topic(f"t-{suffix}")
        wanted = {"odd key": 'say "hi" \\ there', "cadence": "daily"}
        q.ensure_subscription(
            SubscriptionSpec(name=f"s-{suffix}", topic=f"t-{suffix}", filter=wanted)
        )
        q.publish(f"t-{suffix}", b"no", {"odd key": "say hi", "cadence": "daily"})
        q.publish(f"t-{suffix}", b"yes", wanted)
        assert [m.data for m in pull_n(q, f"s-{suffix}", 1)] == [b"yes"]
        assert q.pull(f"s-{suffix}") == []
    finally:
        q.close()


@pytest.mark.pubsub
@pytest.mark.usefixtures("pubsub_emulator")
def test_pubsub_emulator_applies_subscription_filters_itself():
    """The server, not this backend's own check, drops what the filter excludes."""
    import google.cloud.pubsub_v1 as pubsub_v1
    from google.api_core.exceptions import DeadlineExceeded

    suffix = uuid.uuid4().hex[:10]
    q = PubSubQueue(project=PROJECT)
    raw = pubsub_v1.SubscriberClient()
    path = f"projects/{PROJECT}/subscriptions/s-{suffix}"
    try:
        q.ensure_topic(f"t-{suffix}")
        q.ensure_subscription(
            SubscriptionSpec(name=f"s-{suffix}", topic=f"t-{suffix}", filter={"cadence": "daily"})
        )
        assert raw.get_subscription(subscription=path).filter == 'attributes.cadence = "daily"'
        q.publish_many(
            f"t-{suffix}",
            [(b"hourly", {"cadence": "hourly"}), (b"daily", {"cadence": "daily"}), (b"none", {})],
        )
        seen: list[bytes] = []
        until = time.monotonic() + 5
        while time.monotonic() < until:
            try:
                reply = raw.pull(request={"subscription": path, "max_messages": 10}, timeout=1.5)
            except DeadlineExceeded:
                break
            if not reply.received_messages:
                break
            seen += [r.message.data for r in reply.received_messages]
        assert b"daily" in seen
        if seen != [b"daily"]:
            # Emulators before Cloud SDK 555.0.0 keep a filter without applying it. The server
            # is present (so this is not a missing service that should fail CI): it is a known
            # emulator limitation, and PubSubQueue.pull enforces the filter itself (tested by
            # the contract tests above on this same emulator).
            pytest.skip(
                f"this Pub/Sub emulator does not apply subscription filters (it "
                f"delivered {sorted(seen)} through cadence=daily); needs Cloud SDK >= 555"
            )
    finally:
        raw.close()
        q.close()


@pytest.mark.pubsub
@pytest.mark.usefixtures("pubsub_emulator")
def test_pubsub_close_is_final_and_leaves_injected_clients_open():
    import google.cloud.pubsub_v1 as pubsub_v1

    suffix = uuid.uuid4().hex[:10]
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    q = PubSubQueue(project=PROJECT, publisher=publisher, subscriber=subscriber)
    try:
        q.ensure_topic(f"t-{suffix}")
        q.ensure_subscription(SubscriptionSpec(name=f"s-{suffix}", topic=f"t-{suffix}"))
        q.close()
        q.close()
        with pytest.raises(QueueUnavailable):
            q.publish(f"t-{suffix}", b"x")
        with pytest.raises(QueueUnavailable):
            q.pull(f"s-{suffix}")
        publisher.publish(f"projects/{PROJECT}/topics/t-{suffix}", b"x").result(timeout=10)
        reply = subscriber.pull(
            request={
                "subscription": f"projects/{PROJECT}/subscriptions/s-{suffix}",
                "max_messages": 1,
            },
            timeout=5,
        )
        assert [r.message.data for r in reply.received_messages] == [b"x"]
    finally:
        publisher.stop()
        publisher.transport.close()
        subscriber.close()


def test_pubsub_unanswered_publish_times_out_as_queue_unavailable(monkeypatch):
    """A server that accepts connections but never answers: publish gives up on time."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{silent.getsockname()[1]}")
        q = PubSubQueue(project=PROJECT, publish_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(QueueUnavailable):
            q.publish("t", b"x")
        assert time.monotonic() - started < 4
        started = time.monotonic()
        q.close()
        assert time.monotonic() - started < 2


def test_pubsub_unreachable_server_is_queue_unavailable(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{port}")
    q = PubSubQueue(project=PROJECT, publish_timeout=1.0)
    try:
        for call in (
            lambda: q.publish("t", b"x"),
            lambda: q.pull("s"),
            lambda: q.ack("s", ["a"]),
            lambda: q.ensure_topic("t"),
        ):
            started = time.monotonic()
            with pytest.raises(QueueUnavailable):
                call()
            assert time.monotonic() - started < 4
        with pytest.raises(ConfigurationError):  # refused before any call
            q.publish("t", b"x", {"timeout": "5"})
    finally:
        q.close()


def test_pubsub_without_credentials_is_a_configuration_error(monkeypatch, tmp_path):
    for name in ("PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud application-default login
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # and no metadata server to ask
    with pytest.raises(ConfigurationError, match="credentials"):
        PubSubQueue(project="p")


# -- SQLite specifics ------------------------------------------------------------------------


def test_sqlite_locked_database_is_queue_unavailable_after_the_busy_timeout(tmp_path):
    """Another process holding the write lock past ``busy_timeout``: every call that writes is
    QueueUnavailable (retry later, 503 at the API) after that long, never a raw SQLite error."""
    import sqlite3

    path = tmp_path / "q.db"
    q = SqliteQueue(path, busy_timeout=0.2)
    q.ensure_topic("t")
    q.ensure_subscription(SubscriptionSpec(name="s", topic="t"))
    q.publish("t", b"x")
    (m,) = q.pull("s")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        for call in (
            lambda: q.publish("t", b"y"),
            lambda: q.pull("s"),
            lambda: q.ack("s", [m.ack_id]),
            lambda: q.nack("s", [m.ack_id]),
            lambda: q.extend("s", [m.ack_id], 10),
            lambda: q.ensure_topic("t2"),
        ):
            started = time.monotonic()
            with pytest.raises(QueueUnavailable, match="SQLITE_BUSY"):
                call()
            assert time.monotonic() - started < 5  # the busy timeout, not the default 30 s
    finally:
        other.execute("ROLLBACK")
        other.close()
    q.ack("s", [m.ack_id])  # the lock gone, the queue works again
    assert q.depth("s") == 0
    q.close()


def test_pubsub_publishes_in_pages_within_the_request_limits():
    # Pub/Sub refuses a Publish request over 1,000 messages or 10 MB: pages stay under both
    # and keep every message, in order
    from app.queue import pubsub

    small = [(b"x", {"k": "v"})] * 2_500
    assert [len(p) for p in pubsub._pages(small)] == [1_000, 1_000, 500]
    big: list[tuple[bytes, dict[str, str]]] = [(b"y" * 1_000_000, {})] * 20
    pages = pubsub._pages(big)
    assert all(sum(len(d) for d, _ in p) <= pubsub._PAGE_BYTES for p in pages)
    assert [m for p in pages for m in p] == big
    assert pubsub._pages([]) == []
