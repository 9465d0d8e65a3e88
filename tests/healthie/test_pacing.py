"""Pacing against a Healthie stand-in that enforces a rate limit, over real HTTP: the sandbox
with its limiter on (a sliding one-second window, refusing with Healthie's TOO_MANY_REQUESTS),
wrapped so every answer is counted, and optionally answering refusals as HTTP 429 with a
Retry-After. Pass/fail is by counted answers, never by time:

* configured at the limit (1, 5 and 15 requests/s), no request is ever refused, also when
  one fetch's requests are in flight together;
* configured at Healthie's 250/s against a lower limit, the client learns it from the first
  refusals (one volley of the requests then in flight) and no later request is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from app.healthie.client import HealthieClient
from app.resilience.breaker import CircuitBreaker
from app.resilience.ratelimit import TokenBucket
from app.service.serving import serve_in_thread
from sandbox.core import Sandbox
from sandbox.faults import FaultConfig
from sandbox.server import create_app

pytestmark = pytest.mark.e2e

THREADS = 4  # concurrent callers of one client, so the bucket, not one caller, paces


class CountingAnswers:
    """ASGI wrapper around the stand-in: records each GraphQL answer as refused or not, in the
    order answered; with ``as_http_429`` a refusal is sent as HTTP 429 with Retry-After."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.as_http_429 = False
        self.answers: list[bool] = []  # True: refused as over the limit
        self._lock = threading.Lock()

    def reset(self, *, as_http_429: bool = False) -> None:
        with self._lock:
            self.answers = []
            self.as_http_429 = as_http_429

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/graphql"):
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}

        async def intercept(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] == "http.response.body" and start:
                refused = b"TOO_MANY_REQUESTS" in message.get("body", b"")
                with self._lock:
                    self.answers.append(refused)
                    as_429 = self.as_http_429
                if refused and as_429:
                    start["status"] = 429
                    start["headers"] = [*start.get("headers", []), (b"retry-after", b"1")]
                await send(dict(start))
                start.clear()
            await send(message)

        await self.app(scope, receive, intercept)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(patients=40, seed=5)
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def stand_in(sandbox: Sandbox) -> Iterator[tuple[str, CountingAnswers]]:
    counting = CountingAnswers(create_app(sandbox))
    with serve_in_thread(counting) as base:
        yield f"{base}/graphql", counting


def limit_to(sandbox: Sandbox, per_second: float) -> None:
    sandbox.faults.configure(FaultConfig(rate_limit_per_second=per_second))


def hammer(client: HealthieClient, ids: list[str], requests: int) -> None:
    """``requests`` one-patient fetches from THREADS threads at once, as fast as allowed."""
    left = [requests]
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work(n: int) -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
                pid = ids[left[0] % len(ids)]
            try:
                assert client.fetch_entries([pid])[pid] is not None
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                failures.append(exc)
                return

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[0]


def client(url: str, sandbox: Sandbox, rate: float) -> HealthieClient:
    return HealthieClient(
        url=url,
        api_key=sandbox.api_key,
        bucket=TokenBucket(rate),
        breaker=CircuitBreaker(threshold=50),
        max_attempts=10,
        fetch_linger=0.0,  # one request per fetch: pacing, not coalescing, is under test
    )


@pytest.mark.parametrize(("limit", "requests"), [(1, 8), (5, 30), (15, 75)])
def test_configured_at_the_limit_no_answer_is_a_refusal(stand_in, sandbox, limit, requests):
    url, counting = stand_in
    limit_to(sandbox, limit)
    counting.reset()
    healthie = client(url, sandbox, rate=limit)
    try:
        hammer(healthie, list(sandbox.org.patient_ids()), requests)
    finally:
        healthie.close()
        limit_to(sandbox, 0)
    assert len(counting.answers) >= requests
    assert counting.answers.count(True) == 0
    assert healthie.rate_limited == 0


@pytest.mark.parametrize(
    ("limit", "requests", "as_http_429"), [(1, 10, False), (5, 40, True), (15, 90, False)]
)
def test_a_lower_limit_is_learned_from_the_answers_and_then_never_exceeded(
    stand_in, sandbox, limit, requests, as_http_429
):
    url, counting = stand_in
    limit_to(sandbox, limit)
    counting.reset(as_http_429=as_http_429)
    healthie = client(url, sandbox, rate=250)  # Healthie's published rate, far above this one
    try:
        hammer(healthie, list(sandbox.org.patient_ids()), requests)
    finally:
        healthie.close()
        limit_to(sandbox, 0)
    answers = counting.answers
    refused = [i for i, r in enumerate(answers) if r]
    # The first requests in flight together meet the limit once: one lesson, then none.
    assert 1 <= len(refused) <= THREADS
    assert healthie.bucket.lessons == 1
    assert healthie.bucket.limit <= limit
    assert refused[-1] < limit + 2 * THREADS  # learning is over within the first volley
    steady = answers[refused[-1] + 1 :]
    assert len(steady) >= requests - limit - 2 * THREADS
    assert not any(steady)
    assert healthie.rate_limited == len(refused)


def test_the_parallel_requests_of_one_fetch_are_paced_too(stand_in, sandbox):
    """One thread's fetch of 40 patients by 5 is 8 requests in flight together (the client's
    default concurrency): at the limit, still no refusal."""
    url, counting = stand_in
    limit_to(sandbox, 5)
    counting.reset()
    healthie = HealthieClient(
        url=url,
        api_key=sandbox.api_key,
        bucket=TokenBucket(5),
        breaker=CircuitBreaker(threshold=50),
        batch_size=5,
        fetch_linger=0.0,
    )
    ids = list(sandbox.org.patient_ids())
    try:
        for _ in range(3):
            out = healthie.fetch_entries(ids)
            assert all(out[pid] is not None for pid in ids)
    finally:
        healthie.close()
        limit_to(sandbox, 0)
    assert len(counting.answers) == 3 * len(ids) // 5
    assert counting.answers.count(True) == 0
    assert healthie.rate_limited == 0


def test_the_429_answers_are_counted_as_json_bodies(stand_in, sandbox):
    """The stand-in's own check: a refusal is Healthie's GraphQL error, with or without 429."""
    url, counting = stand_in
    limit_to(sandbox, 1)
    counting.reset(as_http_429=True)
    import httpx2

    body = {"query": "query { currentUser { id } }"}
    headers = {"Authorization": f"Basic {sandbox.api_key}", "AuthorizationSource": "API"}
    try:
        statuses = [httpx2.post(url, json=body, headers=headers).status_code for _ in range(3)]
    finally:
        limit_to(sandbox, 0)
    assert statuses[1:] == [429, 429]
    assert counting.answers == [False, True, True]
