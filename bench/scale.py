"""Scale: 10,000 and 100,000 patients backfilled and processed end to end, side by side in one
run (``python -m bench.scale [--quick]``; ``QUICK=1`` too).

::

    python -m sandbox --patients N --warm --rate-limit 250     its own process, per size
    stage process:  backfill (listing every patient, 100 a page) ▸ flush ▸ N work items
    worker processes (bench.e2e's): the demo's compiled plan into SQLite until the queue is empty

Each stage runs in a fresh process so its peak RSS is its own (target < 300 MB each, whatever
the size). **The ideal** is the rate-limit time of the requests the run needs: listing pages
of 100 and entries batches of 20 at Healthie's 250 requests/s per key. The figure that must be
flat is the per-entry cost, the worker processes' CPU seconds per entry at 100k over the same
at 10k (within 20 %: 0.8-1.2); the wall-time ratio is reported beside it, but on a shared
machine it moves with whatever else runs during either size.

Prints a table, then one JSON line.
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
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bench.e2e import (
    ENTRIES_PER_REQUEST,
    INTEGRATION,
    REPO,
    Setup,
    build_runtime,
    counts,
    run_workers,
    sandbox_process,
)

RATE = 250.0  # Healthie requests per second per API key
PAGE = 100  # patients a listing page


def stage(setup: Setup) -> None:
    """Backfill every patient by listing, then flush: prints seconds, requests and peak RSS
    (runs in its own process)."""
    from app.core.models import Cadence
    from workers.backfill import backfill, rules_marker
    from workers.flusher import flush
    from workers.rules import decision_rules

    rt = build_runtime(setup)
    try:
        started = time.perf_counter()
        progress = backfill(rt.state, rt.healthie(INTEGRATION), INTEGRATION)
        listed = time.perf_counter() - started
        # as `healthie-sync backfill` does: the current rules need no second backfill
        marker = rules_marker(decision_rules(rt.integration(INTEGRATION)))
        rt.state.set_watermark(INTEGRATION, marker, datetime.now(UTC))
        result = flush(rt, Cadence.DAILY)
        seconds = time.perf_counter() - started
    finally:
        rt.close()
    print(
        json.dumps(
            {
                "listed": progress.listed,
                "pages": progress.pages,
                "work_items": result.work_items,
                "backfill_seconds": round(listed, 2),
                "flush_seconds": round(seconds - listed, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


def measure(patients: int, *, processes: int, threads: int, latency: float) -> dict[str, Any]:
    """One size end to end, each stage in fresh processes."""
    with (
        sandbox_process(patients, latency=latency, rate_limit=RATE) as sb,
        tempfile.TemporaryDirectory(prefix="bench-scale-") as data,
    ):
        setup = Setup(data, sb.url, sb.key, "sqlite", rate_share=RATE, threads=threads)
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        before = sb.stats()
        done = subprocess.run(
            [sys.executable, "-m", "bench.scale", "--child", setup.to_json()],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        staged: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        assert staged["work_items"] == patients, staged
        middle = sb.stats()
        worked = run_workers(
            replace(setup, rate_share=RATE / processes), processes, patients, timeout=3600
        )
        after = sb.stats()
        outcome = counts(setup)
    ideal_listing = staged["pages"] / RATE
    ideal_entries = patients / ENTRIES_PER_REQUEST / RATE
    total = staged["backfill_seconds"] + staged["flush_seconds"] + worked["seconds"]
    return {
        "patients": patients,
        "backfill_seconds": staged["backfill_seconds"],
        "flush_seconds": staged["flush_seconds"],
        "process_seconds": worked["seconds"],
        "total_seconds": round(total, 2),
        "ideal_seconds": round(ideal_listing + ideal_entries, 2),
        "ratio_to_ideal": round((ideal_listing + ideal_entries) / total, 3),
        "entries_per_second": worked["entries_per_second"],
        "us_per_entry": round(worked["seconds"] / patients * 1e6, 1),
        "cpu_us_per_entry": round(worked["cpu_seconds"] / patients * 1e6, 1),
        "peak_rss_mb_stage": staged["peak_rss_mb"],
        "peak_rss_mb_workers": worked["peak_rss_mb_each"],
        "listing_requests": middle["requests"] - before["requests"],
        "entry_requests": after["requests"] - middle["requests"],
        "rate_limited_answers": after["rate_limited"] - before["rate_limited"],
        **outcome,
    }


def main() -> None:
    """See the module docstring."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("QUICK")))
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=4, help="worker threads a process")
    parser.add_argument("--latency", type=float, default=0.0, help="sandbox seconds a request")
    args, _ = parser.parse_known_args()  # bench/__main__ may pass its own options
    if args.child:
        stage(Setup(**json.loads(args.child)))
        return
    sizes = args.sizes or ([2_000, 10_000] if args.quick else [10_000, 100_000])
    began = time.perf_counter()
    rows = [
        measure(n, processes=args.processes, threads=args.threads, latency=args.latency)
        for n in sizes
    ]
    small, large = rows[0], rows[-1]
    print(
        f"scale: {args.processes} worker processes x {args.threads} threads, sandbox "
        f"{args.latency * 1000:.0f} ms a request, {RATE:g} requests/s"
    )
    header = (
        f"{'patients':>9}{'backfill':>9}{'flush':>7}{'process':>8}{'ideal':>7}{'/ideal':>7}"
        f"{'us/entry':>9}{'cpu us':>8}{'stage MB':>9}{'worker MB':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['patients']:>9}{r['backfill_seconds']:>9.1f}{r['flush_seconds']:>7.1f}"
            f"{r['process_seconds']:>8.1f}{r['ideal_seconds']:>7.1f}{r['ratio_to_ideal']:>7.2f}"
            f"{r['us_per_entry']:>9.0f}{r['cpu_us_per_entry']:>8.0f}"
            f"{r['peak_rss_mb_stage']:>9.0f}{max(r['peak_rss_mb_workers']):>10.0f}"
        )
    print(f"total {time.perf_counter() - began:.0f} s")
    peak = max(max(r["peak_rss_mb_stage"], *r["peak_rss_mb_workers"]) for r in rows)
    print(
        json.dumps(
            {
                "bench": "scale",
                "sizes": sizes,
                # the cost is the workers' CPU per entry: wall time on a shared machine
                # moves with every other process (reported beside it)
                "per_entry_cost_ratio_100k_10k": round(
                    large["cpu_us_per_entry"] / small["cpu_us_per_entry"], 3
                ),
                "wall_per_entry_ratio_100k_10k": round(
                    large["us_per_entry"] / small["us_per_entry"], 3
                ),
                "peak_rss_mb": peak,
                "ratio_to_ideal": large["ratio_to_ideal"],
                "worker_processes": args.processes,
                "threads_per_process": args.threads,
                "sandbox_latency_ms": int(args.latency * 1000),
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
