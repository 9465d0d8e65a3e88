"""Sweep listings: users, appointments and applied tags in a global order, keyset-paged."""

from __future__ import annotations

from typing import Any

import pytest
from graphql import ExecutionResult, execute, parse

from sandbox.core import Sandbox
from sandbox.executable import build_executable_schema
from sandbox.generate import iso
from tests.sandbox.records import appointment_of, patient_of, patients_of

SCHEMA = build_executable_schema()

USERS = """
query($order: UserOrderKeys, $first: Int, $after: String, $status: String, $kw: String) {
  users(order_by: $order, first: $first, after: $after, active_status: $status, keywords: $kw) {
    total_count
    page_info { has_next_page end_cursor }
    nodes { id updated_at created_at active first_name }
  }
}
"""
APPOINTMENTS = """
query($order: AppointmentOrderKeys, $first: Int, $after: String, $filter: String,
      $is_org: Boolean, $user_id: ID, $is_active: Boolean) {
  appointments(order_by: $order, first: $first, after: $after, filter: $filter,
               is_org: $is_org, user_id: $user_id, is_active: $is_active) {
    total_count
    page_info { has_next_page end_cursor }
    nodes { id updated_at date pm_status deleted_at provider { id } user { id } }
  }
}
"""
APPLIED = """
query($first: Int, $after: String, $since: ISO8601DateTime, $until: ISO8601DateTime, $tag: ID) {
  appliedTags(first: $first, after: $after, updated_after: $since, updated_before: $until,
              tag_id: $tag) {
    page_info { has_next_page end_cursor }
    nodes { id user_id updated_at user { id } tag { id name } }
  }
}
"""


def run(sb: Sandbox, query: str, **variables: Any) -> dict[str, Any]:
    result = execute(SCHEMA, parse(query), context_value=sb, variable_values=variables)
    assert isinstance(result, ExecutionResult)
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data


def sweep(sb: Sandbox, query: str, field: str, **variables: Any) -> list[dict[str, Any]]:
    nodes, after = [], None
    while True:
        page = run(sb, query, after=after, **variables)[field]
        nodes += page["nodes"]
        if not page["page_info"]["has_next_page"]:
            return nodes
        after = page["page_info"]["end_cursor"]


@pytest.fixture
def sb() -> Sandbox:
    return Sandbox(patients=300, seed=21)


def test_users_by_updated_at_match_the_generated_patients(sb: Sandbox) -> None:
    nodes = sweep(sb, USERS, "users", order="UPDATED_AT_DESC", first=37)
    assert len(nodes) == 300
    everyone = {p.id: p for p in map(sb.org.patient, sb.org.patient_ids()) if p}
    for node in nodes:
        assert node["updated_at"] == everyone[node["id"]].updated_at
        assert node["updated_at"] < iso(sb.clock)  # generated before the start clock
    stamps = [(n["updated_at"], int(n["id"])) for n in nodes]
    assert stamps == sorted(stamps, reverse=True)
    ascending = sweep(sb, USERS, "users", order="CREATED_AT_ASC", first=100)
    assert [n["created_at"] for n in ascending] == sorted(p.created_at for p in everyone.values())


def test_sweep_without_generating_the_organization() -> None:
    big = Sandbox(patients=20_000, seed=3)
    page = run(big, USERS, order="UPDATED_AT_DESC", first=50)["users"]
    assert len(page["nodes"]) == 50
    assert page["total_count"] == 20_000
    assert len(big.org._patients) <= 50  # only the page's patients were generated


def test_changed_patients_move_to_the_top_with_the_change_clock(sb: Sandbox) -> None:
    first = run(sb, USERS, order="UPDATED_AT_DESC", first=5)["users"]
    sb.update_client("1000200", first_name="Zoë")
    sb.update_client("1000010", last_name="Núñez")
    top = run(sb, USERS, order="UPDATED_AT_DESC", first=3)["users"]["nodes"]
    assert [n["id"] for n in top[:2]] == ["1000010", "1000200"]
    assert top[0]["updated_at"] == iso(sb.clock)
    # A cursor taken before the changes keeps paging where it was: keyset, not offset.
    after = run(sb, USERS, order="UPDATED_AT_DESC", first=5, after=first["page_info"]["end_cursor"])
    ids = [n["id"] for n in after["users"]["nodes"]]
    assert "1000010" not in ids
    assert "1000200" not in ids
    oldest = sweep(sb, USERS, "users", order="UPDATED_AT_ASC", first=100)
    assert [n["id"] for n in oldest[-2:]] == ["1000200", "1000010"]


def test_active_status_and_keywords_filters(sb: Sandbox) -> None:
    archived = sweep(sb, USERS, "users", status="archived", first=50)
    everyone = [p for p in map(sb.org.patient, sb.org.patient_ids()) if p]
    assert [n["id"] for n in archived] == [p.id for p in everyone if not p.active]
    page = run(sb, USERS, status="active", order="UPDATED_AT_DESC", first=10)["users"]
    assert page["total_count"] == sum(p.active for p in everyone)
    assert all(n["active"] for n in page["nodes"])
    target = everyone[17]
    found = run(sb, USERS, kw=f"{target.first_name} {target.last_name}", first=100)["users"]
    assert target.id in [n["id"] for n in found["nodes"]]
    assert all(n["first_name"] == target.first_name for n in found["nodes"])


