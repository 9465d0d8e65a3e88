"""Healthie-style webhook retries (opt-in), disabling, and webhook management over GraphQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx2
import pytest
from graphql import ExecutionResult, execute, parse

from sandbox.core import Sandbox
from sandbox.executable import build_executable_schema
from sandbox.webhooks import RetryPolicy

SCHEMA = build_executable_schema()
FAST = RetryPolicy(time_factor=2e-6)  # three days in about half a second


def gql(sb: Sandbox, query: str, **variables: Any) -> dict[str, Any]:
    result = execute(SCHEMA, parse(query), context_value=sb, variable_values=variables)
    assert isinstance(result, ExecutionResult)
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data


class Flaky:
    """A receiver answering 500 to the first ``failures`` requests, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.calls += 1
        return httpx2.Response(500 if self.calls <= self.failures else 200)


@pytest.fixture
def flaky() -> Flaky:
    return Flaky(3)


@pytest.fixture
def sb(flaky: Flaky) -> Iterator[Sandbox]:
    with httpx2.Client(transport=httpx2.MockTransport(flaky)) as http:
        sandbox = Sandbox(patients=20, seed=1, http_client=http, webhook_retries=FAST)
        yield sandbox
        sandbox.close()


def test_schedule_is_exponential_and_ends_at_three_days() -> None:
    offsets = RetryPolicy().offsets()
    assert offsets[:4] == [60, 180, 420, 900]
    assert offsets[-1] == 3 * 86_400
    assert offsets == sorted(offsets)
    assert len(offsets) == 13


def test_failed_delivery_is_retried_until_it_succeeds(sb: Sandbox, flaky: Flaky) -> None:
    hook = sb.register_webhook("https://receiver.test/hooks", should_retry=True)
    change = sb.update_client("1000001", first_name="Ana")
    assert change.deliveries[0].failed
    assert sb.emitter.wait_for_retries(5)
    attempts = [d for d in sb.emitter.deliveries if d.webhook_id == hook.id]
    assert [d.attempt for d in attempts] == [0, 1, 2, 3]
    assert [d.failed for d in attempts] == [True, True, True, False]
    assert len({d.body for d in attempts}) == 1  # the same event, re-signed
    start = datetime.fromisoformat(change.at)
    offsets = [(datetime.fromisoformat(d.created_at) - start).total_seconds() for d in attempts]
    assert offsets == [0, 60, 180, 420]  # Healthie time, not the scaled wall clock
    assert hook.is_enabled
    assert (hook.retry_count, hook.first_failed_at) == (0, None)  # cleared by the success


def test_webhook_is_disabled_after_three_days_of_failures(sb: Sandbox) -> None:
    hook = sb.register_webhook("https://receiver.test/hooks", should_retry=True)
    sb.set_webhook_failing(hook.id, 503)
    sb.update_client("1000002", first_name="Bo")
    assert sb.emitter.wait_for_retries(10)
    attempts = [d for d in sb.emitter.deliveries if d.webhook_id == hook.id]
    assert len(attempts) == 1 + len(FAST.offsets())
    assert all(d.status_code == 503 for d in attempts)
    assert not hook.is_enabled
    assert hook.warned_at is not None
    assert hook.first_failed_at is not None
    listed = gql(sb, "{ webhooks { nodes { id is_enabled warned_at webhook_events { id } } } }")
    assert listed["webhooks"]["nodes"][0]["is_enabled"] is False
    failed = gql(sb, "{ sentWebhooks(failed: true, first: 100) { total_count } }")
    assert failed["sentWebhooks"]["total_count"] == len(attempts)
    assert sb.update_client("1000002", first_name="Cy").deliveries == []  # disabled


def test_retries_are_off_by_default(flaky: Flaky) -> None:
    with httpx2.Client(transport=httpx2.MockTransport(flaky)) as http:
        sb = Sandbox(patients=5, seed=1, http_client=http)
        hook = sb.register_webhook("https://receiver.test/hooks", should_retry=True)
        sb.update_client("1000001", first_name="Ana")
        assert sb.emitter.pending_retries() == 0
        assert flaky.calls == 1
        assert hook.is_enabled
        assert hook.first_failed_at is not None
        sb.close()


def test_no_retries_for_webhooks_without_should_retry(sb: Sandbox, flaky: Flaky) -> None:
    sb.register_webhook("https://receiver.test/hooks", should_retry=False)
    sb.update_client("1000003", first_name="Di")
    assert sb.emitter.pending_retries() == 0
    assert flaky.calls == 1


def test_webhook_management_mutations(sb: Sandbox, flaky: Flaky) -> None:
    flaky.failures = 0
    created = gql(
        sb,
        """mutation {
             createWebhook(input: {url: "https://receiver.test/h", event_type: PATIENT_UPDATED}) {
               webhook { id is_enabled should_retry event_type signature_secret }
               messages { field }
             }
           }""",
    )["createWebhook"]
    hook = created["webhook"]
    assert hook["is_enabled"] is True
    assert hook["should_retry"] is True  # Healthie's createWebhookInput default
    assert hook["event_type"] == "PATIENT_UPDATED"
    rotated = gql(
        sb,
        "mutation($id: ID) { expireWebhookSignature(input: {id: $id}) "
        "{ webhook { signature_secret } } }",
        id=hook["id"],
    )["expireWebhookSignature"]["webhook"]
    assert rotated["signature_secret"] != hook["signature_secret"]
    sent = gql(
        sb, "mutation($id: ID) { sendTestWebhook(input: {id: $id}) { sent } }", id=hook["id"]
    )
    assert sent["sendTestWebhook"]["sent"] is True
    off = gql(
        sb,
        "mutation($id: ID) { updateWebhook(input: {id: $id, is_enabled: false}) "
        "{ webhook { is_enabled } } }",
        id=hook["id"],
    )
    assert off["updateWebhook"]["webhook"]["is_enabled"] is False
    assert sb.update_client("1000004", first_name="Ed").deliveries == []
    sb.set_webhook_enabled(hook["id"], True)
    assert len(sb.update_client("1000004", first_name="Flo").deliveries) == 1
    gone = gql(
        sb,
        "mutation($id: ID) { deleteWebhook(input: {id: $id}) { webhook { id } } }",
        id=hook["id"],
    )
    assert gone["deleteWebhook"]["webhook"]["id"] == hook["id"]
    assert gql(sb, "{ webhooks { total_count } }")["webhooks"]["total_count"] == 0
    window = gql(
        sb,
        "query($a: ISO8601DateTime, $b: ISO8601DateTime) { sentWebhooks(sent_after: $a, "
        "sent_before: $b) { nodes { event_type webhook_id } } }",
        a="2026-11-01T11:59:59+00:00",
        b="2026-11-01T12:00:02+00:00",
    )["sentWebhooks"]["nodes"]
    assert [n["event_type"] for n in window] == ["TEST_CREATED"]
