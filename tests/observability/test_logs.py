"""Cloud Logging's structured format (app.core.logs) and the trace header (app.api.tracing).

* ``HEALTHIE_SYNC_LOG_FORMAT=json healthie-sync demo`` writes only JSON lines, each with the
  keys Cloud Logging reads (severity, message, time; labels as strings), and none of them
  holds a patient's name or email (the sandbox's organization is deterministic);
* a record carries the trace and span of the request it was written in (``traceparent``, or
  ``X-Cloud-Trace-Context`` with its decimal span id written as 16 hex digits), and the
  integration and run labels bound around it; malformed trace headers are ignored;
* the format is chosen by the variable, json on Cloud Run (``K_SERVICE``), text elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import datetime

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.tracing import TraceContext
from app.core import logs
from app.core.errors import ConfigurationError
from sandbox.core import Sandbox
from tests.helpers import REPO

SEVERITIES = {"DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL"}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _check_entry(line: str) -> dict:
    entry = json.loads(line)
    assert isinstance(entry, dict), line
    assert entry["severity"] in SEVERITIES, line
    assert isinstance(entry["message"], str), line
    assert entry["message"], line
    assert datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).tzinfo is not None
    labels = entry.get("logging.googleapis.com/labels", {})
    assert all(isinstance(v, str) for v in labels.values()), line
    return entry


@pytest.mark.e2e
def test_the_demo_in_json_mode_writes_only_cloud_logging_lines(tmp_path):
    env = {
        **os.environ,
        "HEALTHIE_SYNC_LOG_FORMAT": "json",
        "HEALTHIE_SYNC_DATA_DIR": str(tmp_path),
    }
    env.pop("K_SERVICE", None)
    done = subprocess.run(
        [sys.executable, "-m", "app", "demo", "--patients", "30", "--changes", "8"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(err) >= 5, done.stderr  # the demo's lines are log records now
    entries = [_check_entry(line) for line in err]
    # the forged delivery's warning, labelled with its integration
    refused = [e for e in entries if "bad signature" in e["message"]]
    assert refused
    assert refused[0]["severity"] == "WARNING"
    assert refused[0]["logging.googleapis.com/labels"]["integration"] == "demo-clinic"
    assert any("run_id" in e.get("logging.googleapis.com/labels", {}) for e in entries)
    # stdout: the counts, one JSON object per line (Cloud Logging takes it as jsonPayload)
    out = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert out
    assert all(isinstance(o, dict) for o in out)
    assert out[-1]["processed"] > 0
    # no patient value in anything written
    sb = Sandbox(patients=30, seed=7)
    values = []
    for patient_id in list(sb.org.patient_ids()):
        patient = sb.org.patient(patient_id)
        assert patient is not None
        values += [patient.first_name, patient.last_name, patient.email]
    written = done.stderr + done.stdout
    assert [v for v in values if v and len(v) > 3 and v in written] == []


class Lines(logging.Handler):
    """Formats each record as it is emitted (inside the context that wrote it)."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured():
    handler = Lines(logs.CloudLoggingFormatter(project="proj-1"))
    logger = logging.getLogger("tests.observability.trace")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, handler.lines
    logger.removeHandler(handler)


def _app(logger: logging.Logger) -> TestClient:
    app = FastAPI()
    app.add_middleware(TraceContext)

    @app.get("/work")
    def work() -> dict[str, str]:
        with logs.bind(integration="clinic-a", run_id="hourly-1-clinic-a"):
            logger.warning("patient %s failed (kind=%s)", "p1", "fatal")
        return {"ok": "yes"}

    return TestClient(app)


