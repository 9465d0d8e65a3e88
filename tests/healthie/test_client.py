"""The Healthie client over httpx2.MockTransport: headers, batching, error mapping, retries."""

from __future__ import annotations

import json

import httpx2
import pytest

from app.core.errors import ConfigurationError, InvalidResponse, RateLimited, UpstreamUnavailable
from app.healthie.client import HealthieClient


def make(handler, **kw) -> HealthieClient:
    kw.setdefault("rate_limit", 10_000)
    kw.setdefault("max_attempts", 3)
    return HealthieClient(
        url="http://healthie.test/graphql",
        api_key=kw.pop("api_key", "k1"),
        http_transport=httpx2.MockTransport(handler),
        **kw,
    )


def entries_handler(seen):
    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        body = json.loads(request.content)
        data = {
            f"p{i}": {"id": v, "first_name": "X"}
            for i, v in enumerate(
                body["variables"][f"id{i}"] for i in range(len(body["variables"]))
            )
        }
        return httpx2.Response(200, json={"data": data})

    return handler


def test_headers_and_batching():
    seen: list[httpx2.Request] = []
    client = make(entries_handler(seen), batch_size=10, shard_id="shard-9")
    out = client.fetch_entries([str(i) for i in range(25)])
    assert sorted(out, key=int) == [str(i) for i in range(25)]
    assert len(seen) == 3  # 10 + 10 + 5 patients per request
    headers = seen[0].headers
    assert headers["authorization"] == "Basic k1"
    assert headers["authorizationsource"] == "API"
    assert headers["healthie-graphql-api-version"] == "2026-07-01"
    assert headers["authorizationshard"] == "shard-9"
    assert "PatientEntry" in json.loads(seen[0].content)["query"]


def test_too_many_requests_is_retried_then_succeeds():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            return httpx2.Response(
                200,
                json={
                    "data": None,
                    "errors": [
                        {"message": "slow down", "extensions": {"code": "TOO_MANY_REQUESTS"}}
                    ],
                },
            )
        return entries_handler([])(request)

    client = make(handler, api_key="k-rate")
    client.bucket.pause(0)  # shared bucket per key; start clean
    entry = client.fetch_entries(["1"])["1"]
    assert entry is not None
    assert entry["id"] == "1"
    assert len(calls) == 2


def test_http_429_exhausts_to_rate_limited():
    client = make(
        lambda r: httpx2.Response(429, headers={"Retry-After": "0"}, text="no"),
        api_key="k-429",
        max_attempts=2,
    )
    with pytest.raises(RateLimited):
        client.fetch_entries(["1"])


@pytest.mark.parametrize(
    ("status", "error"),
    [(503, UpstreamUnavailable), (401, ConfigurationError), (400, InvalidResponse)],
)
def test_http_status_mapping(status, error):
    client = make(lambda r: httpx2.Response(status, text="x"), max_attempts=1)
    with pytest.raises(error):
        client.fetch_entries(["1"])


def test_connection_errors_are_retriable():
    def handler(request):
        raise httpx2.ConnectError("refused")

    with pytest.raises(UpstreamUnavailable):
        make(handler, max_attempts=2).fetch_entries(["1"])


def test_graphql_validation_error_is_fatal_and_not_retried():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx2.Response(200, json={"errors": [{"message": "Field 'x' doesn't exist"}]})

    with pytest.raises(InvalidResponse):
        make(handler).fetch_entries(["1"])
    assert len(calls) == 1


def test_unsupported_version_is_configuration():
    def handler(request):
        return httpx2.Response(
            200,
            json={
                "errors": [{"message": "bad", "extensions": {"code": "UNSUPPORTED_API_VERSION"}}]
            },
        )

    with pytest.raises(ConfigurationError):
        make(handler).fetch_entries(["1"])


