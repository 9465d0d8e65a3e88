"""Brevo: what syncing 1,000 patients costs in requests, and how long it takes at Brevo's
published rate limit against the ideal.

``python -m bench.vendor_brevo [--patients 1000] [--per-call 50]``

Each patient is one contact upsert that also adds the contact to a list (8 attributes, the
Healthie id among them). The real connector sends them, in ``execute_batch`` calls the size the
pipeline makes (``--per-call`` patients each), through a local recording transport that
answers as Brevo does (201, 202 for an import), once per ``bulk`` mode. Times are computed from
the counted requests and Brevo's published limit for ``/v3/contacts/{...}``: 10 requests per
second and 36,000 per hour on every plan ("General rate limits",
https://developers.brevo.com/docs/api-limits). The ideal is the fewest requests Brevo's API
allows for the same work: one ``/contacts/import`` of every contact into the list (bodies up to
8 MB recommended; 1,000 such contacts are about 0.2 MB). Prints one JSON line.
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
from connectors.brevo import IMPORT_BYTES, BrevoConnector

RPS = 10.0
RPH = 36_000
AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def patient_write(connector: BrevoConnector, n: int) -> Write:
    """A synthetic patient's contact upsert (no real person's data)."""
    pid = str(1_000_000 + n)
    args = {
        "patient_id": pid,
        "email": f"patient{n}@example.com",
        "attributes": {
            "FIRSTNAME": f"First{n}",
            "LASTNAME": f"Last{n}",
            "SMS": f"+1555{n:07d}",
            "DOB": "1990-02-28",
            "STATE": "CA",
            "ACTIVE": True,
            "VISITS": n % 17,
        },
        "lists_add": [12],
    }
    return Write(
        Scope("bench", pid, "run-1", AT),
        "upsert_contact",
        connector.validate("upsert_contact", args, pid),
    )


def run(mode: str, patients: int, per_call: int) -> dict[str, Any]:
    """Sync ``patients`` in ``mode``; the counted requests and bytes."""
    sent: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        if request.url.path.endswith("/contacts/import"):
            return httpx2.Response(202, json={"processId": 78})
        return httpx2.Response(201, json={"id": 1})

    connector = BrevoConnector.from_config("crm", {"bulk": mode}, {"api_key": "bench"})
    assert isinstance(connector, BrevoConnector)
    connector.client = httpx2.Client(transport=httpx2.MockTransport(answer))
    writes = [patient_write(connector, n) for n in range(patients)]
    started = time.perf_counter()
    failed = 0
    for start in range(0, patients, per_call):
        results = connector.execute_batch(writes[start : start + per_call])
        failed += sum(r.error is not None for r in results)
    wall = time.perf_counter() - started
    requests = len(sent)
    return {
        "requests": requests,
        "requests_per_1000_patients": round(requests * 1000 / patients, 1),
        "failed": failed,
        "bytes_sent": sum(len(r.content) for r in sent),
        "seconds_at_published_limit": seconds_at_limit(requests),
        "connector_wall_seconds_unpaced": round(wall, 3),
    }


def seconds_at_limit(requests: int) -> float:
    """Seconds ``requests`` take at 10 RPS and 36,000 RPH (whichever binds)."""
    per_second = requests / RPS
    hours_beyond_the_first = max(0, math.ceil(requests / RPH) - 1)
    return round(max(per_second, hours_beyond_the_first * 3600.0), 2)


def main() -> None:
    """Run both modes and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000)
    parser.add_argument("--per-call", type=int, default=50)
    args = parser.parse_args()
    modes = {mode: run(mode, args.patients, args.per_call) for mode in ("contacts", "import")}
    import_bytes = modes["import"]["bytes_sent"]
    ideal_requests = max(1, math.ceil(import_bytes / IMPORT_BYTES))
    ideal = seconds_at_limit(ideal_requests)
    report = {
        "bench": "vendor_brevo",
        "patients": args.patients,
        "patients_per_call": args.per_call,
        "limit": "10 RPS, 36,000 RPH (/v3/contacts, General tier)",
        "source": "https://developers.brevo.com/docs/api-limits",
        **{mode: figures for mode, figures in modes.items()},
        "ideal": {"requests": ideal_requests, "seconds_at_published_limit": ideal},
        "vs_ideal": {
            mode: round(figures["seconds_at_published_limit"] / ideal, 1)
            for mode, figures in modes.items()
        },
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
