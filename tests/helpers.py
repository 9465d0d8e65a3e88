"""Small builders shared by tests (no fixtures with side effects at import)."""

from __future__ import annotations

from pathlib import Path

from app.core.config import load_integration
from app.core.settings import Settings
from app.queue.base import Queue
from app.queue.sqlite import SqliteQueue
from app.queue.topology import ensure_topology
from app.secrets.stores import MemorySecretStore
from app.service.runtime import Runtime
from app.state.base import StateStore
from app.state.sqlite import SqliteStateStore

REPO = Path(__file__).resolve().parents[1]


def demo_tables() -> dict:
    """The tables and typed columns the demo plan writes to its warehouse."""
    from app.agent.plan import PlanAgent

    plan = PlanAgent.from_file(REPO / "prompts" / "plans" / "demo-clinic.plan.json")
    return plan.declared_tables()["warehouse"]


def demo_runtime(
    tmp_path: Path,
    *,
    api_url: str = "http://healthie.test/graphql",
    api_key: str = "key",
    webhook_secret: str = "whsec_test",
    http_transport=None,
    target: str = "memory",
    queue: Queue | None = None,
    state: StateStore | None = None,
    **settings,
) -> Runtime:
    """A runtime for the demo integration with the given target, on ``queue`` and ``state``
    (a queue whose topology the caller ensured, e.g. ``tests.backends``), or by default on
    fresh in-memory SQLite ones."""
    from app.core.config import TargetConfig

    integration = load_integration(REPO / "config" / "integrations" / "demo-clinic.toml")
    options: dict = {"path": str(tmp_path / "warehouse.db")} if target == "sqlite" else {}
    if target == "memory":
        # Declared as a reviewer would for the Claude backend: what the demo plan writes.
        options["tables"] = demo_tables()
    integration = integration.model_copy(
        update={
            "healthie": integration.healthie.model_copy(update={"api_url": api_url}),
            "targets": [TargetConfig(name="warehouse", connector=target, options=options)],
        }
    )
    if queue is None:
        queue = SqliteQueue(":memory:")
        ensure_topology(queue)
    return Runtime(
        settings=Settings(data_dir=tmp_path, **settings),
        integrations={integration.id: integration},
        secrets=MemorySecretStore(
            {
                integration.healthie.api_key_secret: api_key,
                integration.healthie.webhook_secrets[0]: webhook_secret,
            }
        ),
        queue=queue,
        state=SqliteStateStore(":memory:") if state is None else state,
        http_transport=http_transport,
    )
