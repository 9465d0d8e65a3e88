"""Healthie requests per fetched entry stay at or under 0.06 (20 entries fit one request)
whatever the number of worker threads: concurrent fetches of one client are merged into full
requests (``app.healthie.coalesce``), and the worker loop tops short pulls up to full batches
(``workers.loop``). Counted requests and entries, never time."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import httpx2
import pytest

from app.core.errors import InvalidResponse
from app.core.models import WorkItem
from app.healthie.client import HealthieClient
from app.queue.base import Message
from app.queue.topology import WORK_SUBSCRIPTION, WORK_TOPIC
from tests.helpers import demo_runtime
from workers.loop import WorkerLoop

PER_REQUEST = 20
TARGET = 0.06


class CountingHealthie:
    """Answers entries batches for any id; counts entries requests and the entries asked."""

    def __init__(self, refuse: str | None = None) -> None:
        self.requests: list[list[str]] = []
        self.refuse = refuse  # an id whose request is answered as not GraphQL
        self._lock = threading.Lock()

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        variables = body.get("variables") or {}
        if not body["query"].lstrip().startswith("query Entries"):
            return httpx2.Response(200, json={"data": {}})
        ids = [variables[f"id{i}"] for i in range(len(variables))]
        with self._lock:
            self.requests.append(ids)
        if self.refuse in ids:
            return httpx2.Response(200, text="not json")
        data = {
            f"p{i}": {"id": pid, "first_name": f"P{pid}", "active": True, "active_tags": []}
            for i, pid in enumerate(ids)
        }
        return httpx2.Response(200, json={"data": data})

    @property
    def entries(self) -> int:
        return sum(len(ids) for ids in self.requests)


def client(fake: CountingHealthie, **kw) -> HealthieClient:
    kw.setdefault("fetch_linger", 5.0)  # generous: a merge never depends on thread timing
    return HealthieClient(
        url="http://healthie.test/graphql",
        api_key="k-coalesce",
        http_transport=httpx2.MockTransport(fake),
        rate_limit=10_000,
        batch_size=PER_REQUEST,
        **kw,
    )


def fetch_together(healthie: HealthieClient, batches: list[list[str]]) -> list[dict]:
    """Each batch fetched by its own thread, all starting at once."""
    barrier = threading.Barrier(len(batches))
    results: list[dict] = [{} for _ in batches]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        barrier.wait()
        try:
            results[n] = healthie.fetch_entries(batches[n])
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_concurrent_fetches_are_merged_into_full_requests(threads):
    fake = CountingHealthie()
    healthie = client(fake)
    # 25 patients per thread: cut per thread that is 20 + 5, a partial request each
    batches = [[f"{n}-{i}" for i in range(25)] for n in range(threads * 4)]
    results = fetch_together(healthie, batches)
    for batch, result in zip(batches, results, strict=True):
        assert set(result) == set(batch)
        assert all(result[pid]["id"] == pid for pid in batch)
    total = sum(len(b) for b in batches)
    assert len(fake.requests) == total // PER_REQUEST  # every request full
    assert all(len(ids) == PER_REQUEST for ids in fake.requests)
    healthie.close()


def test_a_patient_asked_for_by_two_threads_at_once_is_fetched_once():
    fake = CountingHealthie()
    healthie = client(fake)
    shared = [str(i) for i in range(10)]
    results = fetch_together(healthie, [[*shared, "a"], [*shared, "b"]])
    assert results[0]["3"] == results[1]["3"]
    assert fake.entries == 12
    assert len(fake.requests) == 1
    healthie.close()


def test_a_failed_request_fails_the_callers_with_an_id_in_it_only():
    fake = CountingHealthie(refuse="bad")
    healthie = client(fake, fetch_linger=0.0, max_attempts=1)
    with pytest.raises(InvalidResponse):
        healthie.fetch_entries(["bad", "x"])
    assert healthie.fetch_entries(["y"])["y"] is not None  # the next call is unaffected
    healthie.close()


def test_without_company_a_partial_request_goes_after_the_linger():
    fake = CountingHealthie()
    healthie = client(fake, fetch_linger=0.0)
    assert len(healthie.fetch_entries([str(i) for i in range(47)])) == 47
    assert [len(ids) for ids in fake.requests] == [20, 20, 7]
    healthie.close()


def test_one_call_keeps_several_full_requests_in_flight():
    fake = CountingHealthie()
    healthie = client(fake, concurrency=4, fetch_linger=0.0)
    out = healthie.fetch_entries([str(i) for i in range(190)])
    assert len(out) == 190
    assert sorted(len(ids) for ids in fake.requests) == [10] + [20] * 9
    healthie.close()


# -- the worker loop ------------------------------------------------------------------------
class Trickling:
    """A queue that hands out at most ``per_pull`` messages per pull, as Pub/Sub does with a
    backlog (it returns what one server has at hand, not ``max_messages``)."""

    def __init__(self, queue, per_pull: int) -> None:
        self._queue = queue
        self._per_pull = per_pull

    def pull(self, subscription: str, max_messages: int = 100) -> list[Message]:
        return self._queue.pull(subscription, min(max_messages, self._per_pull))

    def __getattr__(self, name: str):
        return getattr(self._queue, name)


PATIENTS = 300


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_requests_per_entry_stay_under_the_target_with_any_number_of_threads(tmp_path, threads):
    fake = CountingHealthie()
    rt = demo_runtime(tmp_path, http_transport=httpx2.MockTransport(fake))
    demo = rt.integrations["demo-clinic"]
    rt.integrations["demo-clinic"] = demo.model_copy(
        update={"healthie": demo.healthie.model_copy(update={"batch_size": PER_REQUEST})}
    )
    rt.queue = Trickling(rt.queue, per_pull=7)
    rt.queue.publish_many(
        WORK_TOPIC,
        [
            (
                WorkItem(
                    integration_id="demo-clinic",
                    patient_id=str(p),
                    flush_id="f",
                    dirty_since=datetime(2026, 11, 1, tzinfo=UTC),
                )
                .model_dump_json()
                .encode(),
                {"integration": "demo-clinic"},
            )
            for p in range(1, PATIENTS + 1)
        ],
    )
    loop = WorkerLoop(rt, concurrency=threads, idle_wait=0.05)
    loop.start()
    try:
        until = time.monotonic() + 120
        while fake.entries < PATIENTS and time.monotonic() < until:
            time.sleep(0.05)
    finally:
        loop.stop(grace=30)
    assert rt.queue.pull(WORK_SUBSCRIPTION) == []
    assert fake.entries == PATIENTS  # each patient fetched once
    assert len(fake.requests) / fake.entries <= TARGET
    rt.close()
