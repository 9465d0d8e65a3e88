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

* ``pulled-batch``: the engine's shape (``workers.loop``: one worker thread fetches the 100
  patients it pulled, about 5 requests): a client built as the runtime builds it (default
  concurrency), one thread, ``--pulled-batches`` fetches of 100 one after another. Ideal: one
  latency per fetch (its requests all in flight at once); requests sent one at a time cost
  about five. Informational (no target): the sandbox serves queries one at a time, so five
  requests add about five service times (``sandbox-floor``) to the one latency;
* ``coalesced``: 2 and 4 threads of one client each fetching batches of 25 patients (a
  pulled batch split per thread would end in a partial request each time; one thread pulls
  batches of 100, whole requests, ``workers.loop``): Healthie requests per fetched entry
  (target <= 0.06; 20 entries fit one request);
* ``pacing``: the client configured at the sandbox's limit (1 and 5 requests/s) and 4 threads
  as fast as allowed: achieved requests/s over the limit and refusals (target 0); then
  configured at Healthie's 250/s against a 5/s limit: refusals while learning it, and after.

Figures, per scenario: entries per request (what the complexity cap allows, bounded by
``--batch-size``), Healthie requests per fetched entry (target <= 0.1), wall time against the
ideal time ``max(requests / rate, ceil(requests / concurrency) * latency)`` (target <= 1.25x),
rate-limit answers seen (target 0), and the client's own CPU per request (this process; the
sandbox is another). A warm-up batch per scenario is excluded, so the server's
one-off document parse does not count. Prints a table, then one JSON line (the last line:
``bench``, ``ratio_to_ideal``, ``requests_per_entry``, ``pacing`` and the details).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

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
    client_cpu_ms_per_request: float


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
            started, cpu = time.perf_counter(), time.process_time()
            out = client.fetch_entries(ids)
            seconds = time.perf_counter() - started
            cpu = time.process_time() - cpu
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
        client_cpu_ms_per_request=round(1000 * cpu / max(1, requests), 3),
    )


PULLED = 100  # a worker thread's pulled batch (workers.loop's batch_size)


def pulled_batch(*, batches: int, latency: float) -> dict[str, Any]:
    """One thread fetching ``batches`` pulled batches of 100, with the client's defaults."""
    patients = batches * PULLED
    sandbox = Sandbox(patients=patients, seed=SEED)
    ids, api_key = list(sandbox.org.patient_ids()), sandbox.api_key
    sandbox.close()
    faults = FaultConfig(latency_seconds=latency, complexity_budget=MAX_COMPLEXITY)
    with sandbox_process(patients, faults) as url:
        client = HealthieClient(url=url, api_key=api_key)  # as app.service.runtime builds it
        try:
            client.fetch_entries(ids[:1])  # warm-up
            sent = client.requests_sent
            started = time.perf_counter()
            fetched = 0
            for n in range(batches):
                got = client.fetch_entries(ids[n * PULLED : (n + 1) * PULLED])
                fetched += sum(1 for v in got.values() if v is not None)
            seconds = time.perf_counter() - started
            requests = client.requests_sent - sent
        finally:
            client.close()
    ideal = batches * latency
    return {
        "batches": batches,
        "entries": fetched,
        "requests": requests,
        "concurrency": client.concurrency,
        "seconds_per_batch": round(seconds / batches, 3),
        "ratio_to_ideal": round(seconds / ideal, 3) if ideal else 0.0,
        "missing_entries": patients - fetched,
    }


