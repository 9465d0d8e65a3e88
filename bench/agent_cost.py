"""Agent cost: model calls per entry, HTTP requests per batch, cached-prefix share, $ per 1,000.

Runs the real ClaudeAgent and the real anthropic SDK against the fake Messages API
(``tests/fake_anthropic.py``) on loopback, with the demo-clinic instructions and a perfect
scripted model (the committed demo plan). Measured, in one run:

* model calls per changed entry (target 1) and per unchanged entry (target 0: the engine's
  content hash skips it before the agent, the rule of ``workers/processor.py``);
* HTTP requests to decide 1,000 changed entries through one Message Batch (target: a handful);
* the share of prompt tokens in the cached prefix (target >= 70 %). Tokens are counted
  *approximately* by the fake, as characters / 4 of the JSON sent; a real tokenizer differs,
  the ratio much less so;
* estimated USD per 1,000 changed entries: direct (no caching), cached, batch + cached, and a
  compiled plan (0: no model at run time). Prices are the assumption in ``PRICES`` below.

    python -m bench.agent_cost [--entries 1000] [--json-only]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

from app.agent.batches import PollPolicy
from app.agent.claude import ClaudeAgent
from app.agent.usage import TokenUsage
from app.core.config import load_integration
from app.core.models import Entry
from app.state.base import PatientState
from connectors.memory import MemoryConnector
from tests.fake_anthropic import DEMO_CONFIG, FakeAnthropic, demo_entry, plan_model, serve

#: ASSUMPTION — USD per million tokens for the default model, taken to be Sonnet-class list
#: prices (input 3, output 15); cache writes 1.25x input (5-minute) or 2x (1-hour), cache
#: reads 0.1x input; Message Batches 50 % of every kind. Check Anthropic's pricing page for the
#: model actually configured before quoting these figures.
PRICES = {
    "input": 3.00,
    "output": 15.00,
    "cache_write_5m": 3.75,
    "cache_write_1h": 6.00,
    "cache_read": 0.30,
    "batch_discount": 0.50,
}


@dataclass
class Measured:
    prefix_tokens: float  # cached prefix per call (tools + system + instructions)
    variable_tokens: float  # uncached input per call (the entry)
    output_tokens: float


def unchanged(previous: PatientState | None, entry: Entry) -> bool:
    """The processor's skip rule: same content hash as the last successful run."""
    return (
        previous is not None
        and previous.content_hash == entry.content_hash
        and (previous.outcome in ("written", "plan_skipped"))
    )


def cost_per_1000(m: Measured) -> dict[str, float]:
    """USD per 1,000 changed entries under each mode (one cache write per 1,000 when cached)."""
    n, p, mtok = 1000, PRICES, 1_000_000
    out = m.output_tokens * p["output"]
    direct = n * ((m.prefix_tokens + m.variable_tokens) * p["input"] + out) / mtok
    cached = (
        m.prefix_tokens * p["cache_write_5m"]
        + (n - 1) * m.prefix_tokens * p["cache_read"]
        + n * (m.variable_tokens * p["input"] + out)
    ) / mtok
    batch = (
        p["batch_discount"]
        * (
            m.prefix_tokens * p["cache_write_1h"]
            + (n - 1) * m.prefix_tokens * p["cache_read"]
            + n * (m.variable_tokens * p["input"] + out)
        )
        / mtok
    )
    return {
        "direct": round(direct, 3),
        "cached": round(cached, 3),
        "batch_cached": round(batch, 3),
        "compiled": 0.0,
    }


