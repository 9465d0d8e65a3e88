"""CPU cost of the compiled plan per entry: decide and validate (``python -m bench.plan_cpu``).

Builds sandbox entries in process (the engine's own aliased entries query, executed by the
sandbox's executor, canonicalized as the pipeline does), half of them with a previous state
that lists one more appointment (so ``for_each_removed`` has work), then times, on the demo
compiled plan and the demo warehouse's declarations (a SQLite target with the tables the plan
derives):

* ``decide``: ``app.agent.base.decide_many`` over all entries, as the pipeline calls it (each
  entry as of its own fetch time);
* ``validate``: ``workers.pipeline.validate`` of each plan (``validate_plan`` and the scope).

Each is the best of a few rounds (the machine is shared; the minimum is the least disturbed
figure). ``--profile`` prints the top functions of one round of each under cProfile. Prints a
short table, then one JSON line.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from app.agent.base import decide_many
from app.agent.plan import PlanAgent
from app.core.config import TargetConfig, load_integration
from app.core.models import Entry, WorkItem, WritePlan
from app.healthie.client import _entries_document
from app.healthie.entry import canonicalize, content_hash
from app.state.base import PatientState
from connectors.base import TargetSchema
from connectors.registry import target_schema
from workers.pipeline import Prepared, validate

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "integrations" / "demo-clinic.toml"
BATCH = 20


def sandbox_entries(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` raw patient entries from an in-process sandbox, as Healthie would answer."""
    from graphql import OperationDefinitionNode, parse

    from sandbox.core import Sandbox
    from sandbox.executable import build_executable_schema
    from sandbox.fastpath import compile_query
    from sandbox.ids import PATIENT_BASE

    sandbox = Sandbox(patients=count, seed=seed)
    schema = build_executable_schema()
    document = parse(_entries_document(BATCH).payload["query"])
    op = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    plan = compile_query(schema, document, op)
    out: list[dict[str, Any]] = []
    for start in range(0, count, BATCH):
        ids = {f"id{i}": str(PATIENT_BASE + start + i) for i in range(BATCH)}
        data = plan.execute(schema, sandbox, ids)
        out += [data[f"p{i}"] for i in range(BATCH) if data.get(f"p{i}") is not None]
    return out[:count]


def _previous(entry: Entry) -> PatientState:
    """A previous state listing one appointment more than now (deleted since)."""
    data = dict(entry.data)
    gone = {"id": f"gone-{entry.patient_id}", "date": "2020-01-01T00:00:00Z"}
    data["appointments"] = [*(data.get("appointments") or []), gone]
    return PatientState(
        integration_id=entry.integration_id,
        patient_id=entry.patient_id,
        content_hash="previous",
        entry=data,
        outcome="written",
        updated_at=entry.fetched_at,
    )


def build(count: int) -> tuple[PlanAgent, Any, dict[str, TargetSchema], list[Prepared]]:
    """The demo agent, integration, warehouse declarations and ``count`` prepared entries."""
    integration = load_integration(CONFIG)
    assert integration.agent.plan is not None
    agent = PlanAgent.from_file(integration.agent.plan)
    declared = agent.declared_tables()
    targets = {
        t.name: target_schema(
            TargetConfig(name=t.name, connector=t.connector, options={"path": ":memory:"}),
            {"tables": declared.get(t.name, {})},
        )
        for t in integration.targets
    }
    now = datetime.now(UTC)
    prepared: list[Prepared] = []
    for n, raw in enumerate(sandbox_entries(count)):
        data = canonicalize(raw)
        entry = Entry(
            integration_id=integration.id,
            patient_id=str(raw["id"]),
            data=data,
            content_hash=content_hash(data),
            # each its own fetch time, as the pipeline's prepare stage stamps them
            fetched_at=now + timedelta(microseconds=n),
        )
        item = WorkItem(
            integration_id=integration.id,
            patient_id=entry.patient_id,
            flush_id="bench",
            dirty_since=now,
        )
        prepared.append(Prepared(item, entry, _previous(entry) if n % 2 else None))
    return agent, integration, targets, prepared


def _best(rounds: int, run: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(rounds):
        started = time.process_time()
        result = run()
        best = min(best, time.process_time() - started)
    return best, result


def _profile(label: str, run: Callable[[], Any], top: int) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(run)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print(f"--- {label} (tottime) ---")
    print(out.getvalue())


def main(argv: list[str] | None = None) -> None:
    """Time decide and validate per entry; print a table, then one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--quick", action="store_true", help="500 entries, 3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.entries, args.rounds = 500, 3
    agent, integration, targets, prepared = build(args.entries)
    items = [(p.entry, p.previous) for p in prepared]

    def decide() -> list[WritePlan | Exception]:
        # the pipeline's call: no run time, so each entry is judged as of its fetch time
        return decide_many(agent, integration, items)

    decide_s, plans = _best(args.rounds, decide)
    failed = [p for p in plans if isinstance(p, Exception)]
    if failed:
        raise SystemExit(f"{len(failed)} entries failed to decide: {failed[0]}")
    pairs = list(zip(prepared, plans, strict=True))

    def check() -> int:
        return sum(len(validate(targets, p, plan)) for p, plan in pairs)

    validate_s, writes = _best(args.rounds, check)
    if args.profile:
        _profile("decide", decide, args.top)
        _profile("validate", check, args.top)
    n = len(prepared)
    result = {
        "bench": "plan_cpu",
        "entries": n,
        "writes": writes,
        "writes_per_entry": round(writes / n, 2),
        "decide_us_per_entry": round(decide_s / n * 1e6, 1),
        "validate_us_per_entry": round(validate_s / n * 1e6, 1),
        "decide_validate_entries_per_cpu_second": round(n / (decide_s + validate_s)),
    }
    print(
        f"{n} entries, {writes} writes: decide {result['decide_us_per_entry']} µs/entry, "
        f"validate {result['validate_us_per_entry']} µs/entry (best of {args.rounds}, CPU time)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
