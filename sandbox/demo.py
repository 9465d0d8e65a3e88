"""``make demo``: the whole engine on embedded defaults, over real HTTP, with no credentials.

1. start the local Healthie sandbox (GraphQL over HTTP, deterministic synthetic organization);
2. start the engine's FastAPI app and register its webhook URL with the sandbox;
3. change some patients in the sandbox, which sends signed webhooks to the app (plus one forged
   delivery, to show it is refused);
4. flush the integration's cadence: dirty marks -> work items;
5. process the work: fetch entries through the GraphQL client, skip unchanged ones by content
   hash, apply the compiled plan, write to the SQLite warehouse.

State lives in ``.healthie-sync/demo``, so a second run processes nothing unless the sandbox
changed: the sandbox is deterministic, so its changes reproduce the same entries.

The human lines go to standard error through rich; when the process logs Cloud Logging JSON
(``HEALTHIE_SYNC_LOG_FORMAT=json``, or on Cloud Run) each line is an INFO record of the
``sandbox.demo`` logger instead, labelled with the integration and run, and there is no
progress bar, so every line the demo writes is one JSON object.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx2
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text
from sqlalchemy.engine import URL, make_url

import app
from app.api.app import create_app
from app.core import logs
from app.core.config import TargetConfig, load_integration
from app.core.errors import ConfigurationError
from app.core.models import Counts
from app.core.settings import Settings
from app.queue.sqlite import SqliteQueue
from app.queue.topology import ensure_topology_for
from app.secrets.stores import MemorySecretStore
from app.service.runtime import Runtime
from app.service.serving import serve_in_thread
from app.state.sqlite import SqliteStateStore
from workers.consumer import drain
from workers.flusher import flush

if TYPE_CHECKING:
    from sandbox.core import Sandbox

REPO = Path(app.__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "config" / "integrations" / "demo-clinic.toml"
log = logging.getLogger(__name__)


class Say(Protocol):
    """Where the demo's human lines go: a rich Console, or :class:`LogLines`."""

    def print(self, *objects: Any, soft_wrap: bool | None = None) -> None:
        """Write one line (rich markup allowed)."""


class LogLines:
    """The demo's lines as INFO log records (markup removed): in json log mode every line
    the process writes is then one Cloud Logging entry."""

    def __init__(self) -> None:
        # the command line keeps the root at WARNING; these lines are the demo's output
        log.setLevel(logging.INFO)

    def print(self, *objects: Any, soft_wrap: bool | None = None) -> None:
        """Log the line at INFO."""
        text = " ".join(Text.from_markup(str(o)).plain for o in objects)
        log.info("%s", text.strip(), stacklevel=2)


def run_demo(
    *,
    patients: int = 200,
    changes: int = 30,
    seed: int = 7,
    reset: bool = False,
    data_dir: Path | None = None,
    console: Say | None = None,
    target: str = "sqlite",
    dsn: str | None = None,
    hubspot_url: str | None = None,
) -> Counts:
    """Run the demo once and return its counts. ``target`` is where the warehouse goes:
    sqlite (default), csv, jsonl, excel or parquet under the data directory with no server,
    postgres at ``dsn`` (``postgresql://user:password@host:port/db``), or hubspot at
    ``hubspot_url`` (HubSpot, or a mock serving its contacts and properties APIs; the token
    from ``HEALTHIE_SYNC_DEMO_HUBSPOT_TOKEN``) with the two-way example's forward plan."""
    from sandbox.core import Sandbox
    from sandbox.server import create_app as create_sandbox_app

    console = console or (LogLines() if logs.is_json() else Console(stderr=True))
    # Each target keeps its own state: a second target must not inherit "unchanged" verdicts.
    data = data_dir or (Settings().data_dir / ("demo" if target == "sqlite" else f"demo-{target}"))
    if reset and data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    warehouse, secrets = demo_target(target, data, dsn, hubspot_url)

    with httpx2.Client(timeout=10) as http:
        console.print(f"[bold]healthie-sync demo[/]: {patients} synthetic patients, seed {seed}")
        sandbox = Sandbox(patients=patients, seed=seed, http_client=http)
        with serve_in_thread(create_sandbox_app(sandbox)) as sandbox_url:
            console.print(f"  sandbox Healthie at {sandbox_url}/graphql", soft_wrap=True)
            secrets.update({"api_key": sandbox.api_key, "webhook": sandbox.webhook_secret})
            runtime = _runtime(data, sandbox_url, warehouse, secrets)
            try:
                counts = _run(runtime, sandbox, changes, seed, http, console)
                where = warehouse.options.get("path") or warehouse.options.get("dsn")
                console.print(f"  warehouse ({warehouse.connector}): {where}", soft_wrap=True)
                console.print(
                    f"  see this run: healthie-sync --data-dir {data} runs", soft_wrap=True
                )
                return counts
            finally:
                runtime.close()


FILE_TARGETS = ("csv", "jsonl", "excel", "parquet")
TARGETS = ("sqlite", *FILE_TARGETS, "postgres", "hubspot")
#: the two-way example's forward plan: patients as HubSpot contacts (target "crm")
HUBSPOT_PLAN = (
    Path(__file__).resolve().parents[1] / "prompts" / "plans" / "hubspot-clinic.plan.json"
)


