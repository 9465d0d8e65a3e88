"""Stedi: what 1,000 real-time eligibility checks cost in requests, and how long they take at
Stedi's published limit against the ideal.

``python -m bench.vendor_stedi [--checks 1000] [--per-call 50] [--latency 2.0]
[--concurrency 5] [--throttle-every 100]``

The real connector sends the checks, in ``execute_batch`` calls the size the pipeline makes
(``--per-call``), through a local transport that answers Stedi's own 271 example (from
``../shared/openapi/stedi-healthcare.json`` when present, else a minimal 271). A second run
answers every ``--throttle-every``-th request with 429 and ``Retry-After: 1`` (waits recorded,
not slept) to show what honouring it costs.

Stedi's limit is an account *concurrency* limit on real-time checks, not a request rate
(https://www.stedi.com/docs/healthcare/monthly-refresh-eligibility-checks); the number is per
account and not in the pages found, and a check's duration is the payer's round trip, also
unpublished. Both are therefore parameters (``--concurrency``, ``--latency``: assumptions,
printed with the result). Times are computed: the connector keeps one check in flight per
process (``seconds_connector`` = checks x latency); the ideal for real-time checks is the
account's whole concurrency in use (``seconds_at_concurrency_limit``). The ideal in requests
is Stedi's asynchronous Batch Eligibility API (up to 10,000 checks per submission, changelog
2025-11-03; results polled 200 per page, changelog 2025-04-25), which the connector does not
use (it is not in the published OpenAPI file the tests validate against). Prints one JSON
line.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
from pydantic import SecretStr

from app.resilience.retry import Backoff, RetryPolicy
from connectors.base import Scope, Write
from connectors.stedi import StediConnector

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
SPEC = Path(__file__).resolve().parents[2] / "shared" / "openapi" / "stedi-healthcare.json"
BATCH_SUBMISSION = 10_000
POLL_PAGE = 200
MINIMAL_271 = {
    "benefitsInformation": [{"code": "1", "serviceTypeCodes": ["30"]}],
    "planDateInformation": {"plan": "20260101-20261231"},
}


def answer_271() -> dict[str, Any]:
    """Stedi's example 271 when the published file is at hand, else a minimal one."""
    if not SPEC.is_file():
        return MINIMAL_271
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    op = spec["paths"]["/change/medicalnetwork/eligibility/v3"]["post"]
    examples = op["responses"]["200"]["content"]["application/json"]["examples"]
    value: dict[str, Any] = examples["EligibilityCheck_example1"]["value"]
    return value


def run(checks: int, per_call: int, throttle_every: int | None) -> dict[str, Any]:
    """Send ``checks`` checks; the counted requests, waits and failures."""
    body = json.dumps(answer_271()).encode()
    sent = 0
    slept: list[float] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        nonlocal sent
        sent += 1
        if throttle_every and sent % throttle_every == 0:
            return httpx2.Response(429, headers={"Retry-After": "1"}, json={"message": "slow"})
        return httpx2.Response(200, content=body, headers={"content-type": "application/json"})

    options = StediConnector.parse_options(
        "eligibility", {"provider_npi": "1999999984", "provider_organization_name": "Bench"}
    )
    connector = StediConnector(
        "eligibility",
        options,
        {"api_key": SecretStr("bench")},
        retry=RetryPolicy(max_attempts=5, backoff=Backoff(jitter=0.0), sleep=slept.append),
    )
    connector.client = httpx2.Client(transport=httpx2.MockTransport(handle))
    writes = []
    for n in range(checks):
        pid = str(1_000_000 + n)
        args = {
            "patient_id": pid,
            "key": f"policy-{n}",
            "payer_id": "87726",
            "member_id": f"M{n:08d}",
            "first_name": f"First{n}",
            "last_name": f"Last{n}",
            "date_of_birth": "1990-02-28",
        }
        parsed = connector.validate("check_eligibility", args, pid)
        writes.append(Write(Scope("bench", pid, "run-1", AT), "check_eligibility", parsed))
    started = time.perf_counter()
    failed = 0
    for start in range(0, checks, per_call):
        failed += sum(
            r.error is not None for r in connector.execute_batch(writes[start : start + per_call])
        )
    wall = time.perf_counter() - started
    connector.close()
    return {
        "requests": sent,
        "requests_per_1000_checks": round(sent * 1000 / checks, 1),
        "failed": failed,
        "retry_after_waited_seconds": round(sum(slept), 1),
        "connector_overhead_ms_per_check": round(wall * 1000 / checks, 3),
    }


def main() -> None:
    """Run both and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=1_000)
    parser.add_argument("--per-call", type=int, default=50)
    parser.add_argument("--latency", type=float, default=2.0, help="assumed seconds per check")
    parser.add_argument("--concurrency", type=int, default=5, help="assumed account limit")
    parser.add_argument("--throttle-every", type=int, default=100)
    args = parser.parse_args()
    clean = run(args.checks, args.per_call, None)
    throttled = run(args.checks, args.per_call, args.throttle_every)
    sequential = args.checks * args.latency
    at_limit = math.ceil(args.checks / args.concurrency) * args.latency
    ideal_requests = math.ceil(args.checks / BATCH_SUBMISSION) + math.ceil(args.checks / POLL_PAGE)
    report = {
        "bench": "vendor_stedi",
        "checks": args.checks,
        "checks_per_call": args.per_call,
        "limit": "account concurrency limit on real-time checks (number per account)",
        "source": "https://www.stedi.com/docs/healthcare/monthly-refresh-eligibility-checks",
        "assumed": {"latency_seconds": args.latency, "concurrency": args.concurrency},
        "real_time": clean,
        f"with_429_every_{args.throttle_every}": throttled,
        "seconds_connector": round(sequential, 1),
        "seconds_at_concurrency_limit": round(at_limit, 1),
        "vs_ideal_time": round(sequential / at_limit, 2),
        "ideal": {
            "requests": ideal_requests,
            "how": "Batch Eligibility API: 1 submission (<= 10,000 checks) + polls of 200",
        },
        "vs_ideal_requests": round(clean["requests"] / ideal_requests, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
