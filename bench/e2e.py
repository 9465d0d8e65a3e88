"""End to end: the sandbox in its own process, worker processes on the embedded queue, against
the rate-limit ideal (``python -m bench.e2e [--quick] [--profile]``).

::

    python -m sandbox --latency 0.3 --rate-limit R --warm     its own process; 300 ms a request
    parent: backfill (the chosen patients) ▸ flush ▸ N work items on data/queue.db
    1 or 4 worker processes (python -m bench.e2e --child ...), each a WorkerLoop on the
      shared queue.db / state.db, the demo's compiled plan, a SQLite file or PostgreSQL
    parent: "go" to every worker at once ▸ poll the work subscription's depth ▸ 0 = done

Every worker process has ``R / processes`` of the key's rate (the integration's
``healthie.rate_limit``: its share of the key), so together they never exceed what the
sandbox allows. **The ideal** is that limit × entries per request (Healthie: ~250 requests/s
× 20 entries under its complexity cap = 5,000 entries/s a key); with the sandbox's limit R
it is ``R × 20``. Requests are counted where they arrive (the sandbox's ``/_sandbox/stats``),
so ``requests_per_entry`` includes every request the engine made. Timing starts when every
worker has imported and built its runtime, and ends when the queue holds no work. Workers
also report their CPU seconds: entries per CPU second is what one process could do if
latency were hidden, the figure that says whether more threads or more processes help.

``--profile`` adds one run of a single in-process drain under cProfile (no latency in the
way of the CPU figures: each stage's share is its share of the cost) and prints the top
functions (``--profile-out FILE`` keeps the raw stats for ``pstats``). PostgreSQL runs when
``tests.servers.postgres`` finds it installed and it starts; otherwise the JSON line's
``notes`` say it was skipped. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
INTEGRATION = "demo-clinic"
ENTRIES_PER_REQUEST = 20  # Healthie's complexity cap allows ~20 entries a request
LATENCY = 0.3  # Healthie answers in about 300 ms
RATE = 100.0  # requests/s the sandbox allows (Healthie: ~250 per key)


# -- the sandbox in its own process ------------------------------------------------------------


@dataclass
class SandboxProcess:
    """A ``python -m sandbox`` child: its URL, API key, and request counters."""

    proc: subprocess.Popen[str]
    url: str
    key: str

    def stats(self) -> dict[str, Any]:
        """The sandbox's request counters (``GET /_sandbox/stats``)."""
        with urllib.request.urlopen(self.url.replace("/graphql", "/_sandbox/stats")) as r:
            stats: dict[str, Any] = json.loads(r.read())
        return stats