def demo_target(
    target: str, data: Path, dsn: str | None, hubspot_url: str | None = None
) -> tuple[TargetConfig, dict[str, str]]:
    """The demo's warehouse target and its secrets (by secret reference)."""
    if target == "hubspot":
        if not hubspot_url:
            raise ConfigurationError(
                "demo --target hubspot needs --hubspot-url (HubSpot's API, or a mock serving "
                "its contacts and properties APIs)"
            )
        import os

        token = os.environ.get("HEALTHIE_SYNC_DEMO_HUBSPOT_TOKEN", "pat-demo-token")
        return TargetConfig(
            name="crm",
            connector="hubspot",
            options={
                "api_url": hubspot_url,
                "id_property": "healthie_patient_id",
                "match": ["email", "phone"],
            },
            credentials={"access_token": "demo-clinic/hubspot-token"},
        ), {"demo-clinic/hubspot-token": token}
    if target == "sqlite":
        return TargetConfig(
            name="warehouse", connector="sqlite", options={"path": str(data / "warehouse.db")}
        ), {}
    if target in FILE_TARGETS:
        (data / "warehouse").mkdir(parents=True, exist_ok=True)
        return TargetConfig(
            name="warehouse", connector=target, options={"path": str(data / "warehouse")}
        ), {}
    if target == "postgres":
        if not dsn:
            raise ConfigurationError("demo --target postgres needs --dsn postgresql://...")
        url = make_url(dsn)
        password = url.password or ""
        # URL.set(password=None) would keep the password: build the URL without it.
        safe = URL.create(
            "postgresql+psycopg", url.username, None, url.host, url.port, url.database, url.query
        )
        return TargetConfig(
            name="warehouse",
            connector="postgres",
            options={"dsn": safe.render_as_string(hide_password=False)},
            credentials={"password": "demo-clinic/warehouse-password"},
        ), {"demo-clinic/warehouse-password": password}
    raise ConfigurationError(f"demo --target {target!r}: use one of {list(TARGETS)}")


def _runtime(
    data: Path, sandbox_url: str, warehouse: TargetConfig, secrets: dict[str, str]
) -> Runtime:
    integration = load_integration(DEMO_CONFIG)
    agent = integration.agent
    if warehouse.connector == "hubspot":
        agent = agent.model_copy(update={"plan": HUBSPOT_PLAN})
    integration = integration.model_copy(
        update={
            "healthie": integration.healthie.model_copy(
                update={"api_url": f"{sandbox_url}/graphql"}
            ),
            "targets": [warehouse],
            "agent": agent,
        }
    )
    store = MemorySecretStore(
        {
            integration.healthie.api_key_secret: secrets.pop("api_key"),
            integration.healthie.webhook_secrets[0]: secrets.pop("webhook"),
            **secrets,
        }
    )
    settings = Settings(data_dir=data)
    queue = SqliteQueue(data / "queue.db")
    ensure_topology_for(queue, settings)
    return Runtime(
        settings=settings,
        integrations={integration.id: integration},
        secrets=store,
        queue=queue,
        state=SqliteStateStore(data / "state.db"),
    )


def _run(
    runtime: Runtime,
    sandbox: Sandbox,
    changes: int,
    seed: int,
    http: httpx2.Client,
    console: Say,
) -> Counts:
    integration = next(iter(runtime.integrations.values()))
    with logs.bind(integration=integration.id):
        return _run_integration(runtime, sandbox, changes, seed, http, console)


def _run_integration(
    runtime: Runtime,
    sandbox: Sandbox,
    changes: int,
    seed: int,
    http: httpx2.Client,
    console: Say,
) -> Counts:
    integration = next(iter(runtime.integrations.values()))
    with serve_in_thread(create_app(runtime)) as engine_url:
        hook_url = f"{engine_url}/webhooks/healthie/{integration.id}"
        sandbox.register_webhook(hook_url)
        console.print(f"  engine webhook receiver at {hook_url}", soft_wrap=True)
        made = sandbox.apply_random_changes(changes, seed=seed)
        console.print(f"  changed {len(made)} records in the sandbox; webhooks sent")
        forged = http.post(
            hook_url,
            content=json.dumps(
                {
                    "resource_id": "1",
                    "resource_id_type": "User",
                    "event_type": "patient.updated",
                    "changed_fields": [],
                }
            ),
            headers={
                "Content-Type": "application/json",
                "Content-Digest": "SHA-256=forged",
                "Signature": "sig1=" + "0" * 64,
            },
        )
        console.print(f"  one forged webhook answered HTTP {forged.status_code}")
    result = flush(runtime, integration.cadence)
    console.print(
        f"  flush {result.flush_id}: {result.marks} marks -> {result.work_items} patients"
    )
    with logs.bind(run_id=f"{result.flush_id}-{integration.id}"):
        counts = _drain(runtime, console, result.work_items)
    counts.webhooks_received = runtime.stats.received
    counts.webhooks_rejected = runtime.stats.rejected
    counts.dirty_patients = result.work_items
    # the workers counted each run's outcomes as they went (a finished run is final)
    return counts


def _drain(runtime: Runtime, console: Say, total: int) -> Counts:
    if not isinstance(console, Console):  # log lines: no progress bar
        counts = drain(runtime)
        console.print(
            f"  processed {counts.processed}, unchanged {counts.skipped_unchanged}, "
            f"dead-lettered {counts.dead_lettered}"
        )
        return counts
    with Progress(
        TextColumn("  processing"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("work", total=total)
        return drain(
            runtime,
            on_batch=lambda c: progress.advance(
                task, c.processed + c.skipped_unchanged + c.dead_lettered
            ),
        )
