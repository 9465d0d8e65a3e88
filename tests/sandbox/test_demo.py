"""End to end over real HTTP: sandbox -> signed webhooks -> app -> flush -> workers -> SQLite."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from rich.console import Console

from sandbox.demo import run_demo

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
    ]
    assert counts["processed"] > 0