def test_missing_patient_is_none_and_others_survive():
    def handler(request):
        return httpx2.Response(
            200,
            json={
                "data": {"p0": {"id": "1"}, "p1": None},
                "errors": [{"message": "User not found", "path": ["p1"]}],
            },
        )

    assert make(handler).fetch_entries(["1", "2"]) == {"1": {"id": "1"}, "2": None}


def test_resolve_appointments_collects_owner_and_attendees():
    def handler(request):
        return httpx2.Response(
            200,
            json={
                "data": {
                    "a0": {"id": "7", "user": {"id": "1"}, "attendees": [{"id": "1"}, {"id": "2"}]},
                    "a1": None,
                }
            },
        )

    assert make(handler).resolve_appointments(["7", "8"]) == {"7": ["1", "2"], "8": []}


def test_api_warnings_are_logged_once_each(caplog):
    warning = {"code": "API_VERSION_SUNSET_WARNING", "message": "upgrade"}

    def handler(request):
        return httpx2.Response(
            200, json={"data": {"p0": {"id": "1"}}, "extensions": {"warnings": [warning]}}
        )

    client = make(handler)
    with caplog.at_level("WARNING", logger="app.healthie.client"):
        client.fetch_entries(["1"])
        client.fetch_entries(["1"])
    assert [r.getMessage() for r in caplog.records] == [
        "Healthie API warning API_VERSION_SUNSET_WARNING: upgrade"
    ]


# -- complexity-aware batching -----------------------------------------------------------------
def refusing_handler(seen, cost_per_entry, cap=2000):
    """Answers entries, refusing (like Healthie) a request whose real score is over ``cap``."""
    ok = entries_handler([])

    def handler(request):
        body = json.loads(request.content)
        n = len(body["variables"])
        seen.append(n)
        if n * cost_per_entry > cap:
            return httpx2.Response(
                200,
                json={
                    "errors": [
                        {
                            "message": (
                                f"Query has complexity of {n * cost_per_entry}, "
                                f"which exceeds max complexity "
                                f"of {cap}"
                            )
                        }
                    ]
                },
            )
        return ok(request)

    return handler


def test_batch_size_is_bounded_by_the_complexity_estimate():
    seen: list[httpx2.Request] = []
    client = make(entries_handler(seen), batch_size=100)
    assert client.entry_cost == 97  # one aliased PatientEntry, scored like the guide
    assert client.entries_per_request == 20  # 20 x 97 = 1940 <= 2000
    client.fetch_entries([str(i) for i in range(45)])
    assert [len(json.loads(r.content)["variables"]) for r in seen] == [20, 20, 5]


def test_complexity_refusal_splits_the_batch_and_corrects_the_estimate():
    seen: list[int] = []
    client = make(refusing_handler(seen, cost_per_entry=200), batch_size=20)
    out = client.fetch_entries([str(i) for i in range(20)])
    assert sorted(out, key=int) == [str(i) for i in range(20)]
    assert seen == [20, 10, 10]  # refused, then two halves that fit
    assert (client.entry_cost, client.entries_per_request, client.complexity_splits) == (200, 10, 1)
    seen.clear()
    client.fetch_entries([str(i) for i in range(20, 40)])
    assert seen == [10, 10]  # sized right the first time now


def test_complexity_refusal_recurses_down_to_one_patient_then_is_invalid():
    seen: list[int] = []
    client = make(refusing_handler(seen, cost_per_entry=5000), batch_size=4)
    with pytest.raises(InvalidResponse, match="one entry alone has complexity 5000"):
        client.fetch_entries(["1", "2", "3", "4"])
    assert seen == [4, 1]  # the score says even two cannot fit; the first single one fails


def test_uneven_refusals_halve_recursively():
    """When the refusal's score does not predict the pieces (uneven entries), plain halving."""
    seen: list[int] = []
    ok = entries_handler([])

    def handler(request):
        n = len(json.loads(request.content)["variables"])
        seen.append(n)
        if n > 2:  # Healthie's score says 2001 whatever the size: no learning possible
            return httpx2.Response(
                200,
                json={
                    "errors": [
                        {
                            "message": (
                                "Query has complexity of 2001, which exceeds max complexity of 2000"
                            )
                        }
                    ]
                },
            )
        return ok(request)

    client = make(handler, batch_size=8)
    assert len(client.fetch_entries([str(i) for i in range(8)])) == 8
    assert seen == [8, 4, 2, 2, 4, 2, 2]


