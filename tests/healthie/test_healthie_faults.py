"""The client against the sandbox's injected faults, over real HTTP: 429 storms, 5xx, timeouts,
complexity refusals. It recovers, or fails as the error kind the worker acts on."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.core.errors import CircuitOpen, ConfigurationError, UpstreamUnavailable
from app.healthie.client import HealthieClient
from app.resilience.breaker import CircuitBreaker
from app.resilience.ratelimit import TokenBucket
from app.service.serving import serve_in_thread
from sandbox.core import Sandbox
from sandbox.faults import FaultConfig
from sandbox.server import create_app

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(patients=60, seed=11)
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def url(sandbox: Sandbox) -> Iterator[str]:
    with serve_in_thread(create_app(sandbox)) as base:
        yield f"{base}/graphql"


@pytest.fixture
def faults(sandbox: Sandbox) -> Iterator[object]:
    yield sandbox.faults
    sandbox.faults.configure(FaultConfig())


@pytest.fixture
def ids(sandbox: Sandbox) -> list[str]:
    return list(sandbox.org.patient_ids())


@pytest.fixture
def client_for(sandbox: Sandbox, url: str) -> Iterator[Callable[..., HealthieClient]]:
    """Clients with their own token bucket (the sandbox's key is shared by every test)."""
    made: list[HealthieClient] = []

    def build(*, rate: float = 1000, **kw: Any) -> HealthieClient:
        kw.setdefault("breaker", CircuitBreaker(threshold=20))
        client = HealthieClient(
            url=url, api_key=kw.pop("api_key", sandbox.api_key), bucket=TokenBucket(rate), **kw
        )
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


def test_429_storm_from_an_overeager_client_recovers(client_for, faults, ids):
    faults.configure(FaultConfig(rate_limit_per_second=4))
    client = client_for(rate=1000, batch_size=1, max_attempts=8)
    out = client.fetch_entries(ids[:12])
    assert all(out[i] is not None for i in ids[:12])
    assert client.rate_limited >= 1  # it did hit the limit, and backed off
    assert client.bucket.throttles == client.rate_limited


def test_pacing_at_the_configured_limit_provokes_no_429(client_for, faults, ids):
    faults.configure(FaultConfig(rate_limit_per_second=10))
    time.sleep(1.1)  # let the sandbox's window forget earlier tests
    client = client_for(rate=10, batch_size=1, concurrency=4)
    started = time.monotonic()
    client.fetch_entries(ids[:25])
    assert client.rate_limited == 0
    assert time.monotonic() - started >= 1.5  # 25 requests at 10/s really were paced


def test_intermittent_5xx_is_retried(client_for, faults, ids):
    faults.configure(FaultConfig(http_5xx_probability=0.3, seed=3))
    client = client_for(batch_size=5, max_attempts=8)
    out = client.fetch_entries(ids[:40])
    assert all(out[i] is not None for i in ids[:40])
    assert client.requests_sent > 8  # some requests were retried


def test_persistent_5xx_opens_the_circuit(client_for, faults, ids):
    faults.configure(FaultConfig(http_5xx_probability=1.0))
    client = client_for(breaker=CircuitBreaker(threshold=3, cool_down=60), max_attempts=10)
    with pytest.raises(CircuitOpen) as caught:
        client.fetch_entries(ids[:3])
    assert isinstance(caught.value, UpstreamUnavailable)
    assert client.requests_sent == 3
    with pytest.raises(CircuitOpen):
        client.fetch_entries(ids[:3])
    assert client.requests_sent == 3  # failed fast


def test_timeouts_are_upstream_unavailable(client_for, faults, ids):
    faults.configure(FaultConfig(latency_seconds=0.5))
    client = client_for(timeout=0.1, max_attempts=2)
    with pytest.raises(UpstreamUnavailable):
        client.fetch_entries(ids[:2])
    assert client.requests_sent == 2


def test_complexity_refusals_split_and_shrink_later_batches(client_for, faults, ids):
    faults.configure(FaultConfig(complexity_budget=500))
    client = client_for(batch_size=15)
    out = client.fetch_entries(ids[:15])
    assert all(out[i] is not None for i in ids[:15])
    assert (client.complexity_splits, client.max_complexity) == (1, 500)
    sent = client.requests_sent
    client.fetch_entries(ids[15:30])
    assert client.requests_sent - sent == 3  # 5 per request from the start now


def test_wrong_key_and_unknown_version_are_configuration_errors(client_for, faults, ids):
    with pytest.raises(ConfigurationError):
        client_for(api_key="wrong").fetch_entries(ids[:1])
    with pytest.raises(ConfigurationError):
        client_for(api_version="2025-06-15").fetch_entries(ids[:1])
