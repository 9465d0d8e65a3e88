"""SIGTERM (how Cloud Run stops an instance) sent to a real ``healthie-sync serve`` mid-batch:
the process exits within its grace period, closes its stores (no SQLite ``-wal`` file left in
the data directory), logs its shutdown line, and loses nothing: each work item is either
written (its patient state recorded, its message acknowledged) or back in the queue, visible at
once and with its patient lease released. Healthie is the sandbox, served by this test process
with injected latency so the batch is still in flight when the signal arrives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import pytest

from app.core.models import WorkItem
from app.queue.sqlite import SqliteQueue
from app.queue.topology import WORK_SUBSCRIPTION, WORK_TOPIC, ensure_topology
from app.secrets.stores import env_name
from app.service.serving import free_port, serve_in_thread
from app.state.sqlite import SqliteStateStore
from sandbox.core import Sandbox
from sandbox.faults import FaultConfig
from sandbox.server import create_app as sandbox_app
from tests.helpers import REPO

pytestmark = pytest.mark.e2e

ITEMS = 30  # two Healthie requests (20 + 10 entries): one batch pulled by one worker
BATCH = 100  # what one worker pulls at a time (workers.loop.WorkerLoop's batch_size)
# After the grace period the process must be gone soon: Cloud Run kills 10 s after SIGTERM and
# the default grace is 8 s; interpreter exit takes the rest (slower on a loaded machine).
EXIT_MARGIN = 2.0


class Started:
    """An ASGI wrapper noting when the first GraphQL request arrives (the batch is in flight)."""

    def __init__(self, app):
        self.app = app
        self.requests = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].endswith("/graphql"):
            self.requests += 1
        await self.app(scope, receive, send)


def write_config(root: Path, api_url: str, data_dir: Path, name: str = "demo-clinic") -> Path:
    folder = root / "integrations"
    folder.mkdir(parents=True, exist_ok=True)
    text = (REPO / "config" / "integrations" / "demo-clinic.toml").read_text(encoding="utf-8")
    text = text.replace("../../prompts/", f"{REPO}/prompts/")
    text = text.replace("http://127.0.0.1:8765/graphql", api_url)
    # the warehouse lives in the data directory, so the -wal check covers the target too
    text = text.replace(".healthie-sync/demo/warehouse.db", str(data_dir / f"{name}.db"))
    text = text.replace('id = "demo-clinic"', f'id = "{name}"')
    text = text.replace("demo-clinic/", f"{name}/")
    (folder / f"{name}.toml").write_text(text, encoding="utf-8")
    return folder


def serve_env(sb: Sandbox, config_dir: Path, data_dir: Path, **settings: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "HEALTHIE_SYNC_CONFIG_DIR": str(config_dir),
        "HEALTHIE_SYNC_DATA_DIR": str(data_dir),
        "HEALTHIE_SYNC_SCHEDULER": "external",
        "HEALTHIE_SYNC_CHECK_SCHEMA_AT_STARTUP": "false",
        "HEALTHIE_SYNC_WORKER_CONCURRENCY": "1",
    }
    for name in ("demo-clinic", "other-clinic"):
        env[env_name(f"{name}/healthie-api-key")] = sb.api_key
        env[env_name(f"{name}/webhook-signing-secret")] = sb.webhook_secret
    env.update({f"HEALTHIE_SYNC_{k.upper()}": v for k, v in settings.items()})
    return env


def start_serve(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"serve exited at start-up ({process.returncode}): {err}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx2.TransportError:
            pass
        assert time.monotonic() < deadline, "serve did not answer /healthz within 60 s"
        time.sleep(0.1)


def publish_work(data_dir: Path, patients: list[str]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    queue = SqliteQueue(data_dir / "queue.db")
    try:
        ensure_topology(queue)
        now = datetime.now(UTC)
        queue.publish_many(
            WORK_TOPIC,
            [
                (
                    WorkItem(
                        integration_id="demo-clinic", patient_id=p, flush_id="f1", dirty_since=now
                    )
                    .model_dump_json()
                    .encode(),
                    {},
                )
                for p in patients
            ],
        )
    finally:
        queue.close()


def terminate(process: subprocess.Popen[str]) -> tuple[float, str]:
    """SIGTERM; seconds until the process was gone, and its stderr."""
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"serve still running 30 s after SIGTERM: {err}") from None
    return time.monotonic() - sent, err


def outcome(data_dir: Path, patients: list[str]) -> tuple[set[str], set[str], set[str]]:
    """(patients recorded as processed, patients whose work is visible in the queue now,
    patients whose lease another worker can take now), read after the process is gone."""
    state = SqliteStateStore(data_dir / "state.db")
    queue = SqliteQueue(data_dir / "queue.db")
    try:
        written = {p for p in patients if state.get_patient("demo-clinic", p) is not None}
        messages = queue.pull(WORK_SUBSCRIPTION, 1000)
        queued = {WorkItem.model_validate_json(m.data).patient_id for m in messages}
        free = {
            p for p in patients if state.try_lease(f"patient:demo-clinic:{p}", "other-worker", 5)
        }
    finally:
        queue.close()
        state.close()
    return written, queued, free


def wal_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.rglob("*-wal"))


@pytest.fixture
def sandbox():
    sb = Sandbox(patients=160, seed=11)
    app = Started(sandbox_app(sb))
    with serve_in_thread(app) as url:
        yield sb, app, f"{url}/graphql"


def wait_for_batch(app: Started, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while app.requests == 0:
        assert process.poll() is None, "serve exited before processing"
        assert time.monotonic() < deadline, "no Healthie request within 30 s"
        time.sleep(0.02)
    time.sleep(0.2)  # the request is now waiting out the sandbox's latency


def test_sigterm_mid_batch_hands_unfinished_work_back_within_the_grace_period(sandbox, tmp_path):
    sb, app, api_url = sandbox
    sb.faults.configure(FaultConfig(latency_seconds=6.0))  # longer than the grace period
    data_dir = tmp_path / "data"
    patients = sorted(sb.org.patient_ids())[:ITEMS]
    publish_work(data_dir, patients)
    config = write_config(tmp_path / "config", api_url, data_dir)
    grace = 3.0
    process = start_serve(
        serve_env(sb, config, data_dir, shutdown_grace_seconds=str(grace)), free_port()
    )
    wait_for_batch(app, process)
    took, err = terminate(process)
    assert process.returncode == 0, err
    assert took < grace + EXIT_MARGIN, f"exit took {took:.1f} s (grace {grace} s): {err}"
    assert "shut down in" in err  # the shutdown path ran and its log line was flushed
    assert wal_files(data_dir) == []
    written, queued, free = outcome(data_dir, patients)
    assert written == set()  # Healthie never answered within the grace period
    assert queued == set(patients)  # every item nacked: visible again at once, nothing lost
    assert free == set(patients)  # and no patient left leased by the dead batch


def test_sigterm_lets_the_batch_in_flight_finish_and_pulls_no_more(sandbox, tmp_path):
    sb, app, api_url = sandbox
    sb.faults.configure(FaultConfig(latency_seconds=0.4))
    data_dir = tmp_path / "data"
    patients = sorted(sb.org.patient_ids())[: BATCH + ITEMS]  # more than one pull
    publish_work(data_dir, patients)
    config = write_config(tmp_path / "config", api_url, data_dir)
    grace = 8.0
    process = start_serve(
        serve_env(sb, config, data_dir, shutdown_grace_seconds=str(grace)), free_port()
    )
    wait_for_batch(app, process)
    took, err = terminate(process)
    assert process.returncode == 0, err
    assert took < grace + EXIT_MARGIN, f"exit took {took:.1f} s (grace {grace} s): {err}"
    assert wal_files(data_dir) == []
    written, queued, _ = outcome(data_dir, patients)
    assert len(written) == BATCH  # the batch in flight finished and was recorded ...
    assert queued == set(patients) - written  # ... and acked; the next one was never pulled


def test_sighup_reloads_the_configuration_of_a_running_serve(sandbox, tmp_path):
    sb, _, api_url = sandbox
    data_dir = tmp_path / "data"
    config = write_config(tmp_path / "config", api_url, data_dir)
    port = free_port()
    # no interval: only the signal checks
    process = start_serve(serve_env(sb, config, data_dir, config_reload_seconds="0"), port)
    try:

        def integrations() -> int:
            health = httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
            return int(health["integrations"])

        assert integrations() == 1
        write_config(tmp_path / "config", api_url, data_dir, name="other-clinic")
        time.sleep(0.3)
        assert integrations() == 1  # nothing happens until asked
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while integrations() != 2:
            assert time.monotonic() < deadline, "SIGHUP did not reload within 10 s"
            time.sleep(0.1)
    finally:
        _, err = terminate(process)
    assert process.returncode == 0, err
    assert "configuration reloaded" in err