@contextlib.contextmanager
def sandbox_process(
    patients: int, *, latency: float = 0.0, rate_limit: float | None = None, warm: bool = True
) -> Iterator[SandboxProcess]:
    """Start ``python -m sandbox`` in its own session; stopped (the whole group) after."""
    from tests.servers import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "sandbox", "--patients", str(patients), "--port", str(port)]
    cmd += ["--latency", str(latency)] + (["--warm"] if warm else [])
    if rate_limit:
        cmd += ["--rate-limit", str(rate_limit)]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        key = ""
        for line in proc.stdout:
            if "API key:" in line:
                key = line.split(":", 1)[1].strip()
            if "webhook signing secret" in line:
                break
        url = f"http://127.0.0.1:{port}/graphql"
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(url.replace("/graphql", "/healthz"), timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        yield SandboxProcess(proc, url, key)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


# -- the engine's parts ------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What a worker process needs to build the same runtime as the parent."""

    data: str
    url: str
    key: str
    target: str  # sqlite | postgres
    dsn: str | None = None  # postgres: a URL with the password (a throwaway local server)
    rate_share: float = RATE
    threads: int = 8
    pull: int = 100  # work items a thread pulls and processes as one batch

    def to_json(self) -> str:
        """This setup as one JSON argument."""
        return json.dumps(self.__dict__)


def build_runtime(setup: Setup) -> Any:
    """The demo integration on the sandbox at ``setup.url``: compiled plan, embedded queue and
    state in ``setup.data``, the SQLite or PostgreSQL target, ``rate_share`` requests/s,
    entries batches of 20, no missed-change sweep (nothing changes during a benchmark)."""
    from app.core.config import load_integration
    from app.core.settings import Settings
    from app.queue.sqlite import SqliteQueue
    from app.queue.topology import ensure_topology_for
    from app.secrets.stores import MemorySecretStore
    from app.service.runtime import Runtime
    from app.state.sqlite import SqliteStateStore
    from sandbox.demo import DEMO_CONFIG, demo_target

    data = Path(setup.data)
    warehouse, secrets = demo_target(setup.target, data, setup.dsn)
    integration = load_integration(DEMO_CONFIG)
    integration = integration.model_copy(
        update={
            "healthie": integration.healthie.model_copy(
                update={
                    "api_url": setup.url,
                    "batch_size": ENTRIES_PER_REQUEST,
                    "rate_limit": setup.rate_share,
                    "sweep": False,
                }
            ),
            "targets": [warehouse],
        }
    )
    settings = Settings(data_dir=data)
    queue = SqliteQueue(data / "queue.db")
    ensure_topology_for(queue, settings)
    store = MemorySecretStore(
        {
            integration.healthie.api_key_secret: setup.key,
            integration.healthie.webhook_secrets[0]: "whsec_bench",
            **secrets,
        }
    )
    return Runtime(
        settings=settings,
        integrations={integration.id: integration},
        secrets=store,
        queue=queue,
        state=SqliteStateStore(data / "state.db"),
    )


def enqueue(setup: Setup, patient_ids: list[str]) -> float:
    """Mark ``patient_ids`` (no listing requests) and flush them into work items; seconds."""
    from app.core.models import Cadence
    from workers.backfill import backfill, rules_marker
    from workers.flusher import flush
    from workers.rules import decision_rules

    rt = build_runtime(setup)
    try:
        started = time.perf_counter()
        backfill(rt.state, rt.healthie(INTEGRATION), INTEGRATION, patients=patient_ids)
        # as `healthie-sync backfill` does after a full one: no rules backfill at the flush
        marker = rules_marker(decision_rules(rt.integration(INTEGRATION)))
        rt.state.set_watermark(INTEGRATION, marker, datetime.now(UTC))
        result = flush(rt, Cadence.DAILY)
        assert result.work_items == len(patient_ids), result
        return time.perf_counter() - started
    finally:
        rt.close()


def counts(setup: Setup) -> dict[str, int]:
    """The run's outcome counts, as the workers recorded them."""
    rt = build_runtime(setup)
    try:
        runs = rt.state.list_runs(INTEGRATION, limit=1)
        c = runs[0].counts if runs else None
        return {
            "processed": c.processed if c else 0,
            "unchanged": c.skipped_unchanged if c else 0,
            "dead_lettered": c.dead_lettered if c else 0,
        }
    finally:
        rt.close()


# -- a worker process ----------------------------------------------------------------------------


def worker(setup: Setup) -> None:
    """One worker process: build the runtime, say ``ready``, run the WorkerLoop from ``go``
    until ``stop`` (both on stdin), then print its figures as JSON."""
    from workers.loop import WorkerLoop

    rt = build_runtime(setup)
    clients = rt.clients(INTEGRATION)
    _ = clients.connectors, clients.agent  # built now, not inside the measured time
    print("ready", flush=True)
    sys.stdin.readline()
    cpu0 = _cpu()
    loop = WorkerLoop(rt, concurrency=setup.threads, batch_size=setup.pull, idle_wait=0.05)
    loop.start()
    sys.stdin.readline()
    loop.stop(grace=30)
    healthie = clients.healthie
    figures = {
        "cpu_seconds": round(_cpu() - cpu0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "requests_sent": healthie.requests_sent,
        "rate_limited": healthie.rate_limited,
    }
    rt.close()
    print(json.dumps(figures), flush=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_workers(setup: Setup, processes: int, entries: int, timeout: float = 900) -> dict[str, Any]:
    """Start ``processes`` workers, release them together, wait for an empty queue."""
    from app.queue.sqlite import SqliteQueue
    from app.queue.topology import WORK_SUBSCRIPTION

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if setup.dsn:
        env["HS_BENCH_DSN"] = setup.dsn
    public = Setup(**{**setup.__dict__, "dsn": None})  # the password stays out of argv
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.e2e", "--child", public.to_json()],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    queue = SqliteQueue(Path(setup.data) / "queue.db")
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a worker process did not start")
        started = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        while queue.depth(WORK_SUBSCRIPTION) > 0:
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"work not done after {timeout:.0f} s")
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a worker process died")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        reports = []
        for p in procs:
            out, _ = p.communicate("stop\n", timeout=120)
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        queue.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    cpu = sum(r["cpu_seconds"] for r in reports)
    return {
        "processes": processes,
        "entries": entries,
        "seconds": round(seconds, 2),
        "entries_per_second": round(entries / seconds, 1),
        "entries_per_cpu_second": round(entries / cpu, 1) if cpu else None,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in reports),
        "peak_rss_mb_each": [r["peak_rss_mb"] for r in reports],
        "cpu_seconds": round(cpu, 2),
        "rate_limited": sum(r["rate_limited"] for r in reports),
    }


# -- scenarios -----------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres() -> Iterator[Any]:
    """A throwaway PostgreSQL server, or None when it is not installed or cannot start."""
    from tests.servers.postgres import postgres_bin, running_postgres

    bin_dir = postgres_bin()
    if bin_dir is None:
        yield None
        return
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_postgres(bin_dir))
        except (OSError, subprocess.SubprocessError):
            server = None  # the benchmark says so in its notes and runs SQLite only
        yield server


