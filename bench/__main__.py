"""``make bench``: run every benchmark under ``bench/``, each in its own process, and write
``bench/results.json`` and ``bench/results.md``.

Every benchmark prints one JSON object last (its figures: ratios and counts measured side by
side in one run, because this machine is shared and noisy). The runner keeps that object under
the benchmark's name, and lifts the figures the project tracks from run to run into
``summary`` with their targets, so two ``results.json`` files compare key by key::

    python -m bench                       # everything (tens of minutes)
    python -m bench --quick               # smaller sizes, for a smoke run
    python -m bench --only ingest,e2e     # some of them

A benchmark that crashes or times out is recorded with its exit status and the last lines of
its error output, and the run goes on; the exit status is 1 when any benchmark failed to run.
A missed target is not a failure of the run: the table marks it, and the closing notes of the
issues say what limits it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    """One benchmark module: how to run it in full and quickly, and how long it may take."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    timeout: float = 1800.0


@dataclass(frozen=True)
class Tracked:
    """A figure lifted into the summary: where it is in a benchmark's JSON, and its target."""

    key: str  # "<bench>.<name>", as results.json's summary names it
    path: tuple[str, ...]  # inside that benchmark's JSON object
    target: str  # shown in the table
    met: Callable[[float], bool] | None = None


#: In the order they run: the tracked ones first, then every other benchmark under bench/.
BENCHES: tuple[Bench, ...] = (
    Bench("ingest", "bench.webhook_throughput", quick=("--rounds", "1", "--seconds", "3")),
    Bench("fetch", "bench.healthie_fetch", quick=("--patients", "400")),
    Bench("e2e", "bench.e2e", quick=("--quick",), timeout=3600.0),
    Bench("scale", "bench.scale", quick=("--quick",), timeout=3600.0),
    Bench("agent", "bench.agent_cost", ("--json-only",), ("--json-only", "--entries", "200")),
    Bench("backfill", "bench.backfill", quick=("--sizes", "2000", "10000")),
    Bench("flush_scale", "bench.flush_scale"),
    Bench("sandbox_entries", "bench.sandbox_entries"),
    Bench("plan_cpu", "bench.plan_cpu", quick=("--quick",)),
    Bench("sql_writes", "bench.sql_writes"),
    Bench("file_writes", "bench.file_writes"),
    Bench("target_requests", "bench.target_requests"),
    Bench("vendor_airtable", "bench.vendor_airtable"),
    Bench("vendor_brevo", "bench.vendor_brevo"),
    Bench("vendor_candid", "bench.vendor_candid"),
    Bench("vendor_customerio", "bench.vendor_customerio"),
    Bench("vendor_fhir", "bench.vendor_fhir"),
    Bench("vendor_hubspot", "bench.vendor_hubspot"),
    Bench("vendor_mongodb", "bench.vendor_mongodb"),
    Bench("vendor_sheets", "bench.vendor_sheets"),
    Bench("vendor_stedi", "bench.vendor_stedi"),
    Bench("vendor_stripe", "bench.vendor_stripe"),
)

#: Modules under bench/ that are parts of benchmarks, not benchmarks.
PARTS = frozenset({"__init__", "__main__", "webhook_apps"})

TRACKED: tuple[Tracked, ...] = (
    Tracked("ingest.ratio", ("ratio",), ">= 0.8", lambda v: v >= 0.8),
    Tracked("ingest.ratio_pubsub", ("ratio_pubsub",), ">= 0.8", lambda v: v >= 0.8),
    Tracked("fetch.ratio_to_ideal", ("ratio_to_ideal",), "<= 1.25 (time / ideal)"),
    Tracked("fetch.requests_per_entry", ("requests_per_entry",), "<= 0.06", lambda v: v <= 0.06),
    Tracked(
        "e2e.entries_per_second_per_process",
        ("entries_per_second_per_process",),
        ">= 1000",
        lambda v: v >= 1000,
    ),
    Tracked("e2e.ratio_to_ideal", ("ratio_to_ideal",), ">= 0.8", lambda v: v >= 0.8),
    Tracked("e2e.requests_per_entry", ("requests_per_entry",), "<= 0.06", lambda v: v <= 0.06),
    Tracked(
        "scale.per_entry_cost_ratio_100k_10k",
        ("per_entry_cost_ratio_100k_10k",),
        "<= 1.2",
        lambda v: v <= 1.2,
    ),
    Tracked("scale.peak_rss_mb", ("peak_rss_mb",), "< 300", lambda v: v < 300),
    Tracked(
        "agent.model_calls_per_changed_entry",
        ("model_calls_per_changed_entry",),
        "= 1",
        lambda v: v == 1,
    ),
    Tracked(
        "agent.model_calls_per_unchanged_entry",
        ("model_calls_per_unchanged_entry",),
        "= 0",
        lambda v: v == 0,
    ),
    Tracked(
        "agent.cached_prefix_share_batch",
        ("cached_prefix_share_batch",),
        ">= 0.70",
        lambda v: v >= 0.7,
    ),
    Tracked("agent.usd_per_1000_direct", ("usd_per_1000_changed_entries", "direct"), "reported"),
    Tracked("agent.usd_per_1000_cached", ("usd_per_1000_changed_entries", "cached"), "reported"),
    Tracked(
        "agent.usd_per_1000_batch_cached",
        ("usd_per_1000_changed_entries", "batch_cached"),
        "reported",
    ),
    Tracked(
        "agent.usd_per_1000_compiled", ("usd_per_1000_changed_entries", "compiled"), "reported"
    ),
)


