"""Dry runs: plans and a readable report for live entries, nothing written or recorded."""

from __future__ import annotations

from typing import cast

import httpx2

from app.agent.report import build_report, render_markdown
from connectors.memory import MemoryConnector
from tests.helpers import demo_runtime
from tests.workers.test_workers import FakeHealthie
from workers.dry_run import dry_run


def test_dry_run_reports_plans_and_writes_nothing(tmp_path):
    fake = FakeHealthie()
    fake.patients["3"]["active_tags"] = [{"id": "9", "name": "do-not-sync"}]
    rt = demo_runtime(tmp_path, http_transport=httpx2.MockTransport(fake))
    items = dry_run(rt, "demo-clinic", ["1", "3", "404"])
    assert [i.entry.patient_id for i in items] == ["1", "3", "404"]
    first, tagged, missing = items
    assert first.plan is not None
    assert first.plan.operations
    assert tagged.plan is not None
    assert tagged.plan.action == "skip"
    assert missing.plan is None
    assert "not found" in (missing.error or "")
    assert cast(MemoryConnector, rt.connectors("demo-clinic")["warehouse"]).rows == {}
    assert rt.state.get_patient("demo-clinic", "1") is None
    report = build_report(items, integration_id="demo-clinic")
    markdown = render_markdown(report)
    assert "do-not-sync" in markdown or "skip" in markdown
    assert "P1" not in markdown  # values (PHI) only with show_values
    rt.close()
