"""The webhook receiver's answers, through the real FastAPI app."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import sqlite3
from concurrent.futures import Future

import httpx2
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.core.errors import QueueUnavailable
from app.core.models import Cadence
from app.intake.batcher import PublishBatcher
from app.intake.dedupe import RecentDeliveries
from app.queue.sqlite import SqliteQueue
from app.queue.topology import dirty_subscription, ensure_topology
from app.service.serving import serve_in_thread
from app.state.sqlite import SqliteStateStore
from tests.helpers import demo_runtime

PATH = "/webhooks/healthie/demo-clinic"


def signed(body: bytes, secret: str = "whsec_test", path: str = PATH, query: str = ""):
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    data = f"post {path} {query} {digest} application/json {len(body)}"
    mac = hmac.new(secret.encode(), data.encode(), hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "Content-Digest": f"SHA-256={digest}",
        "Signature": f"sig1={mac}",
    }


@pytest.fixture
def runtime(tmp_path):
    rt = demo_runtime(tmp_path)
    yield rt
    rt.close()


@pytest.fixture
def client(runtime):
    return TestClient(create_app(runtime))


def body(**kw) -> bytes:
    payload = {
        "resource_id": "42",
        "resource_id_type": "User",
        "event_type": "patient.updated",
        "changed_fields": ["phone_number"],
        **kw,
    }
    return json.dumps(payload).encode()


def test_valid_webhook_is_accepted_and_published(client, runtime):
    b = body()
    response = client.post(PATH, content=b, headers=signed(b))
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "marks": 1}
    (message,) = runtime.queue.pull(dirty_subscription(Cadence.DAILY))
    assert message.attributes == {"integration": "demo-clinic", "cadence": "daily"}
    assert json.loads(message.data)["subject_id"] == "42"


def test_bad_signature_is_401_and_publishes_nothing(client, runtime):
    b = body()
    headers = signed(b, secret="wrong")
    assert client.post(PATH, content=b, headers=headers).status_code == 401
    assert runtime.queue.pull(dirty_subscription(Cadence.DAILY)) == []
    assert runtime.stats.rejected == 1


def test_unknown_integration_is_404_without_hints(client):
    response = client.post("/webhooks/healthie/other", content=body(), headers=signed(body()))
    assert response.status_code == 404
    assert "demo" not in response.text


def test_malformed_signed_body_is_400(client):
    b = b'{"resource_id": "1"}'
    assert client.post(PATH, content=b, headers=signed(b)).status_code == 400
    b = b"not json"
    assert client.post(PATH, content=b, headers=signed(b)).status_code == 400


def test_wrong_content_type_is_415(client):
    b = body()
    headers = {**signed(b), "Content-Type": "text/plain"}
    assert client.post(PATH, content=b, headers=headers).status_code == 415


def test_oversized_body_is_413(tmp_path):
    rt = demo_runtime(tmp_path, max_webhook_body_bytes=64)
    b = body(changed_fields=["x" * 100])
    assert TestClient(create_app(rt)).post(PATH, content=b, headers=signed(b)).status_code == 413
    rt.close()


def test_clinical_and_unknown_events_are_2xx_and_mark_nothing(client, runtime):
    for event in ("form_answer_group.created", "something.new"):
        b = body(event_type=event)
        assert client.post(PATH, content=b, headers=signed(b)).status_code == 202
    assert runtime.queue.pull(dirty_subscription(Cadence.DAILY)) == []


def test_failed_publish_is_503(client, runtime, monkeypatch):
    def fail(*_args, **_kw):
        raise QueueUnavailable("down")

    def failed_future(*_args, **_kw):
        future: Future = Future()
        future.set_exception(QueueUnavailable("down"))
        return future

    monkeypatch.setattr(runtime.queue, "publish_many", fail)
    monkeypatch.setattr(runtime.queue, "submit_many", failed_future)
    b = body()
    reply = client.post(PATH, content=b, headers=signed(b))
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "5"


def test_flush_route_needs_the_token(tmp_path):
    rt = demo_runtime(tmp_path, flush_token="a-real-random-token")
    c = TestClient(create_app(rt))
    assert c.post("/flush/daily").status_code == 401
    assert c.post("/flush/daily", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = c.post("/flush/daily", headers={"Authorization": "Bearer a-real-random-token"})
    assert ok.status_code == 200
    assert ok.json()["work_items"] == 0
    # credentials are checked before the cadence is parsed: nothing is echoed to a stranger
    assert c.post("/flush/monthly", headers={"Authorization": "Bearer x"}).status_code == 401
    monthly = c.post("/flush/monthly", headers={"Authorization": "Bearer a-real-random-token"})
    assert monthly.status_code == 422
    rt.close()


def test_missing_signing_secret_is_503_not_500(tmp_path):
    from app.secrets.stores import MemorySecretStore

    rt = demo_runtime(tmp_path)
    rt.secrets = MemorySecretStore({})
    b = body()
    response = TestClient(create_app(rt)).post(PATH, content=b, headers=signed(b))
    assert response.status_code == 503
    assert rt.check_secrets()  # names what is missing
    rt.close()


def test_identical_deliveries_within_the_window_are_dropped(tmp_path):
    rt = demo_runtime(tmp_path, webhook_dedupe_seconds=300)
    c = TestClient(create_app(rt))
    b, other = body(), body(resource_id="43")
    answers = [c.post(PATH, content=x, headers=signed(x)).json()["status"] for x in (b, b, other)]
    assert answers == ["accepted", "duplicate", "accepted"]
    # a replay padding the signature header with another label is still the same delivery
    padded = {**signed(b), "Signature": signed(b)["Signature"] + ",sig2=00"}
    assert c.post(PATH, content=b, headers=padded).json()["status"] == "duplicate"
    assert len(rt.queue.pull(dirty_subscription(Cadence.DAILY))) == 2
    assert rt.stats.snapshot()["duplicate"] == 2
    rt.close()


def test_duplicates_are_kept_when_dedupe_is_off(tmp_path):
    rt = demo_runtime(tmp_path, webhook_dedupe_seconds=0)
    c = TestClient(create_app(rt))
    b = body()
    for _ in range(2):
        assert c.post(PATH, content=b, headers=signed(b)).json()["status"] == "accepted"
    assert len(rt.queue.pull(dirty_subscription(Cadence.DAILY))) == 2
    rt.close()


def test_a_retry_after_a_failed_publish_is_not_a_duplicate(tmp_path, monkeypatch):
    rt = demo_runtime(tmp_path, webhook_dedupe_seconds=300)
    c = TestClient(create_app(rt))
    real = rt.queue.submit_many  # type: ignore[attr-defined]

    def failed_future(*_args, **_kw):
        future: Future = Future()
        future.set_exception(QueueUnavailable("down"))
        return future

    b = body()
    monkeypatch.setattr(rt.queue, "submit_many", failed_future)
    assert c.post(PATH, content=b, headers=signed(b)).status_code == 503
    monkeypatch.setattr(rt.queue, "submit_many", real)
    assert c.post(PATH, content=b, headers=signed(b)).json()["status"] == "accepted"
    assert len(rt.queue.pull(dirty_subscription(Cadence.DAILY))) == 1
    rt.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_recent_deliveries_expire_after_the_window_and_stay_bounded():
    clock = FakeClock()
    recent = RecentDeliveries(60, max_entries=3, clock=clock)
    a, b, c, d = (RecentDeliveries.key("i", "/p", "", x) for x in (b"a", b"b", b"c", b"d"))
    assert recent.claim(a)
    assert not recent.claim(a)
    clock.now += 59
    assert not recent.claim(a)
    clock.now += 2  # a's window is over: Healthie's or anyone's later repeat counts again
    assert recent.claim(a)
    assert recent.claim(b)
    assert recent.claim(c)
    assert recent.claim(d)  # full: the oldest (a) makes room
    assert len(recent) == 3
    assert recent.claim(a)
    recent.release(a)
    assert recent.claim(a)  # released: claimable at once


def test_recent_deliveries_tell_integrations_paths_and_queries_apart():
    keys = {
        RecentDeliveries.key("i", "/p", "", b"x"),
        RecentDeliveries.key("j", "/p", "", b"x"),
        RecentDeliveries.key("i", "/q", "", b"x"),
        RecentDeliveries.key("i", "/p", "a=1", b"x"),
        RecentDeliveries.key("i", "/p", "", b"y"),
    }
    assert len(keys) == 5
    off = RecentDeliveries(0)
    assert off.claim(b"k")
    assert off.claim(b"k")


def _lock(path) -> sqlite3.Connection:
    """Another process's writer, as SQLite sees it: a connection holding BEGIN EXCLUSIVE."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_a_locked_queue_is_a_fast_503_with_retry_after(tmp_path):
    queue = SqliteQueue(tmp_path / "queue.db")  # busy-waits 30 s for a lock on its own
    ensure_topology(queue)
    rt = demo_runtime(tmp_path, queue=queue, webhook_dedupe_seconds=300)
    app = create_app(rt)  # before the lock: building the app creates topics
    holder = _lock(tmp_path / "queue.db")
    try:
        with serve_in_thread(app) as url:
            b = body()
            # far below the queue's 30 s busy wait: the answer comes from the publish deadline
            reply = httpx2.post(url + PATH, content=b, headers=signed(b), timeout=15)
            assert reply.status_code == 503
            assert int(reply.headers["retry-after"]) > 0
            assert rt.stats.snapshot()["publish_failed"] == 1
            holder.execute("ROLLBACK")
            # once the lock is gone the retry is accepted, not taken for a duplicate
            reply = httpx2.post(url + PATH, content=b, headers=signed(b), timeout=15)
            assert reply.status_code == 202
            assert reply.json()["status"] == "accepted"
    finally:
        holder.close()
        rt.close()


