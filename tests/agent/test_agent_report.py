"""The dry-run report: per-patient decisions, ids and field names, no PHI or secrets by default."""

from __future__ import annotations

import json

from app.agent.plan import PlanAgent
from app.agent.report import ReportItem, build_report, redact, render_markdown
from app.core.config import load_integration
from app.state.base import PatientState
from tests.fake_anthropic import DEMO_CONFIG, DEMO_PLAN, demo_entry

INTEGRATION = load_integration(DEMO_CONFIG)
PLAN = PlanAgent.from_file(DEMO_PLAN)


def items() -> list[ReportItem]:
    first = demo_entry("42")
    previous = PatientState(
        integration_id="demo-clinic",
        patient_id="43",
        content_hash="x",
        entry=demo_entry("43").data,
        outcome="written",
        updated_at=first.fetched_at,
    )
    second = demo_entry("43", appointments=[])
    skipped = demo_entry("44", active_tags=[{"id": "5", "name": "do-not-sync"}])
    return [
        ReportItem(first, None, PLAN.decide(INTEGRATION, first, None)),
        ReportItem(second, previous, PLAN.decide(INTEGRATION, second, previous)),
        ReportItem(skipped, None, PLAN.decide(INTEGRATION, skipped, None)),
        ReportItem(demo_entry("45"), None, None, "unknown target 'crm'; configured: [...]"),
    ]


def test_report_lists_decisions_ids_and_field_names_without_values():
    report = build_report(items(), integration_id="demo-clinic")
    text = json.dumps(report, ensure_ascii=False) + render_markdown(report)
    for phi in ("Zoë", "Example.COM", "1980-02-03", "Aetna", "555"):
        assert phi not in text
    assert report["summary"] == {"write": 2, "skip": 1, "refused": 1, "operations": 4}
    first = report["patients"][0]
    assert first["entry"]["list_ids"]["appointments"] == ["4200"]
    assert "email" in first["entry"]["fields"]
    assert first["operations"][0]["key"] == "42"
    assert first["operations"][0]["args"]["values"]["email"] == "<str>"
    assert report["patients"][1]["changes"] == ["appointments[id=4300]"]
    assert report["patients"][1]["operations"][-1]["operation"] == "delete_row"
    md = render_markdown(report)
    assert "## Patient 44: skip" in md
    assert "do-not-sync" in md  # the reason cites the instruction
    assert "## Patient 45: refused" in md
    assert "| 1 | warehouse | upsert_row | patients | 42 |" in md


def test_values_are_shown_on_request_but_secrets_never():
    report = build_report(items()[:1], integration_id="demo-clinic", show_values=True)
    assert report["patients"][0]["operations"][0]["args"]["values"]["email"] == "zoe.42@example.com"
    assert redact({"api_key": "sk", "nested": {"password": "p", "x": 1}}, show_values=True) == {
        "api_key": "<redacted>",
        "nested": {"password": "<redacted>", "x": 1},
    }
