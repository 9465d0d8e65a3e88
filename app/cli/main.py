"""The ``healthie-sync`` command line: serve, work, flush and runs here; the rest in
``dlq``, ``webhooks``, ``agent`` (compile, dry-run) and ``dev`` (demo, sandbox)."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from app.cli import agent, dev, dlq, targets, webhooks
from app.cli.common import open_runtime
from app.core.models import Cadence

cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="healthie-sync: Healthie webhooks in, plain-language rules applied, typed writes out.",
)
cli.command()(dev.demo)
cli.command()(dev.sandbox)
cli.command(name="compile")(agent.compile_plan)
cli.command(name="dry-run")(agent.dry_run_cmd)
cli.command()(targets.connectors)
cli.command()(targets.validate)
cli.add_typer(dlq.app, name="dlq")
cli.add_typer(webhooks.app, name="webhooks")


@cli.command()
def serve(
    host: str = typer.Option("0.0.0.0", help="Interface to listen on."),  # noqa: S104
    port: int = typer.Option(8080, envvar="PORT", help="Port (Cloud Run sets PORT)."),
) -> None:
    """Serve webhooks, flush triggers and operator routes; process work in the background;
    fire flushes on schedule when HEALTHIE_SYNC_SCHEDULER=embedded (the local default)."""
    import uvicorn

    from app.api.app import create_app
    from app.core.errors import ConfigurationError
    from app.service.preflight import preflight
    from app.service.scheduler import EmbeddedScheduler
    from workers.flusher import flush as run_flush
    from workers.loop import WorkerLoop

    runtime = open_runtime()
    try:
        warnings = preflight(runtime, check_schema=runtime.settings.check_schema_at_startup)
    except ConfigurationError as exc:
        runtime.close()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    loop = WorkerLoop(runtime, concurrency=runtime.settings.worker_concurrency)
    scheduler = None
    if runtime.settings.scheduler == "embedded":

        def fire(cadence: Cadence) -> None:
            run_flush(runtime, cadence)
            if cadence is Cadence.DAILY:
                # weekly marks are staged daily, so none waits out Pub/Sub's 7-day retention
                run_flush(runtime, Cadence.WEEKLY, stage_only=True)

        scheduler = EmbeddedScheduler(fire)
        scheduler.start()
    loop.start()
    try:
        uvicorn.run(create_app(runtime), host=host, port=port, log_level="info")
    finally:
        if scheduler is not None:
            scheduler.stop()
        loop.stop()
        runtime.close()


@cli.command()
def work(
    concurrency: int = typer.Option(2, help="Worker threads."),
) -> None:
    """Process queued work until interrupted (no HTTP server, no scheduler)."""
    import signal
    import threading

    from workers.loop import WorkerLoop

    runtime = open_runtime()
    loop = WorkerLoop(runtime, concurrency=concurrency)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    loop.start()
    try:
        while not stop.wait(1.0):
            if loop.stopped_by:
                raise typer.Exit(2)
    except KeyboardInterrupt:
        pass
    finally:
        loop.stop()
        runtime.close()


@cli.command()
def flush(cadence: Annotated[Cadence, typer.Argument(help="Which cadence to flush.")]) -> None:
    """Flush one cadence's dirty marks into work items, then process them."""
    from app.core.settings import Settings
    from app.service.runtime import build_runtime
    from workers.consumer import drain
    from workers.flusher import flush as run_flush

    runtime = build_runtime(Settings())
    try:
        result = run_flush(runtime, cadence)
        counts = drain(runtime)
        typer.echo(json.dumps({"flush_id": result.flush_id, **counts.model_dump()}))
    finally:
        runtime.close()


@cli.command()
def runs(
    integration: str | None = typer.Option(None, help="Only this integration."),
    limit: int = typer.Option(20, help="How many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List flush runs with their counts."""
    from rich.console import Console
    from rich.table import Table

    runtime = open_runtime()
    try:
        records = runtime.state.list_runs(integration, limit)
    finally:
        runtime.close()
    if as_json:
        for run in records:
            typer.echo(run.model_dump_json())
        return
    table = Table(
        "run",
        "integration",
        "cadence",
        "started",
        "status",
        "marks",
        "patients",
        "processed",
        "unchanged",
        "writes",
        "dead",
    )
    for run in records:
        c = run.counts
        table.add_row(
            run.run_id,
            run.integration_id,
            run.cadence.value,
            f"{run.started_at:%Y-%m-%d %H:%M:%S}",
            run.status,
            str(run.marks_drained),
            str(run.patients),
            str(c.processed),
            str(c.skipped_unchanged),
            str(c.writes),
            str(c.dead_lettered),
        )
    Console().print(table)


def main() -> None:
    """Console entry point. A configuration mistake is one line with the fix, exit 2."""
    from app.core.errors import ConfigurationError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cli()
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
