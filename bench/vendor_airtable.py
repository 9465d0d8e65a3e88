"""Airtable target: requests per 1,000 patients and the time they take at Airtable's published
rate limit, against the ideal.

``python -m bench.vendor_airtable [--patients 1000]`` prints one JSON line.

Each patient is 4 rows over 2 tables (the patient row and 3 appointments), written the way the
pipeline writes them: one ``execute_batch`` with the writes interleaved per patient. The
connector (pyairtable's request layer, its real token bucket at 5 requests/s) writes to the
local Airtable mock of ``tests.servers.airtable`` (not a vendor-published contract: Airtable
publishes none), which here enforces the limit as Airtable documents it: more than 5 requests
in one second for a base answers 429, and so does every request for 30 s after.

Reported: the requests sent (records requests and metadata requests), the records per upsert
request, the wall time, the ideal time (``requests / 5`` s: every request sent at exactly the
published rate), their ratio, the 429 answers and the most requests the mock saw in any
one-second window.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

from app.resilience.guard import Guard
from app.resilience.ratelimit import TokenBucket
from connectors.airtable import AirtableConnector
from connectors.base import Scope, Write
from tests.servers.airtable import MockAirtable

RATE = 5.0  # airtable.com/developers/web/api/rate-limits: 5 requests per second per base
TABLES = {
    "patients": {"first_name": "text", "last_name": "text", "age": "integer", "active": "boolean"},
    "appointments": {"starts_at": "timestamp", "kind": "text", "confirmed": "boolean"},
}
AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def writes(connector: AirtableConnector, patients: int) -> list[Write]:
    out = []
    for p in range(patients):
        pid = str(5_000_000 + p)
        scope = Scope("clinic-bench", pid, "run-1", AT)
        rows = [("patients", pid, {"first_name": f"F{p}", "last_name": "L", "age": 30})]
        rows += [
            ("appointments", f"{pid}-{i}", {"starts_at": "2026-12-02T10:00:00Z", "kind": "visit"})
            for i in range(3)
        ]
        for table, key, values in rows:
            args = {"table": table, "key": key, "patient_id": pid, "values": values}
            out.append(Write(scope, "upsert_row", connector.validate("upsert_row", args, pid)))
    return out


def busiest_second(times: list[float]) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000)
    cli = parser.parse_args()
    mock = MockAirtable()
    mock.start()
    mock.enforce_rate = True
    base = mock.add_base()
    connector = AirtableConnector.from_config(
        "crm",
        {"base_id": base, "api_url": mock.base_url, "tables": TABLES},
        {"token": mock.token},
        guard=Guard(bucket=TokenBucket(RATE)),
    )
    assert isinstance(connector, AirtableConnector)
    try:
        batch = writes(connector, cli.patients)
        started = time.monotonic()
        results = connector.execute_batch(batch)
        wall = time.monotonic() - started
    finally:
        connector.close()
        mock.stop()
    calls = [c for c in mock.calls if c[2] == base]
    upserts = [c for c in calls if c[1] == "records.update"]
    sent = connector.api_calls
    ideal = sent / RATE
    print(
        json.dumps(
            {
                "bench": "vendor_airtable",
                "patients": cli.patients,
                "rows": len(batch),
                "failed_rows": sum(1 for r in results if r.error is not None),
                "requests": sent,
                "requests_per_1000_patients": round(sent * 1000 / cli.patients, 1),
                "upsert_requests": len(upserts),
                "records_per_upsert_request": round(sum(c[3] for c in upserts) / len(upserts), 2),
                "metadata_requests": sum(1 for c in calls if c[1].startswith("meta.")),
                "rate_limit_rps": RATE,
                "seconds": round(wall, 1),
                "ideal_seconds": round(ideal, 1),
                "ideal_over_actual": round(ideal / wall, 3),
                "achieved_rps": round(sent / wall, 2),
                "http_429": mock.rate_limited,
                "max_requests_in_any_second": busiest_second([c[4] for c in calls]),
            }
        )
    )


if __name__ == "__main__":
    main()
