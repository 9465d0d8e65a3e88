"""Google Sheets: requests per 1,000 patients and the time to sync them at Sheets' published
per-minute quota, against the ideal.

``python -m bench.vendor_sheets`` (needs ``../shared/openapi/google-sheets-v4.discovery.json``).
The real connector (google-api-python-client, the OAuth flow with a generated key) writes
1,000 patients, 4 rows each over 2 tables (a patient row and 3 appointments), to the local
validating fake of ``tests.servers.sheets``, three times: the first sync (tabs created, every
row new), the same rows again (nothing changed) and every patient row changed.

Pacing runs through the connector's own path (the credential's TokenBucket at
``SheetsConnector.rate_limit``, 1 request/s = the per-user quota of 60 write requests per
minute, developers.google.com/workspace/sheets/api/limits) on a virtual clock: a wait the
bucket asks for advances the clock instead of sleeping, so the figure is the time the sync
would take against Sheets, at the quota, plus the fake's real processing time. The ideal is
the same requests at exactly the quota: 1 s per request for one bucket shared by reads and
writes, and ``max(reads, writes)`` seconds if the separate 60/min read and write quotas were
each used to the full. Prints one JSON line (details on stderr).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from app.resilience.guard import Guard
from app.resilience.ratelimit import TokenBucket
from app.service.serving import serve_in_thread
from connectors.base import Scope, Write
from connectors.sheets import SheetsConnector
from tests.servers.discovery import Discovery
from tests.servers.sheets import DISCOVERY, FakeSheets

PATIENTS = 1_000
TABLES = {
    "patients": {"first_name": "text", "last_name": "text", "dob": "date", "age": "integer"},
    "appointments": {"starts_at": "timestamp", "kind": "text", "confirmed": "boolean"},
}
READS = {"sheets.spreadsheets.get", "sheets.spreadsheets.values.batchGet"}


class VirtualClock:
    """Real time plus every wait the bucket asked for (which is not slept)."""

    def __init__(self) -> None:
        self.waited = 0.0

    def now(self) -> float:
        return time.monotonic() + self.waited

    def sleep(self, seconds: float) -> None:
        self.waited += seconds


def writes(connector: SheetsConnector, run: str, age: int) -> list[Write]:
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    out = []
    for p in range(PATIENTS):
        patient = str(1_000_000 + p)
        scope = Scope("demo-clinic", patient, run, at)
        rows: list[tuple[str, str, dict[str, Any]]] = [
            ("patients", patient, {"first_name": f"F{p}", "last_name": "L", "age": age}),
            *[
                (
                    "appointments",
                    f"{patient}-{i}",
                    {"starts_at": "2026-12-02T10:00:00+00:00", "kind": "visit", "confirmed": True},
                )
                for i in range(3)
            ],
        ]
        for table, key, values in rows:
            args = {"table": table, "key": key, "patient_id": patient, "values": values}
            parsed = connector.validate("upsert_row", args, patient)
            out.append(Write(scope, "upsert_row", parsed))
    return out


def sync(
    fake: FakeSheets, connector: SheetsConnector, batch: list[Write], per_call: int
) -> dict[str, Any]:
    """``batch`` written ``per_call`` writes per execute_batch call; what it cost."""
    bucket = connector.guard.bucket
    assert bucket is not None
    clock = bucket._clock.__self__  # type: ignore[attr-defined]
    start_calls, waited, started = len(fake.calls), clock.waited, time.perf_counter()
    results = []
    for start in range(0, len(batch), per_call):
        results += connector.execute_batch(batch[start : start + per_call])
    wall = time.perf_counter() - started
    methods = Counter(c for c in fake.calls[start_calls:] if c != "oauth2.token")
    requests = sum(methods.values())
    reads = sum(n for m, n in methods.items() if m in READS)
    assert [r.error for r in results if r.error] == [], "a write failed"
    paced = wall + clock.waited - waited
    return {
        "requests": requests,
        "reads": reads,
        "writes": requests - reads,
        "by_method": {
            m.removeprefix("sheets.spreadsheets."): n for m, n in sorted(methods.items())
        },
        "rows_changed": sum(r.changed for r in results),
        "seconds_at_quota": round(paced, 1),
        "ideal_seconds_one_bucket": float(requests),
        "ideal_seconds_separate_read_write_quotas": float(max(reads, requests - reads)),
        "fake_wall_seconds": round(wall, 2),
    }


def connect(fake: FakeSheets, stack: ExitStack, account: str) -> SheetsConnector:
    clock = VirtualClock()
    rate = SheetsConnector.rate_limit
    assert rate is not None
    connector = SheetsConnector.from_config(
        "sheet",
        {"spreadsheet_id": fake.add_spreadsheet(), "api_endpoint": fake.base_url, "tables": TABLES},
        {"service_account_json": account},
        guard=Guard(bucket=TokenBucket(rate, clock=clock.now, sleep=clock.sleep)),
    )
    assert isinstance(connector, SheetsConnector)
    stack.callback(connector.close)
    return connector


def main() -> None:
    """Run the syncs and print one JSON line."""
    if not DISCOVERY.is_file():
        raise SystemExit(f"{DISCOVERY} not found (../shared is absent)")
    fake = FakeSheets(Discovery.load(DISCOVERY))
    with ExitStack() as stack:
        fake.base_url = stack.enter_context(serve_in_thread(fake.app))
        account = json.dumps(fake.service_account())
        connector = connect(fake, stack, account)
        everything = PATIENTS * 4
        runs = {}
        for name, run, age in (("first", "run-1", 40), ("unchanged", "run-2", 40)):
            runs[name] = sync(fake, connector, writes(connector, run, age), everything)
            print(name, runs[name], file=sys.stderr)
        changed = writes(connector, "run-3", 41)
        runs["patients_changed"] = sync(fake, connector, changed, everything)
        print("patients_changed", runs["patients_changed"], file=sys.stderr)
        # the worker writes what one pull brought (50 work items by default, workers/loop.py)
        pulled = connect(fake, stack, account)
        runs["first_in_pulls_of_50"] = sync(fake, pulled, writes(pulled, "run-1", 40), 50 * 4)
        print("first_in_pulls_of_50", runs["first_in_pulls_of_50"], file=sys.stderr)
        assert fake.take_violations() == [], "the connector broke the discovery document"
    first = runs["first"]
    print(
        json.dumps(
            {
                "bench": "vendor_sheets",
                "patients": PATIENTS,
                "rows": PATIENTS * 4,
                "tables": len(TABLES),
                "max_batch": SheetsConnector.max_batch,
                "quota": "60 read + 60 write requests/min per user (paced at 1 request/s)",
                "requests_per_1000_patients": first["requests"],
                "seconds_at_quota": first["seconds_at_quota"],
                "ideal_seconds": first["ideal_seconds_one_bucket"],
                "requests_per_1000_patients_in_pulls_of_50": runs["first_in_pulls_of_50"][
                    "requests"
                ],
                "seconds_at_quota_in_pulls_of_50": runs["first_in_pulls_of_50"]["seconds_at_quota"],
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
