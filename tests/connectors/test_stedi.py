"""The Stedi connector against the local fake (``tests.servers.stedi``), which validates every
request against Stedi's published OpenAPI file and answers with its examples: the 270 request
shape, the typed 271 summary, claims refused per patient before any request when incomplete,
idempotent claim retries, error kinds without patient values, and 429 honoured."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr

from app.core.errors import ConfigurationError, PlanValidationError, TargetRejected
from app.resilience.retry import Backoff, RetryPolicy
from connectors.base import Scope, Write
from connectors.memory import MemoryConnector
from connectors.stedi import StediConnector
from connectors.stedi_eligibility import ROW_COLUMNS, EligibilityResult, WriteBack, follow_up
from tests.servers.stedi import API_KEY, CLAIMS, SPEC, FakeStedi, stedi_fixture  # noqa: F401

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
PATIENT = {
    "patient_id": "4242",
    "key": "policy-7",
    "payer_id": "87726",
    "member_id": "UHC202649",
    "first_name": "Zoë",
    "last_name": "Quixote-Testperson",
    "date_of_birth": "1976-02-14",
}
SECRETS = ("Zoë", "Quixote-Testperson", "UHC202649", "1976", "19760214", API_KEY)


def options(fake: FakeStedi, **more: Any) -> dict[str, Any]:
    return {
        "provider_npi": "1999999984",
        "provider_organization_name": "Provider Name",
        "api_url": fake.url,
        **more,
    }


def build(fake: FakeStedi, *, slept: list[float] | None = None, **more: Any) -> StediConnector:
    parsed = StediConnector.parse_options("eligibility", options(fake, **more))
    retry = RetryPolicy(
        max_attempts=3,
        backoff=Backoff(initial=0.01, cap=0.05, jitter=0.0),
        max_wait=30.0,
        sleep=(slept.append if slept is not None else lambda _s: None),
    )
    return StediConnector("eligibility", parsed, {"api_key": SecretStr(API_KEY)}, retry=retry)


def check(connector: StediConnector, **args: Any) -> Write:
    merged = {**PATIENT, **args}
    parsed = connector.validate("check_eligibility", merged, merged["patient_id"])
    return Write(Scope("clinic-a", merged["patient_id"], "run-1", AT), "check_eligibility", parsed)


def claim_body() -> dict[str, Any]:
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    op = spec["paths"][CLAIMS]["post"]
    example = op["requestBody"]["content"]["application/json"]["examples"]
    return copy.deepcopy(example["ClaimsSubmission_example1"]["value"])


def claim(connector: StediConnector, body: dict[str, Any], key: str = "bill-1") -> Write:
    args = {"patient_id": "4242", "key": key, "claim": body}
    parsed = connector.validate("submit_claim", args, "4242")
    return Write(Scope("clinic-a", "4242", "run-1", AT), "submit_claim", parsed)


def no_values(message: str) -> None:
    for value in SECRETS:
        assert value not in message


def test_an_eligibility_check_sends_the_contracts_270_for_the_scopes_patient(stedi):
    connector = build(stedi)
    try:
        (result,) = connector.execute_batch([check(connector, date_of_service="2026-12-02")])
    finally:
        connector.close()
    assert result.error is None
    (sent,) = stedi.checks
    assert sent == {
        "tradingPartnerServiceId": "87726",
        "externalPatientId": "4242",
        "provider": {"npi": "1999999984", "organizationName": "Provider Name"},
        "subscriber": {
            "memberId": "UHC202649",
            "firstName": "Zoë",
            "lastName": "Quixote-Testperson",
            "dateOfBirth": "19760214",
        },
        "encounter": {"serviceTypeCodes": ["30"], "dateOfService": "20261202"},
    }
    (_, headers) = stedi.received[0]
    # Stedi's current scheme: the key itself, no "Key " prefix (changelog, Feb 2024)
    assert headers["authorization"] == API_KEY
    # the fixture asserts the request broke neither the contract nor the closed schemas


def test_the_result_is_a_typed_summary_without_free_text(stedi):
    connector = build(stedi)
    try:
        active, inactive = connector.execute_batch(
            [check(connector), check(connector, patient_id="4343", member_id="INACTIVE1")]
        )
    finally:
        connector.close()
    assert isinstance(active, EligibilityResult)
    assert isinstance(inactive, EligibilityResult)
    summary = active.summary
    assert summary is not None
    assert summary.active is True
    assert (summary.plan_begin, summary.plan_end) == (date(2024, 1, 1), date(2024, 12, 31))
    assert summary.copay_cents == 0
    assert summary.coinsurance_percent == 20.0  # in network, individual: "0.2"
    assert isinstance(summary.deductible_cents, int)
    assert summary.deductible_remaining_cents is not None
    assert summary.out_of_pocket_remaining_cents is not None
    dumped = summary.model_dump()
    assert set(dumped) == {
        "source", "active", "plan_begin", "plan_end", "copay_cents", "coinsurance_percent",
        "deductible_cents", "deductible_remaining_cents", "out_of_pocket_remaining_cents",
        "rejection_codes",
    }  # fmt: skip
    text = json.dumps(dumped, default=str)
    assert "PROVIDER IS OUT NETWORK" not in text
    assert "UNITEDHEALTHCARE" not in text
    assert inactive.summary is not None
    assert inactive.summary.active is False
    assert inactive.summary.plan_end == date(2023, 12, 31)


def test_a_payer_refusal_fails_its_own_patient_with_codes_and_no_values(stedi):
    connector = build(stedi)
    try:
        ok, refused = connector.execute_batch(
            [check(connector), check(connector, patient_id="4343", member_id="POISON1")]
        )
    finally:
        connector.close()
    assert ok.error is None
    assert isinstance(refused.error, TargetRejected)
    message = str(refused.error)
    assert "HTTP 400" in message
    assert "payer codes 44" in message
    no_values(message)
    assert "SIMPSON" not in message
    assert "Provider Name" not in message


def test_a_429_is_honoured_with_its_retry_after(stedi):
    slept: list[float] = []
    connector = build(stedi, slept=slept)
    stedi.fail(429, times=1, headers={"Retry-After": "2"})
    try:
        (result,) = connector.execute_batch([check(connector)])
    finally:
        connector.close()
    assert result.error is None
    assert slept
    assert slept[0] >= 2.0
    assert len(stedi.received) == 2
    assert len(stedi.checks) == 1


@pytest.mark.parametrize(("status", "kind"), [(403, ConfigurationError), (503, Exception)])
def test_http_answers_are_mapped_without_values(stedi, status, kind):
    connector = build(stedi)
    stedi.fail(status, times=None)
    try:
        (result,) = connector.execute_batch([check(connector)])
    finally:
        connector.close()
    assert isinstance(result.error, kind)
    message = str(result.error)
    assert f"HTTP {status}" in message
    no_values(message)


def test_a_claim_missing_a_required_field_is_refused_by_name_with_no_request(stedi):
    body = claim_body()
    del body["claimInformation"]["serviceLines"][0]["professionalService"]["procedureCode"]
    del body["receiver"]["organizationName"]
    connector = build(stedi, claim_contract=str(SPEC))
    try:
        with pytest.raises(PlanValidationError) as refused:
            claim(connector, body)
    finally:
        connector.close()
    message = str(refused.value)
    assert "claim.claimInformation.serviceLines[0].professionalService.procedureCode: required" in (
        message
    )
    assert "claim.receiver.organizationName: required" in message
    assert "John" not in message
    assert "U7777788888" not in message
    assert stedi.received == []
    assert connector.requests == 0


def test_a_claim_with_an_ill_typed_field_is_refused_without_quoting_it(stedi):
    body = claim_body()
    body["subscriber"]["dateOfBirth"] = "Feb 1st 2000"
    connector = build(stedi, claim_contract=str(SPEC))
    with pytest.raises(PlanValidationError) as refused:
        claim(connector, body)
    assert "claim.subscriber.dateOfBirth: pattern" in str(refused.value)
    assert "Feb 1st" not in str(refused.value)
    assert stedi.received == []


def test_a_complete_claim_is_sent_once_however_often_it_is_retried(stedi):
    connector = build(stedi, claim_contract=str(SPEC))
    try:
        write = claim(connector, claim_body())
        first = connector.execute_batch([write])
        again = connector.execute_batch([write])  # a redelivery of the same work
    finally:
        connector.close()
    assert [r.error for r in first + again] == [None, None]
    assert len(stedi.claims) == 1
    keys = {h.get("idempotency-key") for _, h in stedi.received}
    assert len(keys) == 1
    assert None not in keys


def test_a_changed_claim_under_the_same_key_is_refused_not_filed_twice(stedi):
    connector = build(stedi, claim_contract=str(SPEC))
    changed = claim_body()
    changed["claimInformation"]["claimChargeAmount"] = "120.00"
    changed["claimInformation"]["serviceLines"][0]["professionalService"][
        "lineItemChargeAmount"
    ] = "120.00"
    try:
        connector.execute_batch([claim(connector, claim_body())])
        (second,) = connector.execute_batch([claim(connector, changed)])
    finally:
        connector.close()
    assert isinstance(second.error, TargetRejected)
    assert "HTTP 422" in str(second.error)
    assert len(stedi.claims) == 1


def test_claims_need_the_contract_to_be_checked_against(stedi):
    connector = build(stedi)
    with pytest.raises(ConfigurationError, match="claim_contract"):
        claim(connector, claim_body())
    assert stedi.received == []


def test_the_pipeline_writes_the_summary_where_the_plan_says(stedi):
    """write_back: the pipeline's write stage runs the check, then the connector's follow-up
    (the summary as a row of the plan's target), validated for the same patient; a write_back
    naming an unknown target fails that patient's write with the target named."""
    from workers.pipeline import write as write_stage

    connector = build(stedi)
    warehouse = MemoryConnector.from_config(
        "warehouse", {"tables": {"eligibility": ROW_COLUMNS}}, {}
    )
    assert isinstance(warehouse, MemoryConnector)
    back = {"target": "warehouse", "table": "eligibility"}
    try:
        args = connector.validate("check_eligibility", {**PATIENT, "write_back": back}, "4242")
        routed = Write(check(connector).scope, "check_eligibility", args, "eligibility")
        built = {"eligibility": connector, "warehouse": warehouse}
        (errors,) = write_stage(lambda: built, [[routed]])
        assert errors == []
        row = warehouse.table("eligibility")["policy-7"]
        assert row["active"] is True
        wrong = args.model_copy(
            update={"write_back": WriteBack(target="nowhere", table="eligibility")}
        )
        (errors,) = write_stage(
            lambda: built, [[Write(routed.scope, routed.operation, wrong, "eligibility")]]
        )
        assert len(errors) == 1
        assert "nowhere" in str(errors[0])
    finally:
        connector.close()


def test_the_follow_up_write_is_valid_for_a_table_target(stedi):
    """What the pipeline would write back: valid against a table target declaring the
    summary's columns (the write itself needs pipeline support, see the report)."""
    connector = build(stedi)
    try:
        write = check(connector)
        (result,) = connector.execute_batch([write])
    finally:
        connector.close()
    assert isinstance(result, EligibilityResult)
    routed = Write(
        write.scope,
        write.operation,
        write.args.model_copy(
            update={"write_back": WriteBack(target="warehouse", table="eligibility")}
        ),
    )
    found = follow_up(routed, result)
    assert found is not None
    target, operation, args = found
    assert (target, operation) == ("warehouse", "upsert_row")
    warehouse = MemoryConnector.from_config(
        "warehouse", {"tables": {"eligibility": ROW_COLUMNS}}, {}
    )
    assert isinstance(warehouse, MemoryConnector)
    parsed = warehouse.validate(operation, args, "4242")
    (stored,) = warehouse.execute_batch([Write(write.scope, operation, parsed)])
    assert stored.error is None
    row = warehouse.table("eligibility")["policy-7"]
    assert row["active"] is True
    assert row["plan_begin"] == "2024-01-01"


def test_the_fake_catches_a_misspelt_field(stedi):
    """The fake's own check: a wrong field name is a violation even where Stedi's objects
    are open (the connector's break is recorded in the report)."""
    body = {
        "tradingPartnerServiceId": "87726",
        "provider": {"npi": "1999999984", "organizationName": "Provider Name"},
        "subscriber": {"memberID": "UHC202649", "firstName": "A", "lastName": "B"},
    }
    response = httpx2.post(
        stedi.url + "/change/medicalnetwork/eligibility/v3",
        json=body,
        headers={"Authorization": API_KEY},
    )
    assert response.status_code == 200
    violations = stedi.take_violations()
    assert any("undeclared" in v and "memberID" in v for v in violations)
