"""customer.io: what syncing 1,000 patients costs in Track API requests, and how long it takes
at customer.io's published rate limit against the ideal.

``python -m bench.vendor_customerio [--patients 1000] [--per-call 50]``

Each patient is one identify (8 attributes) and one event (an appointment booked, with its
data). The real connector sends them, in ``execute_batch`` calls the size the pipeline makes
(``--per-call`` patients each), through a local recording transport that answers as customer.io
does (200), with the batch threshold off (``batch_from = 500``: one ``/v2/entity`` per write)
and at its default (``batch_from = 10``: ``/v2/batch``). Times are computed from the counted
requests and customer.io's published Track API limit, 1,000 requests per second, v1 and v2
("Rate Limits", https://docs.customer.io/integrations/api/track/, and the published
definition's ``info.description``; older pages gave 100, also reported). The ideal is the fewest
requests the API allows for the same work: ``/v2/batch`` requests of at most 500 KB holding
every item. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2

from connectors.base import Scope, Write
from connectors.customerio import BATCH_BYTES, CustomerIoConnector

RPS = 1000.0
OLDER_RPS = 100.0
AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def patient_writes(connector: CustomerIoConnector, n: int) -> list[Write]:
    """A synthetic patient's identify and event (no real person's data)."""
    pid = str(1_000_000 + n)
    scope = Scope("bench", pid, "run-1", AT)
    person = {
        "patient_id": pid,
        "attributes": {
            "email": f"patient{n}@example.com",
            "first_name": f"First{n}",
            "last_name": f"Last{n}",
            "phone": f"+1555{n:07d}",
            "dob": "1990-02-28",
            "state": "CA",
            "active": True,
            "visits": n % 17,
        },
    }
    booked = {
        "patient_id": pid,
        "key": f"appt-{n}",
        "name": "appointment_booked",
        "timestamp": (AT - timedelta(minutes=n)).isoformat(),
        "data": {
            "appointment_id": f"appt-{n}",
            "starts_at": "2026-12-02T10:00:00Z",
            "provider_id": "42",
            "kind": "follow-up",
        },
    }
    return [
        Write(scope, "identify", connector.validate("identify", person, pid)),
        Write(scope, "track_event", connector.validate("track_event", booked, pid)),
    ]


def run(batch_from: int, patients: int, per_call: int) -> dict[str, Any]:
    """Sync ``patients`` with this batch threshold; the counted requests and bytes."""
    sent: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(200, json={})

    connector = CustomerIoConnector.from_config(
        "crm", {"batch_from": batch_from}, {"site_id": "bench", "api_key": "bench"}
    )
    assert isinstance(connector, CustomerIoConnector)
    connector.client = httpx2.Client(transport=httpx2.MockTransport(answer))
    writes = [w for n in range(patients) for w in patient_writes(connector, n)]
    started = time.perf_counter()
    failed = 0
    for start in range(0, len(writes), 2 * per_call):
        results = connector.execute_batch(writes[start : start + 2 * per_call])
        failed += sum(r.error is not None for r in results)
    wall = time.perf_counter() - started
    items = [
        item
        for request in sent
        for item in (json.loads(request.content).get("batch") or [json.loads(request.content)])
    ]
    return {
        "requests": len(sent),
        "requests_per_1000_patients": round(len(sent) * 1000 / patients, 1),
        "failed": failed,
        "items": len(items),
        "item_bytes": sum(len(json.dumps(i).encode()) for i in items),
        "seconds_at_published_limit": round(len(sent) / RPS, 3),
        "seconds_at_older_100_rps": round(len(sent) / OLDER_RPS, 2),
        "connector_wall_seconds_unpaced": round(wall, 3),
    }


def main() -> None:
    """Run both thresholds and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000)
    parser.add_argument("--per-call", type=int, default=50)
    args = parser.parse_args()
    modes = {
        "entity_per_write": run(500, args.patients, args.per_call),
        "batch": run(10, args.patients, args.per_call),
    }
    item_bytes = modes["batch"]["item_bytes"]
    ideal_requests = max(1, math.ceil(item_bytes / (BATCH_BYTES - 64)))
    ideal = ideal_requests / RPS
    report = {
        "bench": "vendor_customerio",
        "patients": args.patients,
        "patients_per_call": args.per_call,
        "limit": "1,000 requests/s (Track API v1 and v2)",
        "source": "https://docs.customer.io/integrations/api/track/",
        **modes,
        "ideal": {"requests": ideal_requests, "seconds_at_published_limit": ideal},
        "vs_ideal": {
            mode: round(figures["requests"] / ideal_requests, 1) for mode, figures in modes.items()
        },
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