def scenario(
    sb: SandboxProcess,
    target: str,
    processes: int,
    patient_ids: list[str],
    *,
    rate: float,
    threads: int,
    server: Any = None,
) -> dict[str, Any]:
    """One measured run: fresh queue, state and target; every entry new (decided, written)."""
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as data:
        dsn = None
        if server is not None:
            db = server.create_database()
            dsn = server.dsn(db).replace("@", f":{server.password}@", 1)
        setup = Setup(
            data, sb.url, sb.key, target, dsn, rate_share=rate / processes, threads=threads
        )
        enqueue(setup, patient_ids)
        before = sb.stats()
        row = run_workers(setup, processes, len(patient_ids))
        after = sb.stats()
        row["target"] = target
        row["requests"] = after["requests"] - before["requests"]
        row["sandbox_rate_limited"] = after["rate_limited"] - before["rate_limited"]
        row["requests_per_entry"] = round(row["requests"] / len(patient_ids), 4)
        row.update(counts(setup))
        if server is not None:
            server.drop_database(db)
        return row


def profile(
    sb: SandboxProcess, patient_ids: list[str], top: int = 25, dump: str | None = None
) -> list[str]:
    """One single-threaded drain in this process under cProfile; the top functions by their
    own time, printed (and the raw stats written to ``dump``), the first few returned for the
    JSON line."""
    from workers.consumer import drain

    with tempfile.TemporaryDirectory(prefix="bench-e2e-prof-") as data:
        setup = Setup(data, sb.url, sb.key, "sqlite")
        enqueue(setup, patient_ids)
        rt = build_runtime(setup)
        _ = rt.clients(INTEGRATION).connectors
        prof = cProfile.Profile()
        started = time.perf_counter()
        prof.enable()
        total = drain(rt, batch_size=100)
        prof.disable()
        seconds = time.perf_counter() - started
        rt.close()
    if dump:
        prof.dump_stats(dump)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("tottime")
    stats.print_stats(top)
    print(out.getvalue(), file=sys.stderr)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(top)
    print(out.getvalue(), file=sys.stderr)
    print(
        f"profiled drain: {total.processed} entries in {seconds:.1f} s "
        f"({total.processed / seconds:.0f}/s, profiler on)",
        file=sys.stderr,
    )
    rows = []
    for (file, _line, name), (_cc, _nc, tottime, _cum, _) in sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda kv: -kv[1][2],
    )[:8]:
        rows.append(f"{Path(file).name}:{name} {tottime:.2f}s")
    return rows