def test_a_request_line_carries_its_trace_span_and_labels(captured):
    logger, lines = captured
    client = _app(logger)
    client.get("/work", headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    client.get("/work", headers={"X-Cloud-Trace-Context": f"{TRACE}/74;o=0"})
    client.get("/work", headers={"traceparent": 'bad\n{"severity": "CRITICAL"}'})
    first, second, third = (json.loads(line) for line in lines)
    assert first["logging.googleapis.com/trace"] == f"projects/proj-1/traces/{TRACE}"
    assert first["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"
    assert first["logging.googleapis.com/trace_sampled"] is True
    assert first["logging.googleapis.com/labels"] == {
        "integration": "clinic-a",
        "run_id": "hourly-1-clinic-a",
    }
    assert first["severity"] == "WARNING"
    assert first["message"] == "patient p1 failed (kind=fatal)"
    assert second["logging.googleapis.com/spanId"] == "000000000000004a"  # 74 in hex
    assert second["logging.googleapis.com/trace_sampled"] is False
    assert "logging.googleapis.com/trace" not in third  # a malformed header is ignored


def test_the_trace_does_not_outlive_its_request():
    import asyncio

    seen: list[logs.LogContext] = []

    async def app(scope, receive, send):
        seen.append(logs.current())

    async def serve_two() -> logs.LogContext:
        middleware = TraceContext(app)
        headers = [(b"traceparent", f"00-{TRACE}-00f067aa0ba902b7-01".encode())]
        await middleware({"type": "http", "headers": headers}, None, None)
        await middleware({"type": "http", "headers": []}, None, None)
        return logs.current()

    after = asyncio.run(serve_two())
    assert seen[0].trace_id == TRACE
    assert seen[1].trace_id is None  # the next request on the same task starts clean
    assert after == logs.LogContext()


def test_trace_headers_are_parsed_strictly():
    parse = logs.parse_trace_headers
    assert parse(f"00-{TRACE}-00f067aa0ba902b7-00", None) == (TRACE, "00f067aa0ba902b7", False)
    assert parse(None, TRACE) == (TRACE, None, None)
    assert parse(f"00-{'0' * 32}-00f067aa0ba902b7-01", None) is None
    assert parse(f"ff-{TRACE}-00f067aa0ba902b7-01", None) is None
    assert parse(None, f"{TRACE}/99999999999999999999999") is None
    assert parse("garbage", f"{TRACE}/1;o=1") == (TRACE, "0000000000000001", True)


def test_an_exception_is_in_the_message_and_levels_map_to_severities():
    formatter = logs.CloudLoggingFormatter()
    try:
        raise ValueError("kind=fatal")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed %s", ("p1",), sys.exc_info()
        )
    entry = json.loads(formatter.format(record))
    assert entry["severity"] == "ERROR"
    assert entry["message"].startswith("failed p1\nTraceback")
    assert "ValueError: kind=fatal" in entry["message"]
    for level, name in (
        (logging.DEBUG, "DEBUG"),
        (logging.INFO, "INFO"),
        (logging.CRITICAL, "CRITICAL"),
    ):
        plain = logging.LogRecord("x", level, __file__, 1, "m", (), None)
        assert json.loads(formatter.format(plain))["severity"] == name


def test_only_known_labels_can_be_bound():
    with pytest.raises(ValueError, match="email"):
        with logs.bind(email="someone@example.com"):
            pass


def test_the_format_follows_the_variable_and_cloud_run():
    assert logs.log_format({}) == "text"
    assert logs.log_format({"K_SERVICE": "healthie-sync"}) == "json"
    assert logs.log_format({"K_SERVICE": "x", "HEALTHIE_SYNC_LOG_FORMAT": "text"}) == "text"
    assert logs.log_format({"HEALTHIE_SYNC_LOG_FORMAT": "JSON"}) == "json"
    with pytest.raises(ConfigurationError, match="xml"):
        logs.log_format({"HEALTHIE_SYNC_LOG_FORMAT": "xml"})


def test_configure_installs_one_handler_and_text_lines_show_the_labels(capsys):
    try:
        assert logs.configure(logging.INFO, "json") == "json"
        assert logs.configure(logging.INFO, "text") == "text"
        assert not logs.is_json()
        ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_StderrHandler"]
        assert len(ours) == 1
        with logs.bind(integration="clinic-a"):
            logging.getLogger("tests.text").warning("flush done")
        assert "WARNING tests.text: flush done [integration=clinic-a]" in capsys.readouterr().err
    finally:
        logs.configure(logging.WARNING, "text")
