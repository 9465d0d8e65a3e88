"""Candid Health target: requests per 1,000 patients and the time they take at Candid's published
rate limit, against the ideal.

``python -m bench.vendor_candid [--patients 1000] [--resync]`` prints one JSON line.

Each patient is one pre-encounter patient, one coverage (relationship SELF) and one encounter,
written the way the pipeline writes them: one ``execute_batch`` (the base groups by operation:
all patients, then all coverages, then all encounters). The connector (its real token bucket at
100 requests/s: Candid's 1,000 requests per 10 s per IP) writes to the local fake of
``tests.servers.candid``, which validates every request against Candid's OpenAPI file and here
enforces the published limit (over 1,000 requests in any 10 s answers 429). ``--resync`` writes
the same entries a second time (nothing changed: lookups only) and reports that pass.

Reported: the requests sent (token requests included) and per operation, the wall time, the
ideal time (``requests / 100`` s), their ratio, the 429 answers and any contract violations.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from app.resilience.guard import Guard
from app.resilience.ratelimit import TokenBucket
from connectors.base import Scope, Write
from connectors.candid import CandidConnector
from tests.servers.candid import Contract, FakeCandid

RATE = 100.0  # 1,000 requests per 10-second window per IP (see connectors.candid)
AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
SHORT = {"address1": "1 Main St", "city": "Springfield", "state": "IL", "zip_code": "62701"}


def encounter(pid: str) -> dict[str, Any]:
    card = {"member_id": f"W{pid}", "payer_name": "Aetna", "payer_id": "60054"}
    return {
        "patient_authorized_release": True,
        "benefits_assigned_to_provider": True,
        "provider_accepts_assignment": True,
        "billable_status": "BILLABLE",
        "responsible_party": "INSURANCE_PAY",
        "patient": {
            "first_name": "F",
            "last_name": "L",
            "gender": "female",
            "date_of_birth": "1980-01-01",
            "address": SHORT,
        },
        "billing_provider": {
            "organization_name": "Clinic",
            "address": {**SHORT, "zip_plus_four_code": "1234"},
            "tax_id": "123456789",
            "npi": "1234567893",
        },
        "rendering_provider": {"first_name": "D", "last_name": "R", "npi": "1234567893"},
        "diagnoses": [{"code_type": "ABK", "code": "F41.1"}],
        "place_of_service_code": "02",
        "service_lines": [
            {"procedure_code": "90834", "quantity": "1", "units": "UN", "diagnosis_pointers": [0]}
        ],
        "subscriber_primary": {
            "first_name": "F",
            "last_name": "L",
            "gender": "female",
            "patient_relationship_to_subscriber_code": "18",
            "insurance_card": card,
        },
    }


def writes(c: CandidConnector, patients: int) -> list[Write]:
    out = []
    for p in range(patients):
        pid = str(5_000_000 + p)
        scope = Scope("clinic-bench", pid, "run-1", AT)
        address = {
            "line": ["1 Main St"],
            "city": "Springfield",
            "state": "IL",
            "postal_code": "62701",
        }
        ops: list[tuple[str, dict[str, Any]]] = [
            ("upsert_patient", {"patient_id": pid, "first_name": f"F{p}", "last_name": "L",
                                "birth_date": "1980-01-01", "biological_sex": "FEMALE",
                                "address": address}),
            ("upsert_coverage", {"patient_id": pid, "key": f"pol-{pid}", "member_id": f"W{pid}",
                                 "payer_id": "60054", "payer_name": "Aetna"}),
            ("create_encounter", {"patient_id": pid, "key": f"appt-{pid}",
                                  "encounter": encounter(pid)}),
        ]  # fmt: skip
        out += [Write(scope, op, c.validate(op, args, pid)) for op, args in ops]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--resync", action="store_true")
    cli = parser.parse_args()
    fake = FakeCandid(Contract())
    fake.start()
    fake.enforce_rate = True
    built = CandidConnector.from_config(
        "billing",
        {"api_url": fake.url, "encounters": True},
        {"client_id": fake.client_id, "client_secret": fake.client_secret},
        guard=Guard(bucket=TokenBucket(RATE)),
    )
    assert isinstance(built, CandidConnector)
    try:
        batch = writes(built, cli.patients)
        if cli.resync:
            built.execute_batch(batch)
            fake.calls.clear()
        before = built.http_requests
        started = time.monotonic()
        results = built.execute_batch(batch)
        wall = time.monotonic() - started
        sent = built.http_requests - before
    finally:
        built.close()
        fake.stop()
    per = Counter(f"{m} {t}" for m, t, _ in fake.calls)
    ideal = sent / RATE
    print(
        json.dumps(
            {
                "bench": "vendor_candid",
                "pass": "resync" if cli.resync else "first",
                "patients": cli.patients,
                "writes": len(batch),
                "failed_writes": sum(1 for r in results if r.error is not None),
                "changed_writes": sum(1 for r in results if r.changed),
                "requests": sent,
                "requests_per_1000_patients": round(sent * 1000 / cli.patients, 1),
                "requests_by_operation": dict(sorted(per.items())),
                "rate_limit_rps": RATE,
                "seconds": round(wall, 1),
                "ideal_seconds": round(ideal, 1),
                "ideal_over_actual": round(ideal / wall, 3),
                "achieved_rps": round(sent / wall, 2),
                "http_429": fake.rate_limited,
                "contract_violations": len(fake.violations),
            }
        )
    )


if __name__ == "__main__":
    main()
