"""GraphQL over real HTTP: auth, versions, aliased entry batches, mutations, privacy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from app.service.serving import serve_in_thread
from sandbox.core import Sandbox
from sandbox.faults import FaultConfig
from sandbox.server import create_app
from tests.sandbox.records import patient_of, patients_of

OPERATIONS = Path(__file__).resolve().parents[2] / "app" / "healthie" / "operations"
ENTRY = (OPERATIONS / "entry.graphql").read_text(encoding="utf-8")

pytestmark = pytest.mark.e2e


def entries_query(ids: list[str]) -> tuple[str, dict[str, str]]:
    """The aliased batch the engine sends: p0: user(id: $id0) { ...PatientEntry } ..."""
    params = ", ".join(f"$id{i}: ID" for i in range(len(ids)))
    body = " ".join(f"p{i}: user(id: $id{i}) {{ ...PatientEntry }}" for i in range(len(ids)))
    return f"query Entries({params}) {{ {body} }}\n{ENTRY}", {
        f"id{i}": v for i, v in enumerate(ids)
    }


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    return Sandbox(patients=500, seed=7)


@pytest.fixture(scope="module")
def client(sb: Sandbox) -> Iterator[httpx2.Client]:
    headers = {
        "Authorization": f"Basic {sb.api_key}",
        "AuthorizationSource": "API",
        "Healthie-GraphQL-API-Version": "2026-01-01",
    }
    with serve_in_thread(create_app(sb)) as url, httpx2.Client(base_url=url, headers=headers) as c:
        yield c


def gql(client: httpx2.Client, query: str, variables: dict | None = None, **kw) -> httpx2.Response:
    return client.post("/graphql", json={"query": query, "variables": variables or {}}, **kw)


def test_refuses_requests_without_healthie_auth_headers(client: httpx2.Client, sb: Sandbox) -> None:
    query = "{ currentUser { id } }"
    for headers in (
        {"Authorization": "", "AuthorizationSource": "API"},
        {"Authorization": f"Basic {sb.api_key}", "AuthorizationSource": ""},
        {"Authorization": f"Bearer {sb.api_key}", "AuthorizationSource": "API"},
        {"Authorization": "Basic wrong", "AuthorizationSource": "API"},
    ):
        response = gql(client, query, headers=headers)
        assert response.status_code == 401
        assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        assert "data" not in response.json()
    assert gql(client, query).json()["data"]["currentUser"]["id"]


def test_version_header(client: httpx2.Client) -> None:
    query = "{ currentUser { id } }"
    ok = gql(client, query).json()
    assert ok["data"]["currentUser"]
    # The sandbox clock (2026-11-01) is past 2026-07-01: older versions are deprecated.
    assert ok["extensions"]["warnings"][0]["code"] == "API_VERSION_SUNSET_WARNING"
    assert "warnings" not in gql(
        client, query, headers={"Healthie-GraphQL-API-Version": "2026-07-01"}
    ).json().get("extensions", {})
    bad = gql(client, query, headers={"Healthie-GraphQL-API-Version": "2025-06-15"}).json()
    assert bad["errors"][0]["extensions"]["code"] == "UNSUPPORTED_API_VERSION"
    assert "data" not in bad
    empty = gql(client, query, headers={"Healthie-GraphQL-API-Version": ""}).json()
    assert empty["errors"][0]["extensions"]["code"] == "UNSUPPORTED_API_VERSION"


def test_aliased_batch_of_entries_returns_requested_fields(
    client: httpx2.Client, sb: Sandbox
) -> None:
    ids = [str(1_000_000 + i) for i in range(100)]
    query, variables = entries_query(ids)
    before = sb.counters["Entries"]
    response = gql(client, query, variables)
    body = response.json()
    assert response.status_code == 200
    assert "errors" not in body
    assert [body["data"][f"p{i}"]["id"] for i in range(100)] == ids
    entry = body["data"]["p0"]
    patient = patient_of(sb.org, ids[0])
    assert entry["first_name"] == patient.first_name
    assert entry["email"] == patient.email
    expected = {
        line.strip().split()[0]
        for line in ENTRY.split("fragment EntryAppointment")[0].split("{", 1)[1].splitlines()
        if line.strip() and line.startswith("  ") and not line.startswith("   ")
    } - {"}"}
    assert expected <= set(entry), expected - set(entry)
    assert any(body["data"][f"p{i}"]["appointments"] for i in range(100))
    assert any(body["data"][f"p{i}"]["policies"] for i in range(100))
    assert sb.counters["Entries"] == before + 1  # bench/sandbox_entries measures its speed


def test_appointment_resolution_sees_deleted_only_when_asked(
    client: httpx2.Client, sb: Sandbox
) -> None:
    appt = next(
        a
        for a in (
            sb.org.appointment(x)
            for p in patients_of(sb.org, sb.org.patient_ids())
            for x in p.appointment_ids
        )
        if a and a.deleted_at
    )
    query = (OPERATIONS / "appointment_patients.graphql").read_text(encoding="utf-8")
    found = gql(client, query, {"id": appt.id}).json()["data"]["appointment"]
    assert found["id"] == appt.id
    assert found["user"]["id"] == appt.user_id
    hidden = gql(client, "query($id: ID) { appointment(id: $id) { id } }", {"id": appt.id})
    assert hidden.json()["data"]["appointment"] is None


def test_chart_notes_and_chat_messages_never_reach_a_served_entry(
    client: httpx2.Client, sb: Sandbox
) -> None:
    ids = [str(1_000_000 + i) for i in range(40)]
    query, variables = entries_query(ids)
    served = gql(client, query, variables).text
    listing = gql(client, "{ users(first: 40) { nodes { id first_name metadata } } }").text
    secrets = [r.text for pid in ids for r in sb.org.clinical_records(pid)]
    assert secrets
    for text in secrets:
        token = text.split(":", 1)[0]  # CHART-NOTE-<hex> / CHAT-MESSAGE-<hex>
        assert token not in served
        assert token not in listing
        assert text not in served


def test_users_connection_pages_with_cursors(client: httpx2.Client, sb: Sandbox) -> None:
    query = (
        "query($after: String) { users(first: 200, after: $after) { total_count "
        "page_info { has_next_page end_cursor } nodes { id } } }"
    )
    seen, after = [], None
    while True:
        page = gql(client, query, {"after": after}).json()["data"]["users"]
        assert page["total_count"] == sb.org.size
        seen += [n["id"] for n in page["nodes"]]
        if not page["page_info"]["has_next_page"]:
            break
        after = page["page_info"]["end_cursor"]
    assert seen == list(sb.org.patient_ids())


def test_update_client_validation_failure_returns_messages(
    client: httpx2.Client, sb: Sandbox
) -> None:
    query = (OPERATIONS / "update_client.graphql").read_text(encoding="utf-8")
    before = patient_of(sb.org, "1000003").email
    response = gql(client, query, {"input": {"id": "1000003", "email": "not-an-email"}})
    body = response.json()
    assert response.status_code == 200
    assert "errors" not in body
    payload = body["data"]["updateClient"]
    assert payload["user"] is None
    assert payload["messages"] == [{"field": "email", "message": "Email is invalid"}]
    assert patient_of(sb.org, "1000003").email == before
    ok = gql(client, query, {"input": {"id": "1000003", "first_name": "Zoë"}}).json()
    assert ok["data"]["updateClient"] == {"user": {"id": "1000003"}, "messages": []}
    assert patient_of(sb.org, "1000003").first_name == "Zoë"


def test_rate_limit_and_complexity_faults(sb: Sandbox) -> None:
    headers = {
        "Authorization": f"Basic {sb.api_key}",
        "AuthorizationSource": "API",
        "Healthie-GraphQL-API-Version": "2026-01-01",
    }
    with serve_in_thread(create_app(sb)) as url, httpx2.Client(base_url=url, headers=headers) as c:
        sb.faults.configure(FaultConfig(rate_limit_per_second=3, complexity_budget=2000))
        try:
            codes = [gql(c, "{ currentUser { id } }").json() for _ in range(5)]
            limited = [r for r in codes if "errors" in r]
            assert limited
            assert limited[0]["errors"][0]["extensions"]["code"] == "TOO_MANY_REQUESTS"
            sb.faults.configure(FaultConfig(complexity_budget=2000))
            query, variables = entries_query([str(1_000_000 + i) for i in range(100)])
            message = gql(c, query, variables).json()["errors"][0]["message"]
            assert message.startswith("Query has complexity of ")
            assert message.endswith("which exceeds max complexity of 2000")
        finally:
            sb.faults.configure(FaultConfig())


def test_served_json_is_utf8_not_escaped(client: httpx2.Client) -> None:
    raw = gql(client, "{ users(first: 100) { nodes { last_name } } }").content
    assert json.loads(raw)["data"]["users"]["nodes"]
    assert b"\\u" not in raw


def test_stats_count_every_request_refused_or_not(sb: Sandbox) -> None:
    # a benchmark in another process counts requests per entry here, so refusals count too
    with serve_in_thread(create_app(sb)) as url, httpx2.Client(base_url=url) as c:
        headers = {
            "Authorization": f"Basic {sb.api_key}",
            "AuthorizationSource": "API",
            "Healthie-GraphQL-API-Version": "2026-01-01",
        }
        start = c.get("/_sandbox/stats").json()
        assert start == {"requests": 0, "rate_limited": 0, "operations": dict(sb.counters)}
        assert gql(c, "{ currentUser { id } }", headers={"Authorization": "Basic no"}).status_code
        sb.faults.configure(FaultConfig(rate_limit_per_second=2))
        try:
            answers = [gql(c, "query Me { currentUser { id } }", headers=headers) for _ in range(5)]
        finally:
            sb.faults.configure(FaultConfig())
        refused = sum(1 for a in answers if "errors" in a.json())
        stats = c.get("/_sandbox/stats").json()
    assert refused == 3
    assert stats["requests"] == 6
    assert stats["rate_limited"] == 3
    assert stats["operations"]["Me"] == start["operations"].get("Me", 0) + 2


def test_standalone_options_configure_latency_rate_limit_and_warm_patients() -> None:
    from sandbox.cli import configured

    cold = configured(30, 7)
    assert cold.faults.config == FaultConfig()
    assert not any(cold.org.materialized(i) for i in range(30))
    warm = configured(30, 7, latency=0.3, rate_limit=50, warm=True)
    assert warm.faults.latency() == 0.3
    assert warm.faults.config.rate_limit_per_second == 50
    assert all(warm.org.materialized(i) for i in range(30))