def main() -> None:
    """See the module docstring."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--child")
    parser.add_argument("--quick", action="store_true", default=bool(os.environ.get("QUICK")))
    parser.add_argument("--entries", type=int, default=None, help="work items per run")
    parser.add_argument("--patients", type=int, default=20_000, help="sandbox organization")
    parser.add_argument("--rate-limit", type=float, default=RATE, help="sandbox requests/s")
    parser.add_argument("--latency", type=float, default=LATENCY)
    parser.add_argument("--threads", type=int, default=8, help="worker threads a process")
    parser.add_argument("--targets", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-out", help="write the raw cProfile stats here")
    args, _ = parser.parse_known_args()  # bench/__main__ may pass its own options
    if args.child:
        raw = json.loads(args.child)
        raw["dsn"] = os.environ.get("HS_BENCH_DSN")
        worker(Setup(**raw))
        return
    entries = args.entries or (1_000 if args.quick else 6_000)
    patients = min(args.patients, 4_000) if args.quick else args.patients
    from sandbox.ids import PATIENT_BASE

    ids = [str(PATIENT_BASE + i) for i in range(min(entries, patients))]
    ideal = args.rate_limit * ENTRIES_PER_REQUEST
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    began = time.perf_counter()
    with (
        sandbox_process(patients, latency=args.latency, rate_limit=args.rate_limit) as sb,
        postgres() if "postgres" in args.targets else contextlib.nullcontext() as server,
    ):
        for target in args.targets:
            if target == "postgres" and server is None:
                notes.append("postgres skipped: PostgreSQL is not installed or did not start")
                continue
            for processes in args.processes:
                rows.append(
                    scenario(
                        sb,
                        target,
                        processes,
                        ids,
                        rate=args.rate_limit,
                        threads=args.threads,
                        server=server if target == "postgres" else None,
                    )
                )
        top: list[str] = []
        if args.profile or args.profile_out:
            with sandbox_process(patients, warm=True) as fast:
                top = profile(fast, ids, dump=args.profile_out)
    _print(rows, ideal, args, time.perf_counter() - began)
    out = _summary(rows, ideal, args, notes)
    if top:
        out["profile_top_tottime"] = top
    print(json.dumps(out))


def _best(rows: list[dict[str, Any]], processes: int) -> float | None:
    rates = [r["entries_per_second"] for r in rows if r["processes"] == processes]
    return max(rates) if rates else None


def _summary(
    rows: list[dict[str, Any]], ideal: float, args: argparse.Namespace, notes: list[str]
) -> dict[str, Any]:
    one, four = _best(rows, 1), _best(rows, 4)
    best = max((r["entries_per_second"] for r in rows), default=0.0)
    requests = sum(r["requests"] for r in rows)
    fetched = sum(r["entries"] for r in rows)
    return {
        "bench": "e2e",
        "entries_per_second_per_process": one,
        "entries_per_second_4_processes": four,
        "ideal_entries_per_second": ideal,
        "ratio_to_ideal": round(best / ideal, 3) if ideal else None,
        "requests_per_entry": round(requests / fetched, 4) if fetched else None,
        "rate_limited_answers": sum(r["sandbox_rate_limited"] for r in rows),
        "sandbox_rate_limit": args.rate_limit,
        "sandbox_latency_ms": int(args.latency * 1000),
        "threads_per_process": args.threads,
        "runs": rows,
        "notes": notes,
    }


def _print(
    rows: list[dict[str, Any]], ideal: float, args: argparse.Namespace, elapsed: float
) -> None:
    print(
        f"end to end: sandbox {args.latency * 1000:.0f} ms a request, {args.rate_limit:g} "
        f"requests/s (ideal {ideal:.0f} entries/s), {args.threads} threads a process"
    )
    header = (
        f"{'target':<9}{'procs':>6}{'entries':>8}{'seconds':>8}{'entries/s':>10}"
        f"{'/ideal':>7}{'/cpu s':>7}{'req/entry':>10}{'429s':>5}{'MB':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['target']:<9}{r['processes']:>6}{r['entries']:>8}{r['seconds']:>8.1f}"
            f"{r['entries_per_second']:>10.1f}{r['entries_per_second'] / ideal:>7.2f}"
            f"{r['entries_per_cpu_second'] or 0:>7.0f}{r['requests_per_entry']:>10.4f}"
            f"{r['sandbox_rate_limited']:>5}{r['peak_rss_mb']:>6.0f}"
        )
    print(f"total {elapsed:.0f} s")


if __name__ == "__main__":
    main()