def run(entries: int) -> dict[str, Any]:
    integration = load_integration(DEMO_CONFIG)
    targets = {"warehouse": MemoryConnector("warehouse")}
    fake = FakeAnthropic(plan_model(), batch_polls=3)
    started = time.monotonic()
    with serve(fake) as client:
        agent = ClaudeAgent(
            client,
            integration,
            targets,
            sleep=lambda s: None,
            poll=PollPolicy(initial=0.01, factor=2, maximum=0.05),
        )
        # 1. calls per changed / unchanged entry, with the engine's skip rule in front
        states: dict[str, PatientState] = {}
        rounds = [
            [demo_entry(str(1000 + i)) for i in range(20)],  # 20 new patients
            [demo_entry(str(1000 + i)) for i in range(20)],  # the same, unchanged
            [
                demo_entry(str(1000 + i), first_name="Changed")
                if i < 5  # 5 changed
                else demo_entry(str(1000 + i))
                for i in range(20)
            ],
        ]
        changed = unchanged_count = 0
        calls = {"changed": 0, "unchanged": 0}
        usages: list[TokenUsage] = []
        for batch in rounds:
            for entry in batch:
                previous = states.get(entry.patient_id)
                if unchanged(previous, entry):
                    # what the processor does: ack without an agent call
                    unchanged_count += 1
                    continue
                changed += 1
                before_call = fake.counts["messages"]
                decision = agent.decide_with_usage(integration, entry, previous)
                calls["changed"] += fake.counts["messages"] - before_call
                usages.append(decision.usage)
                states[entry.patient_id] = PatientState(
                    integration_id=integration.id,
                    patient_id=entry.patient_id,
                    content_hash=entry.content_hash,
                    entry=entry.data,
                    plan=decision.plan,
                    outcome="written",
                    updated_at=entry.fetched_at,
                )
        calls["unchanged"] = fake.counts["messages"] - calls["changed"]
        warm = usages[-1]

        # 2. one Message Batch of `entries` changed entries
        before = sum(fake.counts.values())
        work = [(demo_entry(str(5000 + i)), None) for i in range(entries)]
        plans = agent.decide_many(integration, work)
        batch_requests = sum(fake.counts.values()) - before
        ok = sum(1 for p in plans if not isinstance(p, Exception))
        batch_usage = agent.usage.totals(integration.id).batch
    elapsed = time.monotonic() - started

    share_warm = warm.cache_read_input_tokens / warm.prompt_tokens
    share_batch = (
        batch_usage.cache_read_input_tokens + batch_usage.cache_creation_input_tokens
    ) / batch_usage.prompt_tokens
    measured = Measured(
        prefix_tokens=warm.cache_read_input_tokens,
        variable_tokens=warm.input_tokens,
        output_tokens=sum(u.output_tokens for u in usages) / len(usages),
    )
    return {
        "model_calls_per_changed_entry": round(calls["changed"] / changed, 3),
        "model_calls_per_unchanged_entry": round(calls["unchanged"] / unchanged_count, 3),
        "changed_entries": changed,
        "unchanged_entries": unchanged_count,
        "batch_entries": entries,
        "batch_entries_decided": ok,
        "batch_http_requests": batch_requests,
        "batch_http_requests_by_endpoint": {
            k: v for k, v in fake.counts.items() if k.startswith("batches")
        },
        "cached_prefix_share_warm_call": round(share_warm, 3),
        "cached_prefix_share_batch": round(share_batch, 3),
        "tokens_per_call_approx": {
            "prefix": measured.prefix_tokens,
            "entry": measured.variable_tokens,
            "output": round(measured.output_tokens, 1),
        },
        "usd_per_1000_changed_entries": cost_per_1000(measured),
        "price_assumption_usd_per_mtok": PRICES,
        "token_counting": "approximate: characters / 4 of the JSON sent (fake API)",
        "seconds": round(elapsed, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.entries)
    if not args.json_only:
        cost = result["usd_per_1000_changed_entries"]
        rows = [
            ("model calls per changed entry", result["model_calls_per_changed_entry"], "= 1"),
            ("model calls per unchanged entry", result["model_calls_per_unchanged_entry"], "= 0"),
            (
                f"HTTP requests for {args.entries} entries (batch)",
                result["batch_http_requests"],
                "a handful",
            ),
            ("cached prefix share, warm call", result["cached_prefix_share_warm_call"], ">= 0.70"),
            ("cached prefix share, whole batch", result["cached_prefix_share_batch"], ">= 0.70"),
            ("USD / 1,000 changed, direct", cost["direct"], "assumed prices"),
            ("USD / 1,000 changed, cached", cost["cached"], "assumed prices"),
            ("USD / 1,000 changed, batch + cached", cost["batch_cached"], "assumed prices"),
            ("USD / 1,000 changed, compiled plan", cost["compiled"], "no model"),
        ]
        width = max(len(r[0]) for r in rows)
        print(f"{'measure'.ljust(width)}  {'value':>10}  target")
        for name, value, target in rows:
            print(f"{name.ljust(width)}  {value!s:>10}  {target}")
        print("tokens counted approximately (chars / 4);", f"run took {result['seconds']} s")
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
