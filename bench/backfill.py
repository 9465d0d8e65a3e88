"""Backfill scale: list and mark every patient of a sandbox organization of 10,000 and 100,000
patients, side by side in one run. The sandbox runs in its own process (``python -m sandbox``),
so the figures are the engine's: each backfill runs in a fresh child process over a SQLite
state store, and reports its wall time, its listing requests, the rate-limit ideal for those
requests (Healthie allows about 250 requests per second per key, 100 ids a page) and its peak
RSS (target < 300 MB, flat from 10k to 100k). The sandbox generates patients on first listing,
so each child backfills twice and reports the second pass (the first is ``seconds_cold_sandbox``).
Cursor paging is sequential: one request in flight, so the stand-in's latency bounds the rate.

    python -m bench.backfill [--sizes 10000 100000]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RATE = 250.0  # Healthie requests per second per API key
PAGE = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sandbox(patients: int) -> tuple[subprocess.Popen[str], str, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--patients", str(patients), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    key = ""
    for line in proc.stdout:
        if "API key:" in line:
            key = line.split(":", 1)[1].strip()
        if "webhook signing secret" in line:
            break
    url = f"http://127.0.0.1:{port}/graphql"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url.replace("/graphql", "/healthz"), timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    return proc, url, key


def child(url: str, key: str, data: str) -> None:
    """Run one backfill and print its figures (runs in its own process)."""
    from app.healthie.client import HealthieClient
    from app.state.sqlite import SqliteStateStore
    from workers.backfill import backfill

    state = SqliteStateStore(Path(data) / "state.db")
    client = HealthieClient(url=url, api_key=key, rate_limit=RATE, timeout=60)
    # the sandbox generates patients lazily on first listing: that is the stand-in's cost, so
    # the first pass warms it and the second, the engine's steady cost, is the figure
    started = time.monotonic()
    backfill(state, client, "bench")
    cold = time.monotonic() - started
    started = time.monotonic()
    progress = backfill(state, client, "bench")
    seconds = time.monotonic() - started
    pending = len(state.list_pending("bench", limit=10**7))
    client.close()
    state.close()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "listed": progress.listed,
                "marked": progress.marked,
                "pending": pending,
                "requests": progress.pages,
                "seconds": round(seconds, 2),
                "seconds_cold_sandbox": round(cold, 2),
                "peak_rss_mb": round(peak_mb, 1),
            }
        )
    )


def measure(patients: int) -> dict[str, object]:
    """One backfill of a sandbox of ``patients`` in a fresh process."""
    proc, url, key = _sandbox(patients)
    try:
        with tempfile.TemporaryDirectory() as data:
            done = subprocess.run(
                [sys.executable, "-m", "bench.backfill", "--child", url, key, data],
                capture_output=True,
                text=True,
                check=True,
            )
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)
    figures: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    ideal = patients / PAGE / RATE
    figures["ideal_seconds"] = round(ideal, 2)
    figures["ratio_to_ideal"] = round(ideal / float(str(figures["seconds"])), 3)
    figures["patients_per_second"] = round(patients / float(str(figures["seconds"])), 1)
    return figures


def main() -> None:
    """See the module docstring."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--child", nargs=3, metavar=("URL", "KEY", "DATA"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    results = {str(n): measure(n) for n in args.sizes}
    out: dict[str, object] = {"bench": "backfill", "sizes": results}
    if len(args.sizes) >= 2:
        small, large = (results[str(n)] for n in (min(args.sizes), max(args.sizes)))
        per_small = float(str(small["seconds"])) / min(args.sizes)
        per_large = float(str(large["seconds"])) / max(args.sizes)
        out["per_patient_cost_ratio_large_small"] = round(per_large / per_small, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