def test_a_lower_cap_in_the_refusal_is_adopted():
    seen: list[int] = []
    client = make(refusing_handler(seen, cost_per_entry=97, cap=500), batch_size=15)
    client.fetch_entries([str(i) for i in range(15)])
    assert client.max_complexity == 500
    assert client.entries_per_request == 5
    assert seen == [15, 5, 5, 5]  # the refusal's score sized the retry, not blind halving


def test_concurrent_fetch_returns_every_entry():
    seen: list[httpx2.Request] = []
    client = make(entries_handler(seen), batch_size=10, concurrency=4)
    out = client.fetch_entries([str(i) for i in range(95)])
    assert sorted(out, key=int) == [str(i) for i in range(95)]
    assert len(seen) == 10


# -- status codes hidden behind GraphQL bodies -------------------------------------------------
def test_http_429_with_a_graphql_body_is_rate_limited_and_honours_retry_after():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            return httpx2.Response(
                429,
                headers={"Retry-After": "0"},
                json={
                    "errors": [
                        {
                            "message": "Too many requests",
                            "extensions": {"code": "TOO_MANY_REQUESTS"},
                        }
                    ]
                },
            )
        return entries_handler([])(request)

    client = make(handler, api_key="k-429-json")
    entry = client.fetch_entries(["1"])["1"]
    assert entry is not None
    assert entry["id"] == "1"
    assert (len(calls), client.rate_limited) == (2, 1)


def test_http_503_with_a_graphql_body_is_upstream_unavailable():
    client = make(
        lambda r: httpx2.Response(503, json={"errors": [{"message": "down"}]}), max_attempts=1
    )
    with pytest.raises(UpstreamUnavailable):
        client.fetch_entries(["1"])


def test_too_many_requests_halves_the_keys_rate():
    def handler(request):
        return httpx2.Response(
            200,
            json={
                "errors": [{"message": "slow down", "extensions": {"code": "TOO_MANY_REQUESTS"}}]
            },
        )

    client = make(handler, api_key="k-throttle", rate_limit=100, max_attempts=1)
    with pytest.raises(RateLimited) as caught:
        client.fetch_entries(["1"])
    assert caught.value.retry_after == 1.0
    assert client.bucket.current_rate() < 60  # halved, recovering linearly
    assert client.bucket.throttles == 1


# -- circuit breaker ---------------------------------------------------------------------------
def test_circuit_opens_after_consecutive_failures_and_fails_fast():
    from app.core.errors import CircuitOpen
    from app.resilience.breaker import CircuitBreaker

    now = [0.0]
    breaker = CircuitBreaker(threshold=3, cool_down=30, clock=lambda: now[0])
    healthy = [False]
    calls = []

    def handler(request):
        calls.append(1)
        if not healthy[0]:
            return httpx2.Response(502, text="bad gateway")
        return entries_handler([])(request)

    client = make(handler, breaker=breaker, max_attempts=5)
    with pytest.raises(CircuitOpen) as caught:
        client.fetch_entries(["1"])
    assert len(calls) == 3  # the 4th attempt met the open circuit and was not retried
    assert caught.value.retry_after == pytest.approx(30)
    assert caught.value.kind == "circuit_open"
    with pytest.raises(CircuitOpen):
        client.fetch_entries(["1"])
    assert len(calls) == 3  # failed fast, nothing sent
    now[0] = 31.0
    healthy[0] = True
    entry = client.fetch_entries(["1"])["1"]  # the half-open probe succeeds
    assert entry is not None
    assert entry["id"] == "1"
    assert breaker.state == "closed"
