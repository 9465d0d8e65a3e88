"""The metrics API records what the engine does, per integration, through real parts.

* nothing is recorded (and no SDK is loaded by the module) until ``configure``;
* the demo end to end (sandbox over HTTP → signed webhooks → app → flush → workers →
  SQLite) leaves webhooks by outcome (the forged delivery as ``rejected_signature``), dirty
  marks, entries fetched, Healthie requests, target writes equal to the demo's write count,
  and the intake, fetch and write stage latencies;
* a Healthie 503 then 200, and a 429 then 200, are visible as retries by kind, requests by
  outcome and a rate-limit answer (a retried fault leaves a trace even when the call ends well);
* a target failure is a write error of its kind; tokens are counted by kind and mode; the
  consumer middleware counts settled items by outcome;
* ``GET /metrics`` serves the Prometheus text when Prometheus is configured, 404 otherwise;
  the Cloud Monitoring exporter writes ``workload.googleapis.com/healthie_sync.*`` series
  (through the real exporter, to a recording client).
"""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime

import httpx2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from rich.console import Console

from app.agent.usage import TokenUsage, UsageMeter
from app.api import metrics_route
from app.core.models import WorkItem
from app.healthie.client import HealthieClient
from app.observability import metrics, setup
from tests.helpers import REPO
from workers.metrics_middleware import Metrics
from workers.pipeline import Outcome


