"""End to end over real HTTP: sandbox -> signed webhooks -> app -> flush -> workers -> SQLite."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from rich.console import Console

from sandbox.demo import run_demo
from tests.servers.postgres import postgres_server  # noqa: F401 F811 - the fixture
from tests.servers.prism import prism_hubspot_contacts, prism_hubspot_properties  # noqa: F401

pytestmark = pytest.mark.e2e


def test_demo_processes_then_recognizes_everything_unchanged(tmp_path):
    import io

    quiet = Console(file=io.StringIO())
    first = run_demo(patients=80, changes=20, seed=11, data_dir=tmp_path, console=quiet)
    assert first.webhooks_received > first.webhooks_rejected >= 1
    assert first.dirty_patients > 0
    assert first.processed > 0
    assert first.writes > 0
    assert first.dead_lettered == 0
    assert first.processed + first.skipped_unchanged == first.dirty_patients

    with sqlite3.connect(tmp_path / "warehouse.db") as db:
        rows = db.execute("SELECT COUNT(*) FROM patients").fetchone()[0]
    assert 0 < rows <= first.processed

    second = run_demo(patients=80, changes=20, seed=11, data_dir=tmp_path, console=quiet)
    assert second.processed == 0
    assert second.writes == 0
    assert second.skipped_unchanged == second.dirty_patients > 0

    third = run_demo(patients=80, changes=25, seed=11, data_dir=tmp_path, console=quiet)
    assert third.processed > 0  # the sandbox changed in between: more changes than before


def test_cli_prints_one_json_counts_line(tmp_path):
    env = {"HEALTHIE_SYNC_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "app", "demo", "--patients", "40", "--changes", "8"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=True,
    )
    last = done.stdout.strip().splitlines()[-1]
    counts = json.loads(last)
    assert list(counts) == [
        "webhooks_received",
        "webhooks_rejected",
        "dirty_patients",
        "processed",
        "skipped_unchanged",
        "writes",
        "dead_lettered",
        "retried",
        "not_found",
        "waiting",
    ]
    assert counts["processed"] > 0


def _file_rows(root) -> int:
    """Data rows in every file under ``root`` (header lines and sheet headers excluded)."""
    import pyarrow.parquet as pq
    from openpyxl import load_workbook

    total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            total += pq.read_table(path).num_rows
        elif path.suffix == ".xlsx":
            book = load_workbook(path, read_only=True)
            try:
                total += max(0, sum(1 for _ in book.worksheets[0].iter_rows()) - 1)
            finally:
                book.close()
        elif path.suffix == ".csv":
            total += max(0, len(path.read_text(encoding="utf-8").splitlines()) - 1)
        elif path.suffix == ".jsonl":
            total += len(path.read_text(encoding="utf-8").splitlines())
    return total


@pytest.mark.parametrize("target", ["csv", "jsonl", "excel", "parquet"])
def test_a_second_demo_run_adds_no_rows_to_a_file_target(tmp_path, target):
    import io

    quiet = Console(file=io.StringIO())
    first = run_demo(
        patients=40, changes=10, seed=3, data_dir=tmp_path, console=quiet, target=target
    )
    assert (first.processed, first.dead_lettered) > (0, -1)
    assert first.dead_lettered == 0
    rows = _file_rows(tmp_path / "warehouse")
    assert rows == first.writes
    second = run_demo(
        patients=40, changes=10, seed=3, data_dir=tmp_path, console=quiet, target=target
    )
    assert second.processed == 0
    assert _file_rows(tmp_path / "warehouse") == rows


def test_a_second_demo_run_adds_no_rows_to_postgres(tmp_path, postgres_server):  # noqa: F811
    import io

    database = postgres_server.create_database()
    dsn = (
        f"postgresql://{postgres_server.user}:{postgres_server.password}@"
        f"{postgres_server.host}:{postgres_server.port}/{database}"
    )
    quiet = Console(file=io.StringIO())
    first = run_demo(
        patients=40,
        changes=10,
        seed=3,
        data_dir=tmp_path,
        console=quiet,
        target="postgres",
        dsn=dsn,
    )
    assert first.processed > 0
    assert first.dead_lettered == 0
    with postgres_server.connect(database) as conn:
        count = conn.execute("SELECT COUNT(*) FROM patients").fetchone()[0]
    second = run_demo(
        patients=40,
        changes=10,
        seed=3,
        data_dir=tmp_path,
        console=quiet,
        target="postgres",
        dsn=dsn,
    )
    assert second.processed == 0
    with postgres_server.connect(database) as conn:
        assert conn.execute("SELECT COUNT(*) FROM patients").fetchone()[0] == count


def test_the_demo_syncs_patients_to_hubspot_contacts(
    tmp_path,
    prism_hubspot_contacts,  # noqa: F811
    prism_hubspot_properties,  # noqa: F811
):
    """``demo --target hubspot --hubspot-url URL``: against the HubSpot router in front of Prism
    (every request validated against HubSpot's contacts and properties definitions), each
    changed patient is one contact upsert in a batch, and a second run sends none."""
    import io

    from app.service.serving import serve_in_thread
    from tests.servers.hubspot import assert_valid_since, marks
    from tests.workers.test_reverse_fixtures import ReadingRouter

    router = ReadingRouter(prism_hubspot_contacts, prism_hubspot_properties)
    quiet = Console(file=io.StringIO())
    with serve_in_thread(router.app()) as url:
        router.url = url
        before = marks(router)
        first = run_demo(
            patients=40,
            changes=10,
            seed=5,
            data_dir=tmp_path,
            console=quiet,
            target="hubspot",
            hubspot_url=url,
        )
        upserts = [s for s in router.sent if s.path.endswith("/contacts/batch/upsert")]
        second = run_demo(
            patients=40,
            changes=10,
            seed=5,
            data_dir=tmp_path,
            console=quiet,
            target="hubspot",
            hubspot_url=url,
        )
        again = [s for s in router.sent if s.path.endswith("/contacts/batch/upsert")]
        assert_valid_since(router, before)
    router._client.close()
    assert first.processed > 0
    assert first.dead_lettered == 0
    assert 1 <= len(upserts) <= first.processed  # batched: one request for many contacts
    assert second.processed == 0
    assert len(again) == len(upserts)  # nothing changed, nothing sent
