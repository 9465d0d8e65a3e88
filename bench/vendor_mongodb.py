"""MongoDB target round trips for 1,000 patients (4 rows each over 2 collections).

``python -m bench.vendor_mongodb`` prints one JSON line.

Each patient has one ``patients`` row and three ``appointments`` rows; the writes go to the
connector's ``execute_batch`` in calls of 50 patients (200 writes), the size the pipeline
makes. Three passes: the first sync (every document new), a resync with nothing changed, and a
resync with one appointment changed per patient. Round trips are counted:

* with ``HEALTHIE_SYNC_TEST_MONGODB_URL`` set: on that server, through pymongo's command
  monitoring (every command the driver started; a fresh database, dropped afterwards);
* otherwise on mongomock, which speaks no wire protocol (command monitoring sees nothing): the
  client calls the connector makes, each one command on a real server (``CountingClient``).

The JSON says which (no wall time: mongomock's speed says nothing of a server's). "ideal" is
one bulk write per collection per call (no read, no index). MongoDB publishes no request rate
limit, except Atlas M0's 100 operations per second ("Atlas M0 (Free Cluster) Limits"): the
seconds at that limit are reported against the ideal's.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.base import Scope, Write
from connectors.mongodb import MongoConnector

PATIENTS, PER_CALL = 1_000, 50
TABLES = {
    "patients": {"first_name": "text", "age": "integer", "dob": "date"},
    "appointments": {"starts_at": "timestamp", "kind": "text", "status": "text"},
}
AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
ATLAS_M0_OPS_PER_SECOND = 100.0
REAL_URL_VARIABLE = "HEALTHIE_SYNC_TEST_MONGODB_URL"


def _calls(connector: MongoConnector, changed: bool) -> list[list[Write]]:
    calls: list[list[Write]] = []
    for start in range(0, PATIENTS, PER_CALL):
        call = []
        for n in range(start, start + PER_CALL):
            pid = str(100_000 + n)
            rows: list[tuple[str, str, dict[str, Any]]] = [
                ("patients", pid, {"first_name": f"P{n}", "age": 20 + n % 60, "dob": "1980-01-02"})
            ]
            for a in range(3):
                status = "moved" if changed and a == 0 else "booked"
                starts = (AT + timedelta(days=a, minutes=n)).isoformat()
                values = {"starts_at": starts, "kind": "follow-up", "status": status}
                rows.append(("appointments", f"{pid}-{a}", values))
            for table, key, values in rows:
                args = connector.validate(
                    "upsert_row",
                    {"table": table, "key": key, "patient_id": pid, "values": values},
                    pid,
                )
                call.append(Write(Scope("bench", pid, "run-1", AT), "upsert_row", args))
        calls.append(call)
    return calls


def _mock() -> tuple[MongoConnector, Any, str]:
    from tests.contracts.targets_mongodb import MOCK_URI, CountingClient

    counting = CountingClient()
    connector = MongoConnector.from_config(
        "bench",
        {"tables": TABLES, "database": "bench"},
        {"uri": MOCK_URI},
        client_factory=counting.factory,
    )
    assert isinstance(connector, MongoConnector)
    counted = "mongomock client calls (no wire protocol there, so no command monitoring)"
    return connector, lambda: counting.names(), counted


def _real(url: str, database: str) -> tuple[MongoConnector, Any, str]:
    import pymongo
    from pymongo import monitoring

    started: list[str] = []

    class Listener(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            started.append(event.command_name)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    def factory(uri: str, **options: Any) -> Any:
        return pymongo.MongoClient(uri, event_listeners=[Listener()], **options)

    connector = MongoConnector.from_config(
        "bench", {"tables": TABLES, "database": database}, {"uri": url}, client_factory=factory
    )
    assert isinstance(connector, MongoConnector)
    return connector, lambda: list(started), "pymongo command monitoring on a real server"


def main() -> None:
    """Run the three passes and print one JSON line."""
    url = os.environ.get(REAL_URL_VARIABLE)
    database = f"hs_bench_{uuid.uuid4().hex[:12]}"
    connector, commands, counted = _real(url, database) if url else _mock()
    passes: dict[str, Any] = {}
    try:
        for name, changed in (
            ("first_sync", False),
            ("resync_unchanged", False),
            ("resync_one_change_per_patient", True),
        ):
            calls = _calls(connector, changed)
            before, requests = len(commands()), connector.requests
            results = [r for call in calls for r in connector.execute_batch(call)]
            assert all(r.error is None for r in results), "a write failed"
            sent = commands()[before:]
            passes[name] = {
                "round_trips": len(sent),
                "by_command": dict(Counter(sent)),
                "connector_requests": connector.requests - requests,
                "changed_rows": sum(r.changed for r in results),
                "seconds_at_atlas_m0_limit": round(len(sent) / ATLAS_M0_OPS_PER_SECOND, 2),
            }
    finally:
        if url:
            connector.client.drop_database(database)
        connector.close()
    ideal = len(TABLES) * PATIENTS // PER_CALL
    print(
        json.dumps(
            {
                "bench": "vendor_mongodb",
                "counted": counted,
                "patients": PATIENTS,
                "rows": PATIENTS * 4,
                "pipeline_calls": PATIENTS // PER_CALL,
                "max_batch": connector.max_batch,
                "per_1000_patients": passes["first_sync"]["round_trips"],
                "ideal_round_trips": ideal,
                "ideal_seconds_at_atlas_m0_limit": round(ideal / ATLAS_M0_OPS_PER_SECOND, 2),
                "published_rate_limit": "none (self-hosted, Atlas dedicated); Atlas M0 100 ops/s",
                **passes,
            }
        )
    )


if __name__ == "__main__":
    main()