def test_the_module_loads_no_sdk_and_records_nothing_until_configured():
    probe = (
        "import sys, app.observability.metrics as m; m.record_webhook('a', 'accepted'); "
        "print(m.is_configured(), 'opentelemetry.sdk.metrics' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.e2e
def test_the_demo_leaves_its_metrics(tmp_path, points):
    from sandbox.demo import run_demo

    counts = run_demo(
        patients=40, changes=10, seed=3, data_dir=tmp_path, console=Console(file=io.StringIO())
    )
    webhooks = points("healthie_sync.webhooks")
    assert webhooks[frozenset({"integration": "demo-clinic", "outcome": "accepted"}.items())] > 0
    forged = frozenset({"integration": "demo-clinic", "outcome": "rejected_signature"}.items())
    assert webhooks[forged] == 1
    assert (
        points.total("healthie_sync.dirty_marks", integration="demo-clinic")
        >= counts.dirty_patients
    )
    assert points.total("healthie_sync.entries_fetched", found="true") == counts.dirty_patients
    assert points.total("healthie_sync.healthie.requests", outcome="ok") > 0
    writes = points.total(
        "healthie_sync.target.writes", integration="demo-clinic", target="warehouse", outcome="ok"
    )
    assert writes == counts.writes > 0
    for stage in ("intake", "fetch", "write"):
        assert points.total("healthie_sync.stage.duration", stage=stage) > 0, stage


def _client(responses: list[httpx2.Response]) -> HealthieClient:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return responses.pop(0)

    return HealthieClient(
        url="http://healthie.test/graphql",
        api_key="k",
        http_transport=httpx2.MockTransport(handler),
        rate_limit=10_000,
        max_attempts=3,
        integration_id="clinic-a",
    )


def _ok() -> httpx2.Response:
    return httpx2.Response(200, json={"data": {"p0": {"id": "1"}}})


def test_a_retried_healthie_fault_is_visible(points, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda _s: None)
    client = _client([httpx2.Response(503, text="down"), _ok()])
    try:
        assert client.fetch_entries(["1"]) == {"1": {"id": "1"}}
    finally:
        client.close()
    retries = points("healthie_sync.retries")
    key = {"integration": "clinic-a", "client": "healthie", "kind": "upstream_unavailable"}
    assert retries == {frozenset(key.items()): 1}
    assert points.total("healthie_sync.healthie.requests", outcome="upstream_unavailable") == 1
    assert points.total("healthie_sync.healthie.requests", outcome="ok") == 1
    assert points.total("healthie_sync.entries_fetched", integration="clinic-a") == 1


def test_a_rate_limit_answer_is_counted(points, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda _s: None)
    limited = httpx2.Response(429, headers={"Retry-After": "0"}, text="slow down")
    client = _client([limited, _ok()])
    try:
        client.fetch_entries(["1"])
    finally:
        client.close()
    assert points.total("healthie_sync.rate_limited", integration="clinic-a") == 1
    assert points.total("healthie_sync.retries", kind="rate_limited") == 1


def test_a_failed_target_write_is_an_error_of_its_kind(points):
    from app.core.errors import TargetRejected
    from connectors.base import Scope, Write
    from connectors.memory import MemoryConnector
    from connectors.tables import UpsertRow

    class Refusing(MemoryConnector):
        def write_upsert_row(self, batch):
            raise TargetRejected("the target refused the row")

    connector = Refusing("warehouse")
    scope = Scope("clinic-a", "p1", "run-1", datetime.now(UTC))
    row = UpsertRow(table="t", key="k1", patient_id="p1", values={"a": "x"})
    good = MemoryConnector("warehouse").execute_batch([Write(scope, "upsert_row", row)])
    (result,) = connector.execute_batch([Write(scope, "upsert_row", row)])
    assert good[0].error is None
    assert result.error is not None
    writes = points("healthie_sync.target.writes")
    base = {"integration": "clinic-a", "target": "warehouse", "connector": "memory"}
    assert writes == {
        frozenset({**base, "outcome": "ok", "kind": ""}.items()): 1,
        frozenset({**base, "outcome": "error", "kind": result.error.kind}.items()): 1,
    }


def test_tokens_are_counted_by_kind_and_mode(points):
    meter = UsageMeter()
    meter.record(
        "clinic-a", TokenUsage(input_tokens=10, cache_read_input_tokens=90, output_tokens=5)
    )
    meter.record("clinic-a", TokenUsage(input_tokens=3, output_tokens=1), batch=True)
    tokens = points("healthie_sync.model.tokens")
    by = {dict(k)["kind"] + "/" + dict(k)["mode"]: v for k, v in tokens.items()}
    assert by == {
        "input/direct": 10,
        "cache_read/direct": 90,
        "output/direct": 5,
        "input/batch": 3,
        "output/batch": 1,
    }


def test_the_consumer_middleware_counts_settled_items(points):
    from app.core.errors import PatientNotFound

    item = WorkItem(
        integration_id="clinic-a", patient_id="p1", flush_id="f1", dirty_since=datetime.now(UTC)
    )
    mw = Metrics()
    mw.after_item(Outcome(item, "written", writes=2), "ack", None)
    mw.after_item(Outcome(item, "unchanged"), "ack", None)
    mw.after_item(Outcome(item, "failed", error=PatientNotFound("p1")), "ack", "patient_not_found")
    mw.after_item(Outcome(item, "failed"), "nack", "upstream_unavailable")
    mw.after_item(Outcome(item, "failed"), "dead_letter", "fatal")
    items = {dict(k)["outcome"]: v for k, v in points("healthie_sync.work_items").items()}
    assert items == {
        "processed": 1,
        "skipped_unchanged": 1,
        "skipped": 1,
        "retried": 1,
        "dead_lettered": 1,
    }


def test_metrics_route_serves_prometheus_text_only_when_configured():
    app = FastAPI()
    app.router.routes.extend(metrics_route.build_router().routes)
    client = TestClient(app)
    setup.use_prometheus()
    try:
        metrics.record_webhook("clinic-a", "rejected_signature")
        response = client.get("/metrics")
    finally:
        metrics.shutdown()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    line = 'healthie_sync_webhooks_total{integration="clinic-a",outcome="rejected_signature"}'
    assert line in response.text
    # once metrics are off (or never on), nothing is served
    assert client.get("/metrics").status_code == 404


class RecordingMetricService:
    """What the Cloud Monitoring exporter calls on ``MetricServiceClient``."""

    def __init__(self) -> None:
        self.descriptors: list = []
        self.series: list = []

    def common_project_path(self, project: str) -> str:
        return f"projects/{project}"

    def create_metric_descriptor(self, request):
        self.descriptors.append(request.metric_descriptor)
        return request.metric_descriptor

    def create_time_series(self, request):
        assert request.name == "projects/proj-1"
        self.series.extend(request.time_series)


def test_cloud_monitoring_receives_workload_metric_types():
    service = RecordingMetricService()
    reader = setup.cloud_monitoring_reader("proj-1", client=service, interval=3600)
    metrics.configure([reader])
    try:
        metrics.record_run("clinic-a", "hourly", "failed")
        metrics.record_flush("hourly", "finished")
    finally:
        metrics.shutdown()  # exports what is pending
    types = {s.metric.type for s in service.series}
    assert "workload.googleapis.com/healthie_sync.runs" in types
    assert "workload.googleapis.com/healthie_sync.flushes" in types
    run = next(s for s in service.series if s.metric.type.endswith("healthie_sync.runs"))
    assert (
        dict(run.metric.labels).items() >= {"integration": "clinic-a", "status": "failed"}.items()
    )
    assert {d.type for d in service.descriptors} >= types


def test_exporters_from_the_environment():
    assert setup.exporters_from({}) == ["prometheus"]
    assert setup.exporters_from({"K_SERVICE": "healthie-sync"}) == ["cloud-monitoring"]
    assert setup.exporters_from({"HEALTHIE_SYNC_METRICS": "none"}) == []
    both = {"HEALTHIE_SYNC_METRICS": "prometheus, cloud-monitoring"}
    assert setup.exporters_from(both) == ["prometheus", "cloud-monitoring"]
    from app.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="statsd"):
        setup.exporters_from({"HEALTHIE_SYNC_METRICS": "statsd"})


def test_webhook_outcomes_are_counted_and_made_up_ids_stay_unknown(tmp_path, points):
    from app.api.app import create_app
    from tests.helpers import demo_runtime

    runtime = demo_runtime(tmp_path)
    try:
        client = TestClient(create_app(runtime))
        headers = {"Content-Type": "application/json", "Signature": "sig1=" + "0" * 64}
        for made_up in ("clinic-x", "clinic-y"):
            client.post(f"/webhooks/healthie/{made_up}", content=b"{}", headers=headers)
        refused = client.post("/webhooks/healthie/demo-clinic", content=b"{}", headers=headers)
    finally:
        runtime.close()
    assert refused.status_code == 401
    webhooks = {
        tuple(sorted(dict(k).values())): v for k, v in points("healthie_sync.webhooks").items()
    }
    assert webhooks == {
        ("(unknown)", "rejected_unknown_integration"): 2,
        ("demo-clinic", "rejected_signature"): 1,
    }
