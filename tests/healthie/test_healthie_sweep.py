"""The missed-change sweep, webhook health and cursor pagination, over httpx2.MockTransport."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx2
import pytest
from gql import GraphQLRequest

from app.core.errors import InvalidResponse
from app.healthie import operations
from app.healthie.pagination import Pages, collect
from app.healthie.sweep import sweep_changes, webhook_health
from tests.healthie.test_client import make

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def at(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


class FakeConnections:
    """Serves named root connections from lists, ``first``/``after`` paging, newest first."""

    def __init__(self, **collections: list[dict]) -> None:
        self.collections = collections
        self.requests: list[tuple[str, dict]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        variables = body.get("variables") or {}
        root = next(name for name in self.collections if f"{name}(" in body["query"])
        self.requests.append((root, variables))
        items = self.collections[root]
        if root == "appliedTags" and variables.get("since"):
            items = [i for i in items if i["updated_at"] >= variables["since"]]
        start = int(variables.get("after") or 0)
        page = items[start : start + variables["first"]]
        end = start + len(page)
        return httpx2.Response(
            200,
            json={
                "data": {
                    root: {
                        "page_info": {"has_next_page": end < len(items), "end_cursor": str(end)},
                        "nodes": page,
                    }
                }
            },
        )


def users(n: int) -> list[dict]:
    """Patient i updated i minutes before T0 + 60 (so newest first)."""
    return [{"id": str(i), "updated_at": at(60 - i)} for i in range(n)]


def test_sweep_stops_at_the_window_and_skips_the_future():
    fake = FakeConnections(
        users=users(200),
        appointments=[
            {"id": "a1", "updated_at": at(50), "user": {"id": "7"}, "attendees": [{"id": "8"}]},
            {"id": "a2", "updated_at": at(20), "user": None, "attendees": [{"id": "9"}]},
            {"id": "a3", "updated_at": at(-5), "user": {"id": "1"}, "attendees": []},
        ],
        appliedTags=[
            {"id": "t1", "user_id": "42", "updated_at": at(30)},
            {"id": "t2", "user_id": "43", "updated_at": at(59)},
        ],
    )
    client = make(fake)
    result = sweep_changes(client, since=T0, until=T0 + timedelta(minutes=55), page_size=10)
    # users updated at T0+60-i for i in 5..60 fall in [T0, T0+55]
    assert result.patient_ids == {str(i) for i in range(5, 61)} | {"42"}
    assert result.appointment_ids == {"a1", "a2"}
    assert result.appointment_patients == {"a1": ["7", "8"], "a2": ["9"]}
    assert result.newest == T0 + timedelta(minutes=55)
    users_pages = sum(1 for root, _ in fake.requests if root == "users")
    assert users_pages == 7  # stopped at the page holding the first patient older than since
    assert result.pages == len(fake.requests) == users_pages + 1 + 1
    assert not result.truncated
    (tags_request,) = [v for root, v in fake.requests if root == "appliedTags"]
    assert tags_request["since"] == "2026-11-01T12:00:00Z"


def test_sweep_of_a_quiet_window():
    fake = FakeConnections(users=users(3), appointments=[], appliedTags=[])
    result = sweep_changes(make(fake), since=T0 + timedelta(hours=5), until=T0 + timedelta(hours=6))
    assert (result.patient_ids, result.appointment_ids, result.newest) == (set(), set(), None)
    assert result.pages == 3


def test_sweep_page_cap_marks_the_result_truncated():
    fake = FakeConnections(users=users(200), appointments=[], appliedTags=[])
    result = sweep_changes(
        make(fake),
        since=T0 - timedelta(days=1),
        until=T0 + timedelta(days=1),
        page_size=10,
        max_pages=3,
    )
    assert result.truncated
    assert len(result.patient_ids) == 30


def test_sweep_needs_aware_datetimes():
    with pytest.raises(ValueError, match="timezone-aware"):
        sweep_changes(
            make(FakeConnections()),
            since=datetime(2026, 1, 1),  # noqa: DTZ001
            until=T0,
        )


def test_pages_follow_cursors_to_the_end():
    fake = FakeConnections(users=users(25))
    request = GraphQLRequest(operations.load("sweep_users"))
    pager = Pages(make(fake), request, "users", page_size=10)
    assert [len(p) for p in pager] == [10, 10, 5]
    assert pager.pages == 3
    assert not pager.truncated
    assert [n["id"] for n in collect(make(fake), request, "users", page_size=7)] == [
        str(i) for i in range(25)
    ]


def test_a_repeated_cursor_is_invalid():
    def handler(request):
        return httpx2.Response(
            200,
            json={
                "data": {
                    "users": {
                        "page_info": {"has_next_page": True, "end_cursor": "same"},
                        "nodes": [{"id": "1"}],
                    }
                }
            },
        )

    with pytest.raises(InvalidResponse, match="repeated"):
        collect(make(handler), GraphQLRequest(operations.load("sweep_users")), "users")


def test_webhook_health_reports_disabled_and_failing_hooks():
    fake = FakeConnections(
        webhooks=[
            {
                "id": "1",
                "url": "https://a/hook",
                "is_enabled": True,
                "should_retry": True,
                "warned_at": None,
                "event_type": None,
                "webhook_events": [{"event_type": "PATIENT_UPDATED"}],
            },
            {
                "id": "2",
                "url": "https://b/hook",
                "is_enabled": False,
                "should_retry": True,
                "warned_at": at(1),
                "event_type": "APPOINTMENT_UPDATED",
                "webhook_events": [],
            },
            {
                "id": "3",
                "url": "https://c/hook",
                "is_enabled": True,
                "should_retry": False,
                "warned_at": None,
                "event_type": None,
                "webhook_events": [],
            },
        ],
        sentWebhooks=[
            {
                "id": "s1",
                "webhook_id": "1",
                "created_at": at(10),
                "http_response_status": "500",
                "url": "https://a/hook",
            },
            {
                "id": "s2",
                "webhook_id": "1",
                "created_at": at(5),
                "http_response_status": "502",
                "url": "https://a/hook",
            },
            {
                "id": "s3",
                "webhook_id": None,
                "created_at": at(3),
                "http_response_status": None,
                "url": "https://gone/hook",
            },
        ],
    )
    statuses = webhook_health(make(fake), since=T0)
    by_id = {(s.webhook_id, s.url): s for s in statuses}
    first = by_id[("1", "https://a/hook")]
    assert (first.failed_deliveries, first.last_failure_status) == (2, "500")
    assert first.event_types == ["PATIENT_UPDATED"]
    second = by_id[("2", "https://b/hook")]
    assert second.problems[0] == "disabled"
    assert "warned" in second.problems[1]
    assert by_id[("3", "https://c/hook")].ok
    assert by_id[("?", "https://gone/hook")].failed_deliveries == 1
    assert statuses[-1].ok  # healthy ones last
    (failed_request,) = [v for root, v in fake.requests if root == "sentWebhooks"]
    assert failed_request["since"] == "2026-11-01T12:00:00Z"


@pytest.mark.e2e
def test_sweep_and_webhook_health_against_the_sandbox_server():
    from app.healthie.client import HealthieClient
    from app.service.serving import serve_in_thread
    from sandbox.core import Sandbox
    from sandbox.server import create_app

    sandbox = Sandbox(patients=40, seed=5)
    ids = list(sandbox.org.patient_ids())
    since = sandbox.clock
    sandbox.update_client(ids[3], first_name="Changed")
    appointment = sandbox.create_appointment(
        ids[7], suppress_webhooks=True, date="2026-11-20 10:00:00 +0000"
    ).subject_id
    tag = sandbox.create_tag("swept")
    sandbox.apply_tag(ids[9], tag.id)
    until = sandbox.clock
    try:
        with serve_in_thread(create_app(sandbox)) as url:
            client = HealthieClient(url=f"{url}/graphql", api_key=sandbox.api_key)
            try:
                result = sweep_changes(client, since=since, until=until, page_size=10)
                statuses = webhook_health(client, since=since)
            finally:
                client.close()
    finally:
        sandbox.close()
    assert {ids[3], ids[9]} <= result.patient_ids
    assert appointment in result.appointment_ids
    assert ids[7] in result.appointment_patients[appointment]
    assert result.newest is not None
    assert since <= result.newest <= until
    assert statuses == []  # no webhooks registered
