"""ASGI factories for bench.webhook_throughput: the bare baseline and the real receiver.

Both are served by the same uvicorn settings in their own process; the real one verifies the
signature, drops repeats within ``DEDUPE_SECONDS`` (on, as in production) and publishes to the
queue backend named by BENCH_QUEUE (sqlite, or pubsub against PUBSUB_EMULATOR_HOST).
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Request

SECRET = "whsec_bench-secret"
#: The engine's de-duplication window in the benchmark: on, as by default in production.
DEDUPE_SECONDS = 300


def bare_app() -> FastAPI:
    """A FastAPI endpoint at the same path that reads the body and answers 200."""
    app = FastAPI()

    @app.post("/webhooks/healthie/{integration_id}")
    async def receive(integration_id: str, request: Request) -> dict[str, str]:
        await request.body()
        return {"status": "ok"}

    return app


def full_app() -> FastAPI:
    """The engine's real app for the demo integration with the chosen queue backend."""
    from app.api.app import create_app
    from app.core.config import load_integration
    from app.core.settings import Settings
    from app.queue.base import Queue
    from app.queue.topology import ensure_topology
    from app.secrets.stores import MemorySecretStore
    from app.service.runtime import Runtime
    from app.state.sqlite import SqliteStateStore

    repo = Path(__file__).resolve().parents[1]
    data = Path(os.environ["BENCH_DATA_DIR"])
    data.mkdir(parents=True, exist_ok=True)
    integration = load_integration(repo / "config" / "integrations" / "demo-clinic.toml")
    queue: Queue
    if os.environ.get("BENCH_QUEUE") == "pubsub":
        from app.queue.pubsub import PubSubQueue

        queue = PubSubQueue(project=os.environ.get("BENCH_PUBSUB_PROJECT", "bench-project"))
    else:
        from app.queue.sqlite import SqliteQueue

        queue = SqliteQueue(data / "queue.db")
    ensure_topology(queue)
    runtime = Runtime(
        settings=Settings(data_dir=data, webhook_dedupe_seconds=DEDUPE_SECONDS),
        integrations={integration.id: integration},
        secrets=MemorySecretStore(
            {
                integration.healthie.webhook_secrets[0]: SECRET,
                integration.healthie.api_key_secret: "unused",
            }
        ),
        queue=queue,
        state=SqliteStateStore(data / "state.db"),
    )
    return create_app(runtime)
