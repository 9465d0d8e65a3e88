"""Entries per second fetched from the sandbox over HTTP (``python -m bench.sandbox_entries``).

Starts a 10,000-patient sandbox twice on loopback, once with the compiled fast path and once
executing everything with graphql-core, and sends the engine's own aliased entry batches
(``app.healthie.client._entries_document``) with ``httpx2.Client``: n = 15 and n = 100,
one and several concurrent clients, with and without 300 ms of injected latency. The
machine is small and noisy, so the fast path and graphql-core run interleaved and the table
reports their ratio from the same run. Prints a table, then one JSON line. Bounded: ~40 s.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from dataclasses import asdict, dataclass

import httpx2

from app.healthie.client import _entries_document
from app.service.serving import serve_in_thread
from sandbox.core import Sandbox
from sandbox.faults import FaultConfig
from sandbox.ids import PATIENT_BASE
from sandbox.server import create_app

PATIENTS = 10_000
SECONDS = 2.0


@dataclass
class Result:
    """One scenario's figures."""

    executor: str
    batch: int
    clients: int
    latency_ms: int
    requests: int
    entries_per_second: float
    p50_ms: float
    p95_ms: float


def _client_loop(
    url: str, headers: dict[str, str], batch: int, seed: int, until: float, out: list[float]
) -> None:
    query = _entries_document(batch).payload["query"]
    rng = random.Random(seed)
    with httpx2.Client(base_url=url, headers=headers, timeout=30) as client:
        while time.perf_counter() < until:
            ids = {f"id{i}": str(PATIENT_BASE + rng.randrange(PATIENTS)) for i in range(batch)}
            started = time.perf_counter()
            response = client.post("/graphql", json={"query": query, "variables": ids})
            data = response.json()["data"]
            out.append(time.perf_counter() - started)
            assert len(data) == batch


def scenario(
    executor: str, url: str, headers: dict[str, str], batch: int, clients: int, latency: float
) -> Result:
    """Run ``clients`` threads for :data:`SECONDS` and summarize their requests."""
    samples: list[list[float]] = [[] for _ in range(clients)]
    until = time.perf_counter() + SECONDS + latency
    started = time.perf_counter()
    threads = [
        threading.Thread(target=_client_loop, args=(url, headers, batch, k, until, samples[k]))
        for k in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    times = sorted(t for s in samples for t in s)
    return Result(
        executor,
        batch,
        clients,
        int(latency * 1000),
        len(times),
        round(len(times) * batch / elapsed, 1),
        round(statistics.median(times) * 1000, 1),
        round(times[int(len(times) * 0.95) - 1 if len(times) > 1 else 0] * 1000, 1),
    )


def main() -> None:
    """Run every scenario and print the table and the JSON line."""
    began = time.perf_counter()
    sb = Sandbox(patients=PATIENTS, seed=7)
    for pid in sb.org.patient_ids():  # generate every patient up front: steady state only
        sb.org.patient(pid)
    headers = {
        "Authorization": f"Basic {sb.api_key}",
        "AuthorizationSource": "API",
        "Healthie-GraphQL-API-Version": "2026-01-01",
    }
    results: list[Result] = []
    with (
        serve_in_thread(create_app(sb)) as fast_url,
        serve_in_thread(create_app(sb, fast_path=False)) as core_url,
    ):
        for batch in (15, 100):
            for clients in (1, 4):
                for name, url in (("fast path", fast_url), ("graphql-core", core_url)):
                    results.append(scenario(name, url, headers, batch, clients, 0.0))
        sb.faults.configure(FaultConfig(latency_seconds=0.3))
        try:
            for batch in (15, 100):
                for clients in (1, 8):
                    results.append(scenario("fast path", fast_url, headers, batch, clients, 0.3))
        finally:
            sb.faults.configure(FaultConfig())
    _print(results, time.perf_counter() - began)


def _print(results: list[Result], elapsed: float) -> None:
    print(f"sandbox entries over HTTP: {PATIENTS} patients, {SECONDS:.0f} s per scenario")
    header = (
        f"{'executor':<13} {'batch':>5} {'clients':>7} {'latency':>7} {'requests':>8} "
        f"{'entries/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'vs core':>8}"
    )
    print(header)
    print("-" * len(header))
    core = {
        (r.batch, r.clients): r.entries_per_second for r in results if r.executor == "graphql-core"
    }
    for r in results:
        base = core.get((r.batch, r.clients)) if r.latency_ms == 0 else None
        shown = base and r.executor != "graphql-core"
        ratio = f"{r.entries_per_second / base:.2f}x" if shown else ""
        print(
            f"{r.executor:<13} {r.batch:>5} {r.clients:>7} {r.latency_ms:>5}ms {r.requests:>8} "
            f"{r.entries_per_second:>10.1f} {r.p50_ms:>8.1f} {r.p95_ms:>8.1f} {ratio:>8}"
        )
    print(f"total {elapsed:.1f} s")
    print(json.dumps({"bench": "sandbox_entries", "results": [asdict(r) for r in results]}))


if __name__ == "__main__":
    main()
