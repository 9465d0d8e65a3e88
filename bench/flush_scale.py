"""Flush scale: marks -> work items at 10k and 100k marks (5 marks per distinct patient),
side by side in one run. Each flush runs in a fresh process over a queue filled by another, so
the peak RSS reported is the flush's own. Reports time from flush start to the last work item
published, per-mark cost (flat when the 100k/10k ratio is ~1), and peak memory (target < 300 MB).

    python -m bench.flush_scale [--sizes 10000 100000] [--queue sqlite]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


def _runtime(data: Path):  # type: ignore[no-untyped-def]
    from app.core.settings import Settings
    from app.queue.sqlite import SqliteQueue
    from app.queue.topology import ensure_topology_for
    from app.state.sqlite import SqliteStateStore
    from tests.helpers import demo_runtime

    rt = demo_runtime(data)
    rt.queue.close()
    rt.state.close()
    rt.queue = SqliteQueue(data / "queue.db")
    rt.state = SqliteStateStore(data / "state.db")
    ensure_topology_for(rt.queue, Settings(data_dir=data))
    return rt


def fill(data: Path, marks: int) -> None:
    """Publish ``marks`` dirty marks for marks/5 patients, in publish batches of 1000."""
    from app.core.models import DirtyMark, SubjectKind
    from app.queue.topology import DIRTY_TOPIC

    rt = _runtime(data)
    patients = max(1, marks // 5)
    now = datetime.now(UTC)
    attrs = {"integration": "demo-clinic", "cadence": "daily"}
    batch = []
    for i in range(marks):
        mark = DirtyMark(
            integration_id="demo-clinic",
            subject_kind=SubjectKind.PATIENT,
            subject_id=str(i % patients),
            reason="patient.updated",
            received_at=now,
        )
        batch.append((mark.model_dump_json().encode(), attrs))
        if len(batch) == 1000:
            rt.queue.publish_many(DIRTY_TOPIC, batch)
            batch = []
    if batch:
        rt.queue.publish_many(DIRTY_TOPIC, batch)
    rt.close()


def run_flush(data: Path) -> dict[str, float]:
    """Flush once and report timings and this process's peak RSS."""
    from app.core.models import Cadence
    from workers.flusher import flush

    rt = _runtime(data)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = flush(rt, Cadence.DAILY)
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rt.close()
    return {
        "marks": result.marks,
        "work_items": result.work_items,
        "seconds": elapsed,
        "peak_rss_mb": peak / 1024,
        "rss_before_mb": base_rss / 1024,
    }


def main() -> None:
    """Run each size in its own processes and print a table and JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--child", choices=["fill", "flush"])
    parser.add_argument("--data")
    parser.add_argument("--marks", type=int, default=0)
    args = parser.parse_args()
    if args.child == "fill":
        fill(Path(args.data), args.marks)
        return
    if args.child == "flush":
        print(json.dumps(run_flush(Path(args.data))))
        return
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-flush-") as tmp:
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            cmd = [sys.executable, "-m", "bench.flush_scale", "--data", tmp]
            subprocess.run([*cmd, "--child", "fill", "--marks", str(size)], check=True, env=env)
            out = subprocess.run(
                [*cmd, "--child", "flush"], check=True, env=env, capture_output=True, text=True
            ).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row["us_per_mark"] = row["seconds"] / row["marks"] * 1e6
            rows.append(row)
    print(f"{'marks':>8} {'patients':>9} {'seconds':>8} {'us/mark':>8} {'peak MB':>8}")
    for r in rows:
        print(
            f"{r['marks']:>8} {r['work_items']:>9} {r['seconds']:>8.2f} "
            f"{r['us_per_mark']:>8.1f} {r['peak_rss_mb']:>8.1f}"
        )
    if len(rows) >= 2:
        print(
            f"per-mark cost ratio {rows[-1]['marks']}/{rows[0]['marks']}: "
            f"{rows[-1]['us_per_mark'] / rows[0]['us_per_mark']:.2f} (flat ~ 1.0)"
        )
    print(json.dumps({"bench": "flush_scale", "rows": rows}))


if __name__ == "__main__":
    main()
