"""Benchmark: fetching dirty patients' entries from the sandbox with Healthie-like latency.

    python -m bench.healthie_fetch [--patients 2000] [--latency 0.3] [--concurrency 8]

Scenarios, each against a fresh sandbox served over HTTP from a child process (so client and
server do not share a GIL) with ``--latency`` seconds injected per request, the complexity cap
on (2000), and the sandbox's rate limit equal to the client's:

* ``latency-bound``: Healthie's rate (250/s); time is set by latency and concurrency;
* ``rate-bound``: a low rate (``--low-rate``, 20/s) that twice the concurrency would exceed;
  time is set by the rate, and the pacing must provoke no ``TOO_MANY_REQUESTS``;
* ``sandbox-floor`` (informational, no targets): no latency, so the time is the sandbox's own
  service time. The sandbox executes queries one at a time (about 14-20 ms per 20-entry
  batch), so a concurrency whose latency-bound ideal is below that floor cannot reach it here.

Figures, per scenario: entries per request (what the complexity cap allows, bounded by
``--batch-size``), Healthie requests per fetched entry (target <= 0.1), wall time against the
ideal time ``max(requests / rate, ceil(requests / concurrency) * latency)`` (target <= 1.25x),
and rate-limit answers seen (target 0). A warm-up batch per scenario is excluded, so the server's
one-off document parse does not count. Prints a table, then JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import httpx2

from app.healthie.client import HealthieClient
from app.healthie.complexity import MAX_COMPLEXITY
from app.resilience.breaker import CircuitBreaker
from app.resilience.ratelimit import TokenBucket
from app.service.serving import free_port
from sandbox.core import Sandbox
from sandbox.faults import FaultConfig
from sandbox.server import create_app

SEED = 7


@dataclass
class Figures:
    scenario: str
    patients: int
    rate_limit: float
    latency_s: float
    concurrency: int
    entries_per_request: int
    entry_complexity: int
    requests: int
    requests_per_entry: float
    seconds: float
    ideal_seconds: float
    ratio_to_ideal: float
    too_many_requests: int
    missing_entries: int


def _serve(patients: int, faults: FaultConfig, port: int) -> None:
    """Child process: serve a fresh sandbox until terminated (its own GIL, like Healthie)."""
    import uvicorn

    sandbox = Sandbox(patients=patients, seed=SEED)
    sandbox.faults.configure(faults)
    uvicorn.run(
        create_app(sandbox), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


@contextmanager
def sandbox_process(patients: int, faults: FaultConfig) -> Iterator[str]:
    """A sandbox server in a child process; yields its GraphQL URL once it answers."""
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(patients, faults, port), daemon=True
    )
    process.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).raise_for_status()
                break
            except httpx2.HTTPError:
                if time.monotonic() > deadline or not process.is_alive():
                    raise RuntimeError("sandbox server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/graphql"
    finally:
        process.terminate()
        process.join(timeout=10)


def run(
    scenario: str,
    *,
    patients: int,
    rate: float,
    latency: float,
    concurrency: int,
    batch_size: int,
) -> Figures:
    """Fetch every patient of a fresh sandbox once; returns the measured figures."""
    sandbox = Sandbox(patients=patients, seed=SEED)  # same seed: same ids and key as the child
    ids, api_key = list(sandbox.org.patient_ids()), sandbox.api_key
    sandbox.close()
    faults = FaultConfig(
        latency_seconds=latency, rate_limit_per_second=rate, complexity_budget=MAX_COMPLEXITY
    )
    with sandbox_process(patients, faults) as url:
        client = HealthieClient(
            url=url,
            api_key=api_key,
            rate_limit=rate,
            batch_size=batch_size,
            concurrency=concurrency,
            bucket=TokenBucket(rate),
            breaker=CircuitBreaker(threshold=50),
        )
        try:
            per_request = client.entries_per_request
            client.fetch_entries(ids[:per_request])  # warm-up: server parses the document
            time.sleep(1.1)  # an empty rate window to start from
            sent, limited = client.requests_sent, client.rate_limited
            started = time.perf_counter()
            out = client.fetch_entries(ids)
            seconds = time.perf_counter() - started
            requests = client.requests_sent - sent
            too_many = client.rate_limited - limited
        finally:
            client.close()
    needed = math.ceil(patients / per_request)
    ideal = max(needed / rate, math.ceil(needed / concurrency) * latency)
    return Figures(
        scenario=scenario,
        patients=patients,
        rate_limit=rate,
        latency_s=latency,
        concurrency=concurrency,
        entries_per_request=per_request,
        entry_complexity=client.entry_cost,
        requests=requests,
        requests_per_entry=round(requests / patients, 4),
        seconds=round(seconds, 3),
        ideal_seconds=round(ideal, 3),
        ratio_to_ideal=round(seconds / ideal, 3),
        too_many_requests=too_many,
        missing_entries=sum(1 for i in ids if out.get(i) is None),
    )


def main(argv: list[str] | None = None) -> int:
    """Run both scenarios, print a table and JSON; exit 1 when a target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=250.0, help="Healthie's rate per key")
    parser.add_argument("--low-rate", type=float, default=20.0, help="rate-bound scenario")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=100,
        help="upper bound; the complexity cap decides below it",
    )
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the sandbox's version sunset warning is noise
    common = {
        "patients": ns.patients,
        "latency": ns.latency,
        "concurrency": ns.concurrency,
        "batch_size": ns.batch_size,
    }
    results = [
        run("latency-bound", rate=ns.rate, **common),
        run("rate-bound", rate=ns.low_rate, **{**common, "concurrency": ns.concurrency * 2}),
    ]
    floor = run(
        "sandbox-floor",
        rate=ns.rate,
        **{**common, "latency": 0.0, "concurrency": ns.concurrency * 2},
    )
    columns = [
        "scenario",
        "patients",
        "rate_limit",
        "concurrency",
        "entries_per_request",
        "requests",
        "requests_per_entry",
        "seconds",
        "ideal_seconds",
        "ratio_to_ideal",
        "too_many_requests",
        "missing_entries",
    ]
    rows = [[str(getattr(r, c)) for c in columns] for r in [*results, floor]]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    targets = {
        "requests_per_entry<=0.1": all(r.requests_per_entry <= 0.1 for r in results),
        "ratio_to_ideal<=1.25": all(r.ratio_to_ideal <= 1.25 for r in results),
        "too_many_requests==0": all(r.too_many_requests == 0 for r in results),
        "no_missing_entries": all(r.missing_entries == 0 for r in results),
    }
    print(
        json.dumps(
            {
                "results": [asdict(r) for r in results],
                "sandbox_floor": asdict(floor),
                "targets": targets,
            },
            indent=2,
        )
    )
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