def test_appointments_sweep_follows_healthie_visibility(sb: Sandbox) -> None:
    nodes = sweep(
        sb,
        APPOINTMENTS,
        "appointments",
        order="UPDATED_AT_DESC",
        first=90,
        filter="all",
        is_org=True,
    )
    visible = [a for a in sb.org.appointments.values() if a.deleted_at is None]
    assert sorted(n["id"] for n in nodes) == sorted(a.id for a in visible)
    assert all(n["deleted_at"] is None for n in nodes)
    stamps = [(n["updated_at"], int(n["id"])) for n in nodes]
    assert stamps == sorted(stamps, reverse=True)
    # Defaults: future appointments of the current user only.
    mine = sweep(sb, APPOINTMENTS, "appointments", first=100)
    me = min(sb.org.providers)
    assert mine
    assert all(n["provider"]["id"] == me and n["date"] >= iso(sb.clock) for n in mine)
    active = sweep(
        sb, APPOINTMENTS, "appointments", filter="all", is_org=True, is_active=True, first=100
    )
    assert all(n["pm_status"] not in ("Cancelled", "No-Show", "Re-Scheduled") for n in active)


def test_changed_created_and_deleted_appointments(sb: Sandbox) -> None:
    run(sb, APPOINTMENTS, order="UPDATED_AT_DESC", first=1, filter="all", is_org=True)  # index
    patient = next(
        p
        for p in patients_of(sb.org, sb.org.patient_ids())
        if len([a for a in p.appointment_ids if not appointment_of(sb.org, a).deleted_at]) >= 2
    )
    live = [a for a in map(sb.org.appointment, patient.appointment_ids) if a and not a.deleted_at]
    sb.update_appointment(live[0].id, pm_status="No-Show")
    made = sb.create_appointment(patient.id, date="2026-11-20T15:00:00+00:00")
    top = run(sb, APPOINTMENTS, order="UPDATED_AT_DESC", first=2, filter="all", is_org=True)
    assert [n["id"] for n in top["appointments"]["nodes"]] == [made.subject_id, live[0].id]
    sb.delete_appointment(made.subject_id)
    top = run(sb, APPOINTMENTS, order="UPDATED_AT_DESC", first=1, filter="all", is_org=True)
    assert [n["id"] for n in top["appointments"]["nodes"]] == [live[0].id]
    own = run(sb, APPOINTMENTS, user_id=patient.id, filter="all", first=50)["appointments"]
    assert made.subject_id not in [n["id"] for n in own["nodes"]]
    assert own["total_count"] == len(live)


def test_applied_tags_window_and_pages(sb: Sandbox) -> None:
    start = iso(sb.clock)
    assert run(sb, APPLIED, since=start)["appliedTags"]["nodes"] == []
    tag = next(t for t in sb.org.tags if t not in patient_of(sb.org, "1000004").applied_tags)
    sb.apply_tag("1000004", tag)
    sb.apply_tag("1000005", tag)
    recent = run(sb, APPLIED, since=start, first=10)["appliedTags"]["nodes"]
    assert [(n["user_id"], n["user"]["id"], n["tag"]["id"]) for n in recent] == [
        ("1000005", "1000005", tag),
        ("1000004", "1000004", tag),
    ]
    sb.remove_applied_tag("1000005", tag)
    assert [n["user_id"] for n in run(sb, APPLIED, since=start)["appliedTags"]["nodes"]] == [
        "1000004"
    ]
    everything = sweep(sb, APPLIED, "appliedTags", first=64)
    expected = sum(len(p.applied_tags) for p in map(sb.org.patient, sb.org.patient_ids()) if p)
    assert len(everything) == len({n["id"] for n in everything}) == expected
    ids = [int(n["id"]) for n in everything]
    assert ids == sorted(ids, reverse=True)
    one = sweep(sb, APPLIED, "appliedTags", tag=tag, first=10)
    assert one
    assert all(n["tag"]["id"] == tag for n in one)
    older = run(sb, APPLIED, until="2024-01-01T00:00:00+00:00", first=100)["appliedTags"]
    assert all(n["updated_at"] < "2024-01-01" for n in older["nodes"])


def test_invalid_cursor_is_a_graphql_error(sb: Sandbox) -> None:
    result = execute(
        SCHEMA,
        parse(USERS),
        context_value=sb,
        variable_values={"order": "UPDATED_AT_DESC", "after": "bm90IGEgY3Vyc29y"},
    )
    assert isinstance(result, ExecutionResult)
    assert result.errors
    assert "Invalid cursor" in result.errors[0].message


def test_engine_operations_run_against_the_sandbox(sb: Sandbox) -> None:
    """Every read operation the engine ships (sweep and webhook health included) executes
    without errors, and the sweeps see the sandbox's changes."""
    from sandbox.subset import OPERATIONS_DIR

    sb.update_client("1000009", first_name="Ünal")
    variables = {"first": 10, "since": "2026-11-01T11:00:00+00:00", "id": "1000009"}
    for path in sorted(OPERATIONS_DIR.glob("*.graphql")):
        text = path.read_text(encoding="utf-8")
        if not text.lstrip("# \n").startswith("query") and "\nquery " not in text:
            continue  # fragments and mutations
        result = execute(SCHEMA, parse(text), context_value=sb, variable_values=variables)
        assert isinstance(result, ExecutionResult)
        assert result.errors is None, (path.name, result.errors)
        if "order_by: UPDATED_AT_DESC" in text and "users(" in text:
            assert result.data is not None
            assert result.data["users"]["nodes"][0]["id"] == "1000009"
