"""Backfill and re-sync over real HTTP against the sandbox: a new integration's whole roster
arrives, a second backfill writes nothing, changing the plan file rewrites everyone at the next
run (the rules are part of the skip decision), a staging run never makes a live run skip, a
crashed backfill resumes from its checkpoint, and ``resync`` decides unchanged entries again."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from app.core.models import Cadence
from app.service.serving import serve_in_thread
from sandbox.core import Sandbox
from sandbox.server import create_app as sandbox_app
from tests.helpers import REPO, demo_runtime
from workers.backfill import backfill, force_resync, was_backfilled
from workers.consumer import drain
from workers.flusher import flush

PLAN = REPO / "prompts" / "plans" / "demo-clinic.plan.json"
PATIENTS = 200  # the sandbox default, as the issue states it


@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox(patients=PATIENTS, seed=9)
    with serve_in_thread(sandbox_app(sb)) as url:
        yield sb, f"{url}/graphql"


def runtime_for(tmp_path: Path, sandbox, *, plan: Path | None = None, mode: str = "live"):
    from app.state.sqlite import SqliteStateStore

    sb, url = sandbox
    # durable state in the test's folder: a second runtime is the same engine restarted
    state = SqliteStateStore(str(tmp_path / "state.db"))
    rt = demo_runtime(tmp_path, api_url=url, api_key=sb.api_key, target="sqlite", state=state)
    integration = rt.integrations["demo-clinic"]
    agent = integration.agent.model_copy(update={"plan": plan or PLAN})
    rt.integrations["demo-clinic"] = integration.model_copy(update={"agent": agent, "mode": mode})
    return rt


def run_once(rt) -> tuple[int, int]:
    result = flush(rt, Cadence.DAILY)
    counts = drain(rt)
    return result.work_items, counts.processed


def warehouse_patients(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "warehouse.db") as db:
        return int(db.execute("SELECT COUNT(DISTINCT patient_id) FROM patients").fetchone()[0])


def test_a_backfill_writes_every_patient_once_and_a_rules_change_rewrites_them(tmp_path, sandbox):
    plan = tmp_path / "plan.json"
    shutil.copy(PLAN, plan)
    rt = runtime_for(tmp_path, sandbox, plan=plan)
    try:
        first = flush(rt, Cadence.DAILY)  # never backfilled: said, not done silently
        assert any("never backfilled" in n for n in first.notices)
        assert not was_backfilled(rt.state, "demo-clinic")
        progress = backfill(rt.state, rt.healthie("demo-clinic"), "demo-clinic", chunk_size=25)
        assert progress.marked == PATIENTS
        assert progress.pages == 2  # 100 ids a page
        assert run_once(rt) == (PATIENTS, PATIENTS)
        assert warehouse_patients(tmp_path) == PATIENTS
        # a second backfill marks everyone, and none is written again
        backfill(rt.state, rt.healthie("demo-clinic"), "demo-clinic")
        assert run_once(rt) == (PATIENTS, 0)
    finally:
        rt.close()
    # the plan file changes (a reviewer edits it): the next run decides every entry again
    plan.write_text(plan.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    rt = runtime_for(tmp_path, sandbox, plan=plan)
    try:
        result = flush(rt, Cadence.DAILY)
        assert result.rules_backfilled == PATIENTS
        assert drain(rt).processed == PATIENTS
        assert run_once(rt) == (0, 0)  # and once only
    finally:
        rt.close()


def test_a_staging_run_never_makes_a_live_run_skip(tmp_path, sandbox):
    staging_rt = runtime_for(tmp_path, sandbox)
    integration = staging_rt.integrations["demo-clinic"]
    target = integration.targets[0].model_copy(
        update={"staging": {"path": str(tmp_path / "staging.db")}}
    )
    staging_rt.integrations["demo-clinic"] = integration.model_copy(
        update={"mode": "staging", "targets": [target]}
    )
    ids = list(sandbox[0].org.patient_ids())[:5]
    try:
        backfill(staging_rt.state, staging_rt.healthie("demo-clinic"), "demo-clinic", patients=ids)
        assert run_once(staging_rt) == (5, 5)
        # the same state store, now live: the staging decisions do not count
        live = staging_rt.integrations["demo-clinic"].model_copy(update={"mode": "live"})
        staging_rt.integrations["demo-clinic"] = live
        for clients in staging_rt._clients.values():
            clients.close()
        staging_rt._clients.clear()  # the runtime a restart in live mode would build
        backfill(staging_rt.state, staging_rt.healthie("demo-clinic"), "demo-clinic", patients=ids)
        assert drain(staging_rt).processed == 0  # nothing published yet: the flush does
        assert run_once(staging_rt) == (5, 5)
    finally:
        staging_rt.close()


def test_a_crashed_backfill_resumes_from_its_checkpoint(tmp_path, sandbox):
    rt = runtime_for(tmp_path, sandbox)
    seen: list[int] = []

    class Crash(BaseException):
        pass

    def crash_after_first_page(progress) -> None:
        seen.append(progress.marked)
        if progress.marked >= 20:
            raise Crash

    try:
        client = rt.healthie("demo-clinic")
        # pages of 20 so the crash lands after the first chunk of 20 was marked
        import workers.backfill as module

        original = module.PAGE_SIZE
        module.PAGE_SIZE = 20
        try:
            with pytest.raises(Crash):
                backfill(
                    rt.state,
                    client,
                    "demo-clinic",
                    chunk_size=20,
                    on_progress=crash_after_first_page,
                )
            resumed = backfill(rt.state, client, "demo-clinic", chunk_size=20)
        finally:
            module.PAGE_SIZE = original
        assert resumed.skipped_before_checkpoint >= 15  # the marked page is not marked again
        pending = {p.patient_id for p in rt.state.list_pending("demo-clinic", limit=1000)}
        assert len(pending) == PATIENTS  # and nobody is missing
    finally:
        rt.close()


def test_resync_decides_unchanged_patients_again(tmp_path, sandbox):
    rt = runtime_for(tmp_path, sandbox)
    ids = list(sandbox[0].org.patient_ids())[:4]
    try:
        backfill(rt.state, rt.healthie("demo-clinic"), "demo-clinic", patients=ids)
        assert run_once(rt) == (4, 4)
        backfill(rt.state, rt.healthie("demo-clinic"), "demo-clinic", patients=ids)
        assert run_once(rt) == (4, 0)
        force_resync(rt.state, "demo-clinic")
        backfill(rt.state, rt.healthie("demo-clinic"), "demo-clinic", patients=ids[:2])
        assert run_once(rt) == (2, 2)
    finally:
        rt.close()


def test_refresh_after_decides_unchanged_patients_again_once_per_period(tmp_path, sandbox):
    from datetime import UTC, datetime, timedelta

    from workers.flusher import REFRESH_WATERMARK

    rt = runtime_for(tmp_path, sandbox)
    integration = rt.integrations["demo-clinic"]
    agent = integration.agent.model_copy(update={"refresh_after": "1d"})
    rt.integrations["demo-clinic"] = integration.model_copy(update={"agent": agent})
    try:
        backfill(rt.state, rt.healthie("demo-clinic"), "demo-clinic")
        assert run_once(rt) == (PATIENTS, PATIENTS)
        assert run_once(rt) == (0, 0)  # within the period: nothing is marked or decided
        # a day and more later (the decisions and the last refresh are two days old)
        old = datetime.now(UTC) - timedelta(days=2)
        for patient_id in sandbox[0].org.patient_ids():
            state = rt.state.get_patient("demo-clinic", patient_id)
            assert state is not None
            rt.state.put_patient(state.model_copy(update={"updated_at": old}))
        rt.state.set_watermark("demo-clinic", REFRESH_WATERMARK, old)
        assert run_once(rt) == (PATIENTS, PATIENTS)  # every unchanged entry decided again
        assert run_once(rt) == (0, 0)
    finally:
        rt.close()
