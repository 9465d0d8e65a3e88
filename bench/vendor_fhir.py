"""FHIR (Medplum): what syncing 1,000 patients costs in requests and in Medplum's "FHIR
interaction load" points, and how long it takes at Medplum's published limits against the ideal.

``python -m bench.vendor_fhir [--patients 1000] [--per-call 50] [--bundle-size 50]``

Each synthetic patient is four writes: its Patient, a Coverage, an Appointment and the
Practitioner it sees (one of 20 providers, so most Practitioner writes repeat one already in the
bundle and are sent once). The real connector sends them, in ``execute_batch`` calls the size
the pipeline makes (``--per-call`` patients each), through a local transport that answers as
Medplum does (a token, then one response entry per bundle entry, 201 Created). No schema
validation here (``../shared`` is not needed): the tests do that.

Medplum's published limits (https://www.medplum.com/docs/rate-limits): 6,000 requests per IP per
minute on the free tier; and an interaction load in which a create or update costs 100 points
and a search 20. The load quota per minute is taken as 50,000 points, the figure the page's
example ``RateLimit`` header implies (``"fhirInteractions";r=49894;t=60``): an assumption, marked
as such in the output. A conditional update is counted as one search plus one write (120
points; 100 if Medplum charges only the write). The ideal writes each resource once at 100
points in the fewest requests Medplum takes (bundles up to 5 MB), so it is bound by the same
load quota. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import UTC, datetime
from typing import Any

import httpx2

from connectors.base import Scope, Write
from connectors.fhir import FhirConnector

REQUESTS_PER_MINUTE = 6_000
POINTS_PER_MINUTE = 50_000  # assumed: see the module docstring
WRITE_POINTS, SEARCH_POINTS = 100, 20
BUNDLE_BYTES = 5_000_000
AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def patient_writes(connector: FhirConnector, n: int) -> list[Write]:
    """A synthetic patient's four writes (no real person's data)."""
    pid = str(1_000_000 + n)
    scope = Scope("bench", pid, "run-1", AT)

    def w(operation: str, **args: Any) -> Write:
        parsed = connector.validate(operation, {"patient_id": pid, **args}, pid)
        return Write(scope, operation, parsed)

    provider = str(900 + n % 20)
    return [
        w(
            "upsert_patient",
            first_name=f"First{n}",
            last_name=f"Last{n}",
            birth_date="1990-02-28",
            gender="female" if n % 2 else "male",
            email=f"patient{n}@example.com",
            phone=f"+1555{n:07d}",
            address={"line1": f"{n} Main St", "city": "Springfield", "state": "IL"},
        ),
        w("upsert_practitioner", key=provider, first_name="Pat", last_name=f"Provider{provider}"),
        w(
            "upsert_coverage",
            key=f"pol{pid}",
            payer_name="Acme Health",
            member_id=f"M{n:08d}",
            group_number="G-1",
            relationship="self",
            priority=1,
        ),
        w(
            "upsert_appointment",
            key=f"ap{pid}",
            status="booked",
            start="2026-12-02T09:00:00-05:00",
            end="2026-12-02T09:30:00-05:00",
            appointment_type="Follow-up",
            practitioner_id=provider,
        ),
    ]


def run(patients: int, per_call: int, bundle_size: int) -> dict[str, Any]:
    """Sync ``patients``; the counted requests, entries and bytes."""
    sent: list[httpx2.Request] = []
    entries = 0

    def answer(request: httpx2.Request) -> httpx2.Response:
        nonlocal entries
        sent.append(request)
        if request.url.path == "/oauth2/token":
            return httpx2.Response(200, json={"access_token": "bench", "expires_in": 3600})
        bundle = json.loads(request.content)
        entries += len(bundle["entry"])
        reply = [{"response": {"status": "201 Created"}} for _ in bundle["entry"]]
        return httpx2.Response(
            200, json={"resourceType": "Bundle", "type": "transaction-response", "entry": reply}
        )

    connector = FhirConnector.from_config(
        "ehr",
        {"base_url": "https://fhir.bench.invalid/fhir/R4", "bundle_size": bundle_size},
        {"client_id": "bench", "client_secret": "bench"},
    )
    assert isinstance(connector, FhirConnector)
    connector.client = httpx2.Client(transport=httpx2.MockTransport(answer))
    writes = [patient_writes(connector, n) for n in range(patients)]
    started = time.perf_counter()
    failed = 0
    for start in range(0, patients, per_call):
        batch = [w for ws in writes[start : start + per_call] for w in ws]
        failed += sum(r.error is not None for r in connector.execute_batch(batch))
    wall = time.perf_counter() - started
    fhir_requests = sum(1 for r in sent if r.url.path != "/oauth2/token")
    return {
        "writes": sum(len(ws) for ws in writes),
        "requests": len(sent),
        "token_requests": len(sent) - fhir_requests,
        "requests_per_1000_patients": round(len(sent) * 1000 / patients, 1),
        "resources_sent": entries,
        "failed": failed,
        "bytes_sent": sum(len(r.content) for r in sent),
        "connector_wall_seconds_unpaced": round(wall, 3),
    }


def seconds_at_limit(requests: int, points: int) -> float:
    """Seconds at Medplum's free-tier request limit and the (assumed) load quota, whichever
    binds."""
    return round(max(requests / REQUESTS_PER_MINUTE, points / POINTS_PER_MINUTE) * 60.0, 1)


def main() -> None:
    """Run once and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000)
    parser.add_argument("--per-call", type=int, default=50)
    parser.add_argument("--bundle-size", type=int, default=50)
    args = parser.parse_args()
    got = run(args.patients, args.per_call, args.bundle_size)
    sent = got["resources_sent"]
    points = sent * (WRITE_POINTS + SEARCH_POINTS)
    unique = args.patients * 3 + min(20, args.patients)  # every resource once
    ideal_requests = 1 + max(1, math.ceil(got["bytes_sent"] / BUNDLE_BYTES))
    ideal = seconds_at_limit(ideal_requests, unique * WRITE_POINTS)
    connector_seconds = seconds_at_limit(got["requests"], points)
    print(
        json.dumps(
            {
                "bench": "vendor_fhir",
                "patients": args.patients,
                "patients_per_call": args.per_call,
                "bundle_size": args.bundle_size,
                **got,
                "interaction_points": points,
                "limit": "6,000 requests/min per IP (free tier); load quota assumed 50,000 "
                "points/min (create/update 100, search 20)",
                "source": "https://www.medplum.com/docs/rate-limits",
                "seconds_at_published_limit": connector_seconds,
                "seconds_if_conditional_update_costs_100": seconds_at_limit(
                    got["requests"], sent * WRITE_POINTS
                ),
                "ideal": {
                    "requests": ideal_requests,
                    "resources": unique,
                    "seconds_at_published_limit": ideal,
                },
                "vs_ideal": round(connector_seconds / ideal, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