def _threads(count: int, work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def coalesced(*, threads: int, patients: int, latency: float) -> dict[str, Any]:
    """``threads`` threads of one client, each fetching its share in batches of 25."""
    sandbox = Sandbox(patients=patients, seed=SEED)
    ids, api_key = list(sandbox.org.patient_ids()), sandbox.api_key
    sandbox.close()
    faults = FaultConfig(latency_seconds=latency, complexity_budget=MAX_COMPLEXITY)
    with sandbox_process(patients, faults) as url:
        client = HealthieClient(url=url, api_key=api_key, rate_limit=250.0, batch_size=100)
        try:
            client.fetch_entries(ids[:1])  # warm-up
            sent = client.requests_sent
            batches = [ids[i : i + 25] for i in range(0, len(ids), 25)]
            fetched = [0]
            lock = threading.Lock()

            def work(n: int) -> None:
                for batch in batches[n::threads]:
                    got = client.fetch_entries(batch)
                    with lock:
                        fetched[0] += sum(1 for v in got.values() if v is not None)

            _threads(threads, work)
            requests = client.requests_sent - sent
        finally:
            client.close()
    return {
        "threads": threads,
        "entries": fetched[0],
        "requests": requests,
        "requests_per_entry": round(requests / max(1, fetched[0]), 4),
    }


def pacing(*, limit: float, configured: float, requests: int, threads: int = 4) -> dict[str, Any]:
    """One-patient fetches from ``threads`` threads against a sandbox allowing ``limit``/s."""
    sandbox = Sandbox(patients=50, seed=SEED)
    ids, api_key = list(sandbox.org.patient_ids()), sandbox.api_key
    sandbox.close()
    with sandbox_process(50, FaultConfig(rate_limit_per_second=limit)) as url:
        client = HealthieClient(
            url=url,
            api_key=api_key,
            bucket=TokenBucket(configured),
            breaker=CircuitBreaker(threshold=50),
            max_attempts=10,
            fetch_linger=0.0,
        )
        answered: list[tuple[float, int]] = []  # (time, rate-limit answers so far)
        left = [requests]
        lock = threading.Lock()

        def work(n: int) -> None:
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                    pid = ids[left[0] % len(ids)]
                client.fetch_entries([pid])
                with lock:
                    answered.append((time.perf_counter(), client.rate_limited))

        try:
            time.sleep(1.1)  # an empty rate window to start from
            _threads(threads, work)
        finally:
            client.close()
    # steady state: the answers after the last rate-limit answer (all of them when none)
    learned_by = next((i for i, (_, n) in enumerate(answered) if n == client.rate_limited), 0)
    steady = answered[learned_by:]
    seconds = steady[-1][0] - steady[0][0] if len(steady) > 1 else 0.0
    achieved = (len(steady) - 1) / seconds if seconds else 0.0
    return {
        "limit": limit,
        "configured": configured,
        "requests": client.requests_sent,
        "too_many_requests": client.rate_limited,
        "learned_limit": round(client.bucket.limit, 2),
        "steady_requests": len(steady),
        "achieved_rps": round(achieved, 3),
        "achieved_over_limit": round(achieved / limit, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every scenario, print a table, then one JSON line; exit 1 when a target is missed."""
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
    parser.add_argument("--coalesce-patients", type=int, default=500)
    parser.add_argument("--pulled-batches", type=int, default=10)
    parser.add_argument("--pacing-requests", type=int, default=10, help="per second of limit")
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
        "client_cpu_ms_per_request",
    ]
    rows = [[str(getattr(r, c)) for c in columns] for r in [*results, floor]]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    pulled = pulled_batch(batches=ns.pulled_batches, latency=ns.latency)
    print(f"pulled-batch: {pulled}")
    merged = [coalesced(threads=n, patients=ns.coalesce_patients, latency=0.05) for n in (2, 4)]
    for m in merged:
        print(f"coalesced: {m}")
    paced = [
        pacing(limit=limit, configured=limit, requests=int(limit * ns.pacing_requests))
        for limit in (1.0, 5.0)
    ]
    learned = pacing(limit=5.0, configured=ns.rate, requests=5 * ns.pacing_requests)
    for p in [*paced, learned]:
        print(f"pacing: {p}")
    per_entry = max(
        [r.requests_per_entry for r in results] + [m["requests_per_entry"] for m in merged]
    )
    targets = {
        "requests_per_entry<=0.06": per_entry <= 0.06,
        "ratio_to_ideal<=1.25": all(r.ratio_to_ideal <= 1.25 for r in results),
        "too_many_requests==0": all(r.too_many_requests == 0 for r in results)
        and all(p["too_many_requests"] == 0 for p in paced),
        "no_missing_entries": all(r.missing_entries == 0 for r in results)
        and pulled["missing_entries"] == 0,
        "learned_limit<=5": learned["learned_limit"] <= 5.0,
    }
    print(
        json.dumps(
            {
                "bench": "fetch",
                "ratio_to_ideal": max(r.ratio_to_ideal for r in results),
                "requests_per_entry": per_entry,
                "pacing": {
                    "achieved_over_limit_1rps": paced[0]["achieved_over_limit"],
                    "achieved_over_limit_5rps": paced[1]["achieved_over_limit"],
                    "too_many_requests_at_limit": sum(p["too_many_requests"] for p in paced),
                    "too_many_requests_learning_5rps_from_250": learned["too_many_requests"],
                    "learned_limit_5rps": learned["learned_limit"],
                },
                "pulled_batch": pulled,
                "coalesced": merged,
                "results": [asdict(r) for r in results],
                "sandbox_floor": asdict(floor),
                "pacing_runs": [*paced, learned],
                "targets": targets,
            }
        )
    )
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
