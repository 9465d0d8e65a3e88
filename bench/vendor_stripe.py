"""Stripe target: requests per 1,000 patients and the time they take at Stripe's published rate
limits, against the ideal.

``python -m bench.vendor_stripe [--patients 1000] [--unchanged]`` prints one JSON line.

Each patient is new to Stripe and has one Healthie billing item: ``upsert_customer`` (contact
and address fields) and ``add_invoice_item``, written the way the pipeline writes them (one
``execute_batch``, chunks of 10 per operation). The connector (its real pacer, a live-mode key)
writes to the local fake of ``tests.servers.stripe`` (every request validated against Stripe's
2023-08-16 definition), which here also enforces the limits as Stripe publishes them
(https://stripe.com/docs/rate-limits): in live mode 100 reads and 100 writes per second, the
Search API 20 per second (each also a read); a request beyond them answers 429.

Reported: requests by kind, requests per patient, the wall time, the ideal time (every request
kind sent at exactly its published rate, kinds in parallel: the largest of ``searches / 20``,
``reads / 100`` and ``writes / 100`` seconds), their ratio, the ideal in test mode (25 reads and
25 writes per second), the 429 answers and the violations the fake recorded. ``--unchanged``
writes the same entries again from the same process (ids remembered: no search) and reports it
as a second pass.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from connectors.base import Scope, Write
from connectors.stripe import StripeConnector
from connectors.stripe_api import LIVE_RATE, SEARCH_RATE, TEST_RATE
from tests.servers.stripe import Account, FakeStripe, running_fake

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def writes(connector: StripeConnector, patients: int) -> list[Write]:
    """One customer and one billing item per patient, interleaved as a plan emits them."""
    out = []
    for p in range(patients):
        pid = str(7_000_000 + p)
        scope = Scope("clinic-bench", pid, "run-1", AT)
        customer = {
            "patient_id": pid,
            "name": f"Patient {p}",
            "email": f"p{p}@example.com",
            "phone": "+15550100",
            "address": {"line1": f"{p} Main St", "city": "Springfield", "country": "US"},
            "metadata": {"plan": "monthly"},
        }
        bill = {"patient_id": pid, "key": f"bill-{pid}", "amount": 4500, "currency": "usd"}
        out.append(
            Write(scope, "upsert_customer", connector.validate("upsert_customer", customer, pid))
        )
        out.append(
            Write(scope, "add_invoice_item", connector.validate("add_invoice_item", bill, pid))
        )
    return out


def run(connector: StripeConnector, account: Account, batch: list[Write]) -> dict[str, Any]:
    """One pass: the requests by kind, the times and the failures."""
    seen = len(account.log)
    started = time.monotonic()
    results = connector.execute_batch(batch)
    wall = time.monotonic() - started
    kinds: Counter[str] = Counter()
    for method, template, _ in account.log[seen:]:
        kinds[
            "search" if template.endswith("/search") else "read" if method == "GET" else "write"
        ] += 1
    patients = len(batch) // 2
    reads = kinds["read"] + kinds["search"]  # a search counts against the read limit too
    ideal = max(kinds["search"] / SEARCH_RATE, reads / LIVE_RATE, kinds["write"] / LIVE_RATE)
    ideal_test = max(kinds["search"] / SEARCH_RATE, reads / TEST_RATE, kinds["write"] / TEST_RATE)
    return {
        "requests": sum(kinds.values()),
        "searches": kinds["search"],
        "reads": kinds["read"],
        "writes": kinds["write"],
        "requests_per_1000_patients": round(sum(kinds.values()) * 1000 / patients),
        "wall_s": round(wall, 2),
        "ideal_s": round(ideal, 2),
        "wall_over_ideal": round(wall / ideal, 3) if ideal else None,
        "ideal_test_mode_s": round(ideal_test, 2),
        "failed": sum(1 for r in results if r.error is not None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--unchanged", action="store_true", help="also write everything again")
    cli = parser.parse_args()
    with running_fake() as fake:
        api_key = FakeStripe.new_key("live")
        account = fake.account(api_key)
        account.enforce_rate = True
        connector = StripeConnector.from_config(
            "billing", {"api_base": fake.base_url, "invoice_items": True}, {"api_key": api_key}
        )
        assert isinstance(connector, StripeConnector)
        try:
            batch = writes(connector, cli.patients)
            report: dict[str, Any] = {
                "patients": cli.patients,
                "new": run(connector, account, batch),
            }
            if cli.unchanged:
                report["unchanged"] = run(connector, account, batch)
        finally:
            connector.close()
        report["rate_limited_429"] = account.rate_limited
        report["violations"] = len(account.take_violations())
        report["customers"] = len(account.customers)
        report["invoice_items"] = len(account.items)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
