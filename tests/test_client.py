"""The Healthie client over httpx2.MockTransport: headers, batching, error mapping, retries."""

from __future__ import annotations

import json

import httpx2
import pytest

from app.errors import ConfigurationError, InvalidResponse, RateLimited, UpstreamUnavailable
from app.healthie.client import HealthieClient


def make(handler, **kw) -> HealthieClient:
    kw.setdefault("rate_limit", 10_000)
    kw.setdefault("max_attempts", 3)
    return HealthieClient(url="http://healthie.test/graphql", api_key=kw.pop("api_key", "k1"),
                          http_transport=httpx2.MockTransport(handler), **kw)


def entries_handler(seen):
    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        body = json.loads(request.content)
        data = {f"p{i}": {"id": v, "first_name": "X"} for i, v in
                enumerate(body["variables"][f"id{i}"] for i in range(len(body["variables"])))}
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
    assert headers["healthie-graphql-api-version"] == "2026-01-01"
    assert headers["authorizationshard"] == "shard-9"
    assert "PatientEntry" in json.loads(seen[0].content)["query"]


def test_too_many_requests_is_retried_then_succeeds():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            return httpx2.Response(200, json={"data": None, "errors": [
                {"message": "slow down", "extensions": {"code": "TOO_MANY_REQUESTS"}}]})
        return entries_handler([])(request)

    client = make(handler, api_key="k-rate")
    client.bucket.pause(0)  # shared bucket per key; start clean
    assert client.fetch_entries(["1"])["1"]["id"] == "1"
    assert len(calls) == 2


def test_http_429_exhausts_to_rate_limited():
    client = make(lambda r: httpx2.Response(429, headers={"Retry-After": "0"}, text="no"),
                  api_key="k-429", max_attempts=2)
    with pytest.raises(RateLimited):
        client.fetch_entries(["1"])


@pytest.mark.parametrize(("status", "error"), [
    (503, UpstreamUnavailable), (401, ConfigurationError), (400, InvalidResponse)])
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
        return httpx2.Response(200, json={"errors": [
            {"message": "bad", "extensions": {"code": "UNSUPPORTED_API_VERSION"}}]})

    with pytest.raises(ConfigurationError):
        make(handler).fetch_entries(["1"])


def test_missing_patient_is_none_and_others_survive():
    def handler(request):
        return httpx2.Response(200, json={
            "data": {"p0": {"id": "1"}, "p1": None},
            "errors": [{"message": "User not found", "path": ["p1"]}]})

    assert make(handler).fetch_entries(["1", "2"]) == {"1": {"id": "1"}, "2": None}


def test_resolve_appointments_collects_owner_and_attendees():
    def handler(request):
        return httpx2.Response(200, json={"data": {
            "a0": {"id": "7", "user": {"id": "1"}, "attendees": [{"id": "1"}, {"id": "2"}]},
            "a1": None}})

    assert make(handler).resolve_appointments(["7", "8"]) == {"7": ["1", "2"], "8": []}


def test_api_warnings_are_logged_once_each(caplog):
    warning = {"code": "API_VERSION_SUNSET_WARNING", "message": "upgrade"}

    def handler(request):
        return httpx2.Response(200, json={"data": {"p0": {"id": "1"}},
                                          "extensions": {"warnings": [warning]}})

    client = make(handler)
    with caplog.at_level("WARNING", logger="app.healthie.client"):
        client.fetch_entries(["1"])
        client.fetch_entries(["1"])
    assert [r.getMessage() for r in caplog.records] == [
        "Healthie API warning API_VERSION_SUNSET_WARNING: upgrade"]