@dataclass
class Outcome:
    """What one benchmark's process gave."""

    name: str
    seconds: float
    figures: dict[str, Any] | None = None
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)


def last_json(text: str) -> dict[str, Any] | None:
    """The last JSON object a benchmark printed: one line, or an indented block that starts
    at a line beginning with ``{`` and runs to the end of the output."""
    lines = text.rstrip().splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if not lines[start].startswith("{"):
            continue
        try:
            found = json.loads("\n".join(lines[start:]))
        except json.JSONDecodeError:
            try:
                found = json.loads(lines[start])
            except json.JSONDecodeError:
                continue
        if isinstance(found, dict):
            return found
    return None


def run_one(bench: Bench, *, quick: bool) -> Outcome:
    """Run ``bench`` in a child interpreter (its own memory, its own failures)."""
    command = [sys.executable, "-m", bench.module, *(bench.quick if quick else bench.args)]
    began = time.monotonic()
    try:
        done = subprocess.run(  # noqa: S603 - our own modules, fixed arguments
            command,
            capture_output=True,
            text=True,
            timeout=bench.timeout,
            cwd=HERE.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raw = exc.stderr or b""
        err = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return Outcome(
            bench.name,
            time.monotonic() - began,
            error=f"timed out after {bench.timeout:.0f} s",
            log_tail=err.splitlines()[-5:],
        )
    seconds = time.monotonic() - began
    figures = last_json(done.stdout)
    tail: list[str] = done.stderr.splitlines()[-8:]
    if figures is None:
        return Outcome(
            bench.name,
            seconds,
            error=f"exit {done.returncode}, printed no JSON object",
            log_tail=tail,
        )
    # a benchmark may exit 1 for a missed target of its own: its figures still count
    error = None if done.returncode in (0, 1) else f"exit {done.returncode}"
    return Outcome(
        bench.name, seconds, figures=figures, error=error, log_tail=tail if error else []
    )


def dig(figures: dict[str, Any] | None, path: Sequence[str]) -> Any:
    """The value at ``path`` in a benchmark's figures (None when it is not there)."""
    value: Any = figures
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def summarize(outcomes: dict[str, Outcome]) -> dict[str, dict[str, Any]]:
    """The tracked figures with their targets: ``{"e2e.ratio_to_ideal": {"value": ...,
    "target": ..., "met": ...}}`` (``met`` is None when the target is only reported)."""
    summary: dict[str, dict[str, Any]] = {}
    for tracked in TRACKED:
        bench = tracked.key.split(".", 1)[0]
        outcome = outcomes.get(bench)
        if outcome is None:
            continue
        value = dig(outcome.figures, tracked.path)
        met = None
        if isinstance(value, int | float) and tracked.met is not None:
            met = bool(tracked.met(float(value)))
        summary[tracked.key] = {"value": value, "target": tracked.target, "met": met}
    return summary


def markdown(outcomes: dict[str, Outcome], summary: dict[str, dict[str, Any]]) -> str:
    """The tables of ``bench/results.md``: tracked figures, then every benchmark's status."""
    lines = ["| figure | value | target | met |", "|---|---|---|---|"]
    for key, row in summary.items():
        met = {True: "yes", False: "**no**", None: ""}[row["met"]]
        value = "not measured" if row["value"] is None else row["value"]
        lines.append(f"| `{key}` | {value} | {row['target']} | {met} |")
    lines += ["", "| benchmark | seconds | status |", "|---|---|---|"]
    for outcome in outcomes.values():
        status = outcome.error or "ok"
        lines.append(f"| {outcome.name} | {outcome.seconds:.0f} | {status} |")
    return "\n".join(lines) + "\n"


def unlisted() -> list[str]:
    """Benchmark modules under bench/ the runner does not know (a new file must be listed)."""
    known = {b.module.rsplit(".", 1)[1] for b in BENCHES} | PARTS
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in known)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, write the results, print the table; 1 when one failed to run."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--only", default="", help="comma-separated names, e.g. ingest,e2e")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - {b.name for b in BENCHES})
    if unknown:
        print(
            f"bench: unknown benchmark(s) {', '.join(unknown)}; known: "
            f"{', '.join(b.name for b in BENCHES)}",
            file=sys.stderr,
        )
        return 2
    missing = unlisted()
    if missing:
        print(
            f"bench: modules not listed in bench/__main__.py: {', '.join(missing)}", file=sys.stderr
        )
        return 2
    chosen = [b for b in BENCHES if not names or b.name in names]
    outcomes: dict[str, Outcome] = {}
    for bench in chosen:
        print(f"bench: {bench.name} ({bench.module}) ...", flush=True)
        outcome = run_one(bench, quick=args.quick)
        outcomes[bench.name] = outcome
        status = outcome.error or "ok"
        print(f"bench: {bench.name} {status} in {outcome.seconds:.0f} s", flush=True)
        for line in outcome.log_tail:
            print(f"  {line}", flush=True)
    summary = summarize(outcomes)
    results = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "summary": summary,
        "benchmarks": {
            name: {"seconds": round(o.seconds, 1), "error": o.error, "figures": o.figures}
            for name, o in outcomes.items()
        },
    }
    args.out.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    table = markdown(outcomes, summary)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    return 1 if any(o.error for o in outcomes.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