def test_a_locked_state_store_does_not_stop_intake(tmp_path):
    state = SqliteStateStore(tmp_path / "state.db")
    rt = demo_runtime(tmp_path, state=state, webhook_dedupe_seconds=300)
    app = create_app(rt)
    holder = _lock(tmp_path / "state.db")
    try:
        with serve_in_thread(app) as url:
            b = body()
            for expected in ("accepted", "duplicate"):
                reply = httpx2.post(url + PATH, content=b, headers=signed(b), timeout=15)
                assert reply.status_code == 202
                assert reply.json()["status"] == expected
        assert len(rt.queue.pull(dirty_subscription(Cadence.DAILY))) == 1
    finally:
        holder.close()
        rt.close()


def test_publishes_that_missed_their_deadline_are_dropped_not_sent_late():
    class StuckQueue:
        """A submitting queue whose first commit hangs until the test lets it go."""

        def __init__(self) -> None:
            self.calls: list[list] = []
            self.first: Future = Future()

        def submit_many(self, topic, messages):
            self.calls.append(list(messages))
            if len(self.calls) == 1:
                return self.first
            done: Future = Future()
            done.set_result(["id"] * len(messages))
            return done

        def publish_many(self, topic, messages):
            return self.submit_many(topic, messages).result()

    async def scenario(queue: StuckQueue) -> list[BaseException | None]:
        batcher = PublishBatcher(queue, "t", deadline=0.05)  # type: ignore[arg-type]
        first = asyncio.ensure_future(batcher.publish([(b"1", {})]))
        await asyncio.sleep(0)  # the first batch is submitted and hangs
        second = asyncio.ensure_future(batcher.publish([(b"2", {})]))
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
        queue.first.set_result(["id"])  # the stuck commit finally lands
        await asyncio.sleep(0.05)  # let the drain look at what is left
        return list(outcomes)

    queue = StuckQueue()
    outcomes = asyncio.run(scenario(queue))
    assert all(isinstance(o, QueueUnavailable) for o in outcomes)
    assert queue.calls == [[(b"1", {})]]  # the second request, answered 503, sent nothing
