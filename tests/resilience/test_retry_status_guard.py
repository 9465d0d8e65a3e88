"""The shared resilience layer: one back-off, one Retry-After parser, one status table, one
guard per credential, one retry policy (used by Healthie, Anthropic and the queue)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.core.errors import (
    CircuitOpen,
    ConfigurationError,
    FatalError,
    InvalidResponse,
    RateLimited,
    TargetRejected,
    UpstreamUnavailable,
)
from app.resilience.breaker import CircuitBreaker
from app.resilience.guard import Guards, credential_id
from app.resilience.retry import Backoff, RetryPolicy, parse_retry_after, redelivery_delay
from app.resilience.status import error_for_status, kind_for_status

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "Tue, 01 Dec 2026 12:00:07 GMT"}, 7.0),
        ({"retry-after": "Tue, 01 Dec 2026 11:59:00 GMT"}, 0.0),  # in the past: no wait
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_seconds_milliseconds_and_http_dates(headers, expected):
    assert parse_retry_after(headers, now=lambda: NOW) == expected


def test_backoff_doubles_to_its_cap_and_retry_after_is_a_floor_or_exact():
    plain = Backoff(initial=0.5, cap=8.0, jitter=0.0)
    assert [plain.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert plain.delay(0, retry_after=3.0) == 3.0
    assert plain.delay(5, retry_after=3.0) == 8.0  # a floor never shortens the back-off
    exact = Backoff(initial=0.5, cap=8.0, jitter=0.0, retry_after="exact")
    assert exact.delay(5, retry_after=3.0) == 3.0
    jittered = Backoff(initial=1.0, cap=8.0, jitter=0.25, rng=lambda: 1.0)
    assert jittered.delay(2) == 3.0  # a quarter of 4 s taken off at most


def test_redelivery_delay_is_the_same_formula_with_the_queues_bounds():
    assert [redelivery_delay(a) for a in (1, 2, 3, 8, 20)] == [2.0, 4.0, 8.0, 256.0, 256.0]
    assert redelivery_delay(1, retry_after=30.0) == 30.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (429, RateLimited),
        (408, UpstreamUnavailable),
        (500, UpstreamUnavailable),
        (503, UpstreamUnavailable),
        (529, UpstreamUnavailable),
        (401, ConfigurationError),
        (403, ConfigurationError),
        (409, TargetRejected),
        (422, TargetRejected),
        (400, FatalError),
        (404, FatalError),
    ],
)
def test_the_status_table(status, kind):
    assert kind_for_status(status) is kind


def test_an_edge_overrides_only_what_its_vendor_documents_differently():
    overrides = {409: UpstreamUnavailable}
    assert kind_for_status(409, overrides=overrides) is UpstreamUnavailable
    assert kind_for_status(422, overrides=overrides) is TargetRejected
    assert kind_for_status(418, default=InvalidResponse) is InvalidResponse
    err = error_for_status(429, "vendor HTTP 429", retry_after=2.0)
    assert isinstance(err, RateLimited)
    assert err.retry_after == 2.0


def test_the_policy_retries_retriable_kinds_and_waits_at_least_retry_after():
    sleeps: list[float] = []
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RateLimited("busy", retry_after=1.5)
        return "ok"

    policy = RetryPolicy(max_attempts=5, backoff=Backoff(jitter=0.0), sleep=sleeps.append)
    assert policy.call(flaky) == "ok"
    assert sleeps == [1.5, 1.5]


def test_the_policy_never_retries_a_permanent_error_or_an_open_circuit():
    for error in (TargetRejected("no"), ConfigurationError("key"), CircuitOpen("open")):
        calls = 0

        def failing(error: Exception = error) -> None:
            nonlocal calls
            calls += 1
            raise error

        with pytest.raises(type(error)):
            RetryPolicy(max_attempts=5, sleep=lambda s: None).call(failing)
        assert calls == 1


def test_the_policy_stops_at_max_attempts_and_never_sleeps_past_max_wait():
    calls = 0

    def down() -> None:
        nonlocal calls
        calls += 1
        raise UpstreamUnavailable("503")

    with pytest.raises(UpstreamUnavailable):
        RetryPolicy(max_attempts=3, sleep=lambda s: None).call(down)
    assert calls == 3

    calls = 0
    sleeps: list[float] = []

    def slow_down() -> None:
        nonlocal calls
        calls += 1
        raise RateLimited("429", retry_after=120.0)

    with pytest.raises(RateLimited):
        RetryPolicy(max_attempts=5, max_wait=60.0, sleep=sleeps.append).call(slow_down)
    assert (calls, sleeps) == (1, [])  # the queue's redelivery takes over instead


def test_one_guard_per_credential_and_the_circuit_opens_for_every_client_of_it():
    guards = Guards()
    key = credential_id("secret-key")
    assert key != "secret-key"
    assert "secret" not in key
    a = guards.for_credential(key, rate=100.0, threshold=2)
    b = guards.for_credential(key, rate=5.0)
    assert a is b
    assert guards.for_credential(credential_id("other")) is not a

    def down() -> None:
        raise UpstreamUnavailable("503")

    for _ in range(2):
        with pytest.raises(UpstreamUnavailable):
            a.call(down)
    with pytest.raises(CircuitOpen):
        b.call(lambda: "never called")


def test_a_refused_request_proves_the_upstream_is_up():
    clock = [0.0]
    guard = Guards().for_credential("k", threshold=2)
    guard.breaker = CircuitBreaker(threshold=2, clock=lambda: clock[0])

    def down() -> None:
        raise UpstreamUnavailable("503")

    def refused() -> None:
        raise TargetRejected("409")

    with pytest.raises(UpstreamUnavailable):
        guard.call(down)
    with pytest.raises(TargetRejected):
        guard.call(refused)  # resets the streak
    with pytest.raises(UpstreamUnavailable):
        guard.call(down)
    assert guard.breaker.state == "closed"
