"""The command line tells the truth briefly: a user's mistake is one line with the fix and exit
2, a silent Healthie is reported in seconds with its URL, an internal error is one line unless
``--debug``, and the documented conventions (``--version``, ``-h``, ``--config-dir`` and
``--data-dir``, empty results that say so) hold. Each test runs the real console entry point in
a child process, as an operator would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO
from tests.servers import silent

DEMO = (REPO / "config" / "integrations" / "demo-clinic.toml").read_text(encoding="utf-8")
PLAN = REPO / "prompts" / "plans" / "demo-clinic.plan.json"
INSTRUCTIONS = REPO / "prompts" / "examples" / "demo-clinic.md"

silent_healthie = silent.silent_healthie  # the fixture, for the tests below


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def config_dir(tmp_path: Path, text: str = DEMO, *, api_url: str | None = None) -> Path:
    """A config dir holding the demo integration, its paths made absolute."""
    folder = tmp_path / "config"
    folder.mkdir(exist_ok=True)
    text = text.replace("../../prompts/examples/demo-clinic.md", str(INSTRUCTIONS))
    text = text.replace("../../prompts/plans/demo-clinic.plan.json", str(PLAN))
    text = text.replace(".healthie-sync/demo/warehouse.db", str(tmp_path / "warehouse.db"))
    if api_url:
        text = text.replace("http://127.0.0.1:8765/graphql", api_url)
    (folder / "demo-clinic.toml").write_text(text, encoding="utf-8")
    return folder


def secrets_env() -> dict[str, str]:
    from app.secrets.stores import env_name

    return {
        env_name("demo-clinic/healthie-api-key"): "key",
        env_name("demo-clinic/webhook-signing-secret"): "whsec_test",
    }


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    # log warnings (e.g. Healthie's API-version sunset notice) are not the error
    lines = [
        line
        for line in done.stderr.splitlines()
        if line.strip() and not line.startswith(("WARNING ", "warning: "))
    ]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_version_and_short_help():
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("healthie-sync ")
    short = run_cli("-h")
    assert short.returncode == 0
    assert "--config-dir" in short.stdout
    assert "doctor" in short.stdout


def test_an_unknown_integration_is_one_line_with_a_suggestion_and_exit_2(tmp_path):
    done = run_cli(
        "--config-dir",
        str(config_dir(tmp_path)),
        "--data-dir",
        str(tmp_path / "data"),
        "dry-run",
        "demo-clinik",
        "--patient",
        "1",
        env=secrets_env(),
    )
    assert done.returncode == 2
    line = one_error_line(done)
    assert "unknown integration 'demo-clinik'" in line
    assert "did you mean 'demo-clinic'" in line


def test_a_bad_setting_names_its_environment_variable_and_exits_2(tmp_path):
    done = run_cli(
        "--config-dir",
        str(config_dir(tmp_path)),
        "runs",
        env={"HEALTHIE_SYNC_WORKER_CONCURRENCY": "many", "HEALTHIE_SYNC_DATA_DIR": str(tmp_path)},
    )
    assert done.returncode == 2
    line = one_error_line(done)
    assert "HEALTHIE_SYNC_WORKER_CONCURRENCY" in line
    assert "many" not in line  # the value is not echoed: it could be a secret


def test_a_monthly_cadence_is_one_line_naming_the_file_and_the_fix(tmp_path):
    folder = config_dir(tmp_path, DEMO.replace('cadence = "daily"', 'cadence = "monthly"'))
    done = run_cli("--config-dir", str(folder), "--data-dir", str(tmp_path / "d"), "runs")
    assert done.returncode == 2
    line = one_error_line(done)
    assert "demo-clinic.toml" in line
    assert "weekly" in line


def test_an_internal_error_is_one_line_and_the_traceback_needs_debug(tmp_path):
    # A data directory that is a file: the state store cannot open (not a user mistake the
    # engine names; it must still be one line, with --debug for the traceback).
    blocker = tmp_path / "data"
    blocker.write_text("not a directory", encoding="utf-8")
    args = ("--config-dir", str(config_dir(tmp_path)), "--data-dir", str(blocker), "runs")
    done = run_cli(*args, env=secrets_env())
    assert done.returncode in (2, 70), done.stderr
    one_error_line(done)
    debug = run_cli("--debug", *args, env=secrets_env())
    assert debug.returncode == done.returncode
    assert "Traceback" in debug.stderr


def test_runs_on_an_empty_data_dir_says_so_and_where(tmp_path):
    data = tmp_path / "fresh"
    done = run_cli("--config-dir", str(config_dir(tmp_path)), "--data-dir", str(data), "runs")
    assert done.returncode == 0, done.stderr
    assert "no runs recorded in" in done.stdout
    assert str(data) in done.stdout.replace("\n", "")


def test_a_silent_healthie_is_reported_in_seconds_with_its_url(tmp_path, silent_healthie):
    folder = config_dir(tmp_path, api_url=silent_healthie)
    env = {**secrets_env(), "HEALTHIE_SYNC_INTERACTIVE_TIMEOUT_SECONDS": "2"}
    started = time.monotonic()
    done = run_cli(
        "--config-dir",
        str(folder),
        "--data-dir",
        str(tmp_path / "d"),
        "dry-run",
        "demo-clinic",
        "--patient",
        "1",
        "--out",
        str(tmp_path / "report"),
        env=env,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    line = one_error_line(done)
    assert silent_healthie in line
    # two attempts of 2 s each plus start-up: bounded, where the workers' defaults (5 attempts
    # of 30 s) took 158 s; a loose bound, not a benchmark
    assert elapsed < 60


def test_flush_exits_3_when_healthie_cannot_be_reached(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/graphql"  # nobody listens after
    folder = config_dir(tmp_path, api_url=closed)
    env = {**secrets_env(), "HEALTHIE_SYNC_HEALTHIE_MAX_ATTEMPTS": "1"}
    args = ("--config-dir", str(folder), "--data-dir", str(tmp_path / "d"), "flush", "daily")
    # the first flush only sets the sweep's watermark; the second asks Healthie what changed
    assert run_cli(*args, env=env).returncode == 0
    done = run_cli(*args, env=env)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert closed in done.stderr
    assert "integration demo-clinic" in done.stderr
    runs = run_cli(
        "--config-dir",
        str(folder),
        "--data-dir",
        str(tmp_path / "d"),
        "runs",
        "--json",
        env=env,
    )
    assert "sweep upstream_unavailable" in runs.stdout


def test_runs_fit_80_columns_without_cutting_ids(tmp_path):
    from datetime import UTC, datetime

    from app.core.models import Cadence, RunRecord
    from app.core.settings import Settings
    from app.service.runtime import build_state

    data = tmp_path / "data"
    data.mkdir()
    state = build_state(Settings(data_dir=data))
    run_id = "daily-20261201T154941-0dbf83f1-a-rather-long-integration-name"
    state.save_run(
        RunRecord(
            run_id=run_id,
            integration_id="a-rather-long-integration-name",
            cadence=Cadence.DAILY,
            started_at=datetime(2026, 12, 1, 9, tzinfo=UTC),
            status="finished",
        )
    )
    state.close()
    done = run_cli(
        "--config-dir",
        str(config_dir(tmp_path)),
        "--data-dir",
        str(data),
        "runs",
        env={"COLUMNS": "80", "TZ": "UTC"},
    )
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout  # nothing cut
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    assert f"run  {run_id}" in done.stdout  # too wide for a table: one line per field
    assert "UTC" in done.stdout  # times carry their zone
    wide = run_cli("--data-dir", str(data), "runs", env={"COLUMNS": "300", "TZ": "UTC"})
    assert wide.returncode == 0, wide.stderr
    assert run_id in wide.stdout
    assert "┃" in wide.stdout


def test_a_dry_run_that_refuses_every_patient_exits_1(tmp_path):
    from app.secrets.stores import env_name
    from app.service.serving import serve_in_thread
    from sandbox.core import Sandbox
    from sandbox.server import create_app as sandbox_app

    sb = Sandbox(patients=5, seed=4)
    with serve_in_thread(sandbox_app(sb)) as url:
        folder = config_dir(tmp_path, api_url=f"{url}/graphql")
        env = {
            env_name("demo-clinic/healthie-api-key"): sb.api_key,
            env_name("demo-clinic/webhook-signing-secret"): sb.webhook_secret,
        }
        base = ("--config-dir", str(folder), "--data-dir", str(tmp_path / "d"), "dry-run")
        out = ("--out", str(tmp_path / "report"))
        real = next(iter(sb.org.patient_ids()))
        fine = run_cli(*base, "demo-clinic", "--patient", real, *out, env=env)
        assert fine.returncode == 0, fine.stderr
        refused = run_cli(*base, "demo-clinic", "--patient", "999999999", *out, env=env)
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert "1 refused" in refused.stdout
    assert one_error_line(refused).startswith("error: every patient was refused")
