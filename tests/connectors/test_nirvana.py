"""The Nirvana connector (experimental) against ``tests.servers.nirvana``, a fake that follows
Nirvana's *documented* request and answer shapes (no published contract exists): so these
tests prove the connector sends the documented fields with the documented header and pacing,
and maps answers and errors as the docs describe, not that Nirvana itself accepts them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from app.core.errors import ConfigurationError, RateLimited, TargetRejected
from app.resilience.guard import Guard
from app.resilience.ratelimit import TokenBucket
from app.resilience.retry import Backoff, RetryPolicy
from connectors.base import Scope, Write
from connectors.nirvana import NirvanaConnector
from connectors.registry import listing
from connectors.stedi_eligibility import EligibilityResult
from tests.servers.nirvana import API_KEY, FakeNirvana, nirvana_fixture  # noqa: F401

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
PATIENT = {
    "patient_id": "4242",
    "key": "policy-7",
    "payer_id": "00192",
    "member_id": "W123456789",
    "first_name": "Zoë",
    "last_name": "Quixote-Testperson",
    "date_of_birth": "1976-02-14",
}
SECRETS = ("Zoë", "Quixote-Testperson", "W123456789", "1976-02-14", API_KEY)


def build(
    fake: FakeNirvana,
    *,
    slept: list[float] | None = None,
    guard: Guard | None = None,
    **more: Any,
) -> NirvanaConnector:
    parsed = NirvanaConnector.parse_options(
        "coverage", {"provider_npi": "1999999984", "api_url": fake.url, **more}
    )
    retry = RetryPolicy(
        max_attempts=3,
        backoff=Backoff(initial=0.01, cap=0.05, jitter=0.0),
        max_wait=30.0,
        sleep=(slept.append if slept is not None else lambda _s: None),
    )
    return NirvanaConnector(
        "coverage", parsed, {"api_key": SecretStr(API_KEY)}, retry=retry, guard=guard
    )


def check(connector: NirvanaConnector, **args: Any) -> Write:
    merged = {**PATIENT, **args}
    parsed = connector.validate("check_eligibility", merged, merged["patient_id"])
    return Write(Scope("clinic-a", merged["patient_id"], "run-1", AT), "check_eligibility", parsed)


def test_a_check_sends_the_documented_fields_with_the_apikey_header(nirvana):
    connector = build(nirvana, session_cost_cents=15000)
    try:
        (result,) = connector.execute_batch([check(connector)])
    finally:
        connector.close()
    assert result.error is None
    (endpoint, body), headers = nirvana.checks[0], nirvana.received[0]
    assert endpoint == "estimate"
    assert body == {
        "payer_id": "00192",
        "provider_npi": "1999999984",
        "member_id": "W123456789",
        "member_dob": "1976-02-14",
        "member_first_name": "Zoë",
        "member_last_name": "Quixote-Testperson",
        "provider_session_cost": 15000,
    }
    assert headers["apikey"] == API_KEY
    assert "authorization" not in headers


def test_discover_sends_no_session_cost(nirvana):
    connector = build(nirvana, endpoint="discover", session_cost_cents=15000)
    try:
        connector.execute_batch([check(connector)])
    finally:
        connector.close()
    ((endpoint, body),) = nirvana.checks
    assert endpoint == "discover"
    assert "provider_session_cost" not in body


def test_the_result_is_the_typed_summary(nirvana):
    connector = build(nirvana)
    try:
        active, inactive = connector.execute_batch(
            [check(connector), check(connector, patient_id="4343", member_id="INACTIVE2")]
        )
    finally:
        connector.close()
    assert isinstance(active, EligibilityResult)
    assert active.summary is not None
    assert active.summary.model_dump() == {
        "source": "nirvana",
        "active": True,
        "plan_begin": None,
        "plan_end": None,
        "copay_cents": 2500,
        "coinsurance_percent": 20.0,
        "deductible_cents": None,
        "deductible_remaining_cents": 50000,
        "out_of_pocket_remaining_cents": 150000,
        "rejection_codes": (),
    }
    assert isinstance(inactive, EligibilityResult)
    assert inactive.summary is not None
    assert inactive.summary.active is False


def test_a_refused_check_fails_its_own_patient_without_values(nirvana):
    connector = build(nirvana)
    try:
        ok, refused = connector.execute_batch(
            [check(connector), check(connector, patient_id="4343", member_id="POISON9")]
        )
    finally:
        connector.close()
    assert ok.error is None
    assert isinstance(refused.error, TargetRejected)
    for value in (*SECRETS, "POISON9", "credentialing"):
        assert value not in str(refused.error)


def test_a_429_without_retry_after_waits_out_the_documented_window(nirvana):
    bucket = TokenBucket(1000.0)
    connector = build(nirvana, guard=Guard(bucket=bucket))
    nirvana.per_minute = 1  # the documented limit, scaled: the second check is over it
    try:
        first, second = connector.execute_batch(
            [check(connector), check(connector, patient_id="4343")]
        )
    finally:
        connector.close()
    assert first.error is None
    assert isinstance(second.error, RateLimited)
    assert second.error.retry_after == 60.0
    assert bucket.throttles == 1  # every caller of the key pauses for the window
    assert len(nirvana.received) == 2  # no retry spent inside the window


def test_a_429_with_retry_after_is_retried_after_it(nirvana):
    slept: list[float] = []
    connector = build(nirvana, slept=slept)
    nirvana.fail(429, times=1, headers={"Retry-After": "3"})
    try:
        (result,) = connector.execute_batch([check(connector)])
    finally:
        connector.close()
    assert result.error is None
    assert slept
    assert slept[0] >= 3.0


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_a_configuration_error(nirvana, status):
    connector = build(nirvana)
    nirvana.fail(status, times=None)
    try:
        (result,) = connector.execute_batch([check(connector)])
    finally:
        connector.close()
    assert isinstance(result.error, ConfigurationError)
    assert API_KEY not in str(result.error)


def test_pacing_follows_the_documented_50_per_minute():
    assert NirvanaConnector.rate_limit is not None
    assert NirvanaConnector.rate_limit * 60 <= 50
    assert NirvanaConnector.max_batch == 1


def test_the_listing_marks_the_connector_experimental():
    found = [c for c in listing() if c["name"] == "nirvana"]
    if not found:
        pytest.skip("nirvana is not registered in connectors/registry.py yet (the lead does)")
    assert found[0]["description"].startswith("Experimental")
