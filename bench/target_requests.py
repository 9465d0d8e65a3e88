"""Target requests for 1,000 patients through the whole engine.

``python -m bench.target_requests``.
A 1,000-patient sandbox on loopback, every patient marked dirty, one flush, then the workers
drain the work exactly as in production: entries fetched in aliased batches, the demo's compiled
plan applied, and each pulled batch's writes sent to the target as one batch per target (the
connector chunks it by its ``max_batch``). Reports, per target that needs no server (SQLite and
the four file formats, in a temp dir), the rows written, the target requests the connectors
sent (``Connector.requests``: one per chunk call) and the wall time; prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2

from app.core.models import Cadence, DirtyMark, SubjectKind
from app.queue.sqlite import SqliteQueue
from app.queue.topology import DIRTY_TOPIC, ensure_topology_for
from app.secrets.stores import MemorySecretStore
from app.service.runtime import Runtime
from app.service.serving import serve_in_thread
from app.state.sqlite import SqliteStateStore
from sandbox.core import Sandbox
from sandbox.demo import DEMO_CONFIG, demo_target
from sandbox.ids import PATIENT_BASE
from sandbox.server import create_app
from workers.consumer import drain
from workers.flusher import flush

PATIENTS = 1_000
TARGETS = ("sqlite", "csv", "jsonl", "parquet", "excel")


def run(target: str, url: str, sandbox: Sandbox, root: Path) -> dict[str, object]:
    from app.core.config import load_integration
    from app.core.settings import Settings

    data = root / target
    data.mkdir()
    warehouse, secrets = demo_target(target, data, None)
    integration = load_integration(DEMO_CONFIG)
    integration = integration.model_copy(
        update={
            "healthie": integration.healthie.model_copy(update={"api_url": f"{url}/graphql"}),
            "targets": [warehouse],
        }
    )
    settings = Settings(data_dir=data)
    queue = SqliteQueue(data / "queue.db")
    ensure_topology_for(queue, settings)
    runtime = Runtime(
        settings=settings,
        integrations={integration.id: integration},
        secrets=MemorySecretStore(
            {
                integration.healthie.api_key_secret: sandbox.api_key,
                integration.healthie.webhook_secrets[0]: sandbox.webhook_secret,
                **secrets,
            }
        ),
        queue=queue,
        state=SqliteStateStore(data / "state.db"),
    )
    try:
        now = datetime.now(UTC)
        queue.publish_many(
            DIRTY_TOPIC,
            [
                (
                    DirtyMark(
                        integration_id=integration.id,
                        subject_kind=SubjectKind.PATIENT,
                        subject_id=str(PATIENT_BASE + i),
                        reason="patient.updated",
                        received_at=now,
                    )
                    .model_dump_json()
                    .encode(),
                    {"integration": integration.id, "cadence": integration.cadence.value},
                )
                for i in range(PATIENTS)
            ],
        )
        started = time.perf_counter()
        flush(runtime, Cadence(integration.cadence.value))
        counts = drain(runtime, batch_size=50)
        seconds = time.perf_counter() - started
        connector = runtime.connectors(integration.id)["warehouse"]
        return {
            "target": target,
            "patients": counts.processed,
            "rows_written": counts.writes,
            "target_requests": connector.requests,
            "dead_lettered": counts.dead_lettered,
            "seconds": round(seconds, 2),
        }
    finally:
        runtime.close()


def main() -> None:
    """Run every server-less target once and print the table and one JSON line."""
    results = []
    with httpx2.Client(timeout=30) as http, tempfile.TemporaryDirectory() as tmp:
        sandbox = Sandbox(patients=PATIENTS, seed=7, http_client=http)
        with serve_in_thread(create_app(sandbox)) as url:
            for target in TARGETS:
                results.append(run(target, url, sandbox, Path(tmp)))
                print(results[-1], file=sys.stderr)
    print(json.dumps({"bench": "target_requests", "patients": PATIENTS, "results": results}))


if __name__ == "__main__":
    main()
