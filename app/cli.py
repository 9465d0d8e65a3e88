"""The ``healthie-sync`` command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.models import Cadence

if TYPE_CHECKING:
    from app.runtime import Runtime
    from workers.replay import ReplayFilter

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@cli.command()
def demo(
    patients: int = typer.Option(200, help="Synthetic patients in the sandbox."),
    changes: int = typer.Option(30, help="Changes made in the sandbox before the flush."),
    seed: int = typer.Option(7, help="Seed of the synthetic organization."),
    reset: bool = typer.Option(False, help="Forget previous demo state first."),
) -> None:
    """Run the main job end to end on embedded defaults (no network, no credentials)."""
    from app.demo import run_demo

    counts = run_demo(patients=patients, changes=changes, seed=seed, reset=reset)
    typer.echo(json.dumps(counts.model_dump()))


@cli.command()
def serve(
    host: str = typer.Option("0.0.0.0", help="Interface to listen on."),  # noqa: S104
    port: int = typer.Option(8080, envvar="PORT", help="Port (Cloud Run sets PORT)."),
) -> None:
    """Serve webhooks, flush triggers and operator routes; process work in the background;
    fire flushes on schedule when HEALTHIE_SYNC_SCHEDULER=embedded (the local default)."""
    import uvicorn

    from app.errors import ConfigurationError
    from app.main import create_app
    from app.preflight import preflight
    from app.scheduler import EmbeddedScheduler
    from workers.flusher import flush as run_flush
    from workers.loop import WorkerLoop

    runtime = _runtime()
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

    runtime = _runtime()
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
    from app.runtime import build_runtime
    from app.settings import Settings
    from workers.flusher import flush as run_flush
    from workers.subscriber import drain

    runtime = build_runtime(Settings())
    try:
        result = run_flush(runtime, cadence)
        counts = drain(runtime)
        typer.echo(json.dumps({"flush_id": result.flush_id, **counts.model_dump()}))
    finally:
        runtime.close()


dlq = typer.Typer(help="Dead-lettered work: list and replay.", no_args_is_help=True)
cli.add_typer(dlq, name="dlq")


def _runtime() -> Runtime:
    from app.runtime import build_runtime
    from app.settings import Settings

    return build_runtime(Settings())


@cli.command()
def runs(
    integration: str | None = typer.Option(None, help="Only this integration."),
    limit: int = typer.Option(20, help="How many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List flush runs with their counts."""
    from rich.console import Console
    from rich.table import Table

    runtime = _runtime()
    try:
        records = runtime.state.list_runs(integration, limit)
    finally:
        runtime.close()
    if as_json:
        for run in records:
            typer.echo(run.model_dump_json())
        return
    table = Table("run", "integration", "cadence", "started", "status", "marks", "patients",
                  "processed", "unchanged", "writes", "dead")
    for run in records:
        c = run.counts
        table.add_row(run.run_id, run.integration_id, run.cadence.value,
                      f"{run.started_at:%Y-%m-%d %H:%M:%S}", run.status, str(run.marks_drained),
                      str(run.patients), str(c.processed), str(c.skipped_unchanged),
                      str(c.writes), str(c.dead_lettered))
    Console().print(table)


def _filter(integration: str | None, patient: str | None, error: str | None,
            since: str | None, until: str | None) -> ReplayFilter:
    from datetime import datetime

    from workers.replay import ReplayFilter

    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return ReplayFilter(integration_id=integration, patient_id=patient, error_kind=error,
                        since=when(since), until=when(until))


_INTEGRATION = typer.Option(None, help="Only this integration.")
_PATIENT = typer.Option(None, help="Only this patient id.")
_ERROR = typer.Option(None, help="Only this error kind (e.g. target_rejected).")
_SINCE = typer.Option(None, help="Dead-lettered at or after (ISO 8601, with offset).")
_UNTIL = typer.Option(None, help="Dead-lettered at or before (ISO 8601, with offset).")


@dlq.command("list")
def dlq_list(integration: str | None = _INTEGRATION, patient: str | None = _PATIENT,
             error: str | None = _ERROR, since: str | None = _SINCE,
             until: str | None = _UNTIL) -> None:
    """Show dead-lettered work items with the reason and last error."""
    from rich.console import Console
    from rich.table import Table

    from workers.replay import list_dead_letters

    runtime = _runtime()
    try:
        dead = list_dead_letters(runtime.queue, _filter(integration, patient, error, since, until))
    finally:
        runtime.close()
    table = Table("message", "integration", "patient", "kind", "attempts", "at", "plan", "error")
    for d in dead:
        table.add_row(d.message_id[:12], d.integration_id, d.patient_id, d.error_kind,
                      str(d.delivery_attempt),
                      f"{d.dead_lettered_at:%Y-%m-%d %H:%M}" if d.dead_lettered_at else "",
                      "yes" if d.has_plan else "", d.error[:80])
    Console().print(table)


@dlq.command("replay")
def dlq_replay(integration: str | None = _INTEGRATION, patient: str | None = _PATIENT,
               error: str | None = _ERROR, since: str | None = _SINCE,
               until: str | None = _UNTIL,
               yes: bool = typer.Option(False, "--yes", help="Replay; without it, a preview."),
               rate: float = typer.Option(10.0, help="Replays per second at most.")) -> None:
    """Put dead-lettered items back on the work queue (preview unless --yes)."""
    from workers.replay import replay

    runtime = _runtime()
    try:
        report = replay(runtime.queue, _filter(integration, patient, error, since, until),
                        preview=not yes, rate_per_second=rate)
    finally:
        runtime.close()
    if report.preview:
        hint = " (run again with --yes)" if report.selected else ""
        typer.echo(f"scanned {report.scanned}, would replay {len(report.selected)}{hint}")
    else:
        typer.echo(f"scanned {report.scanned}, replayed {report.replayed}")


@cli.command(name="compile")
def compile_plan(
    integration_id: str,
    out: Annotated[
        Path | None, typer.Option(help="Plan file to write (default: agent.plan).")
    ] = None,
) -> None:
    """Ask Claude once to compile the instruction document into a plan file to review."""
    from app.agent.compile import run_compile

    runtime = _runtime()
    try:
        integration = runtime.integration(integration_id)
        target = out or integration.agent.plan or Path(f"prompts/plans/{integration_id}.plan.json")
        message = run_compile(integration, runtime.connectors(integration_id),
                              runtime.anthropic_client(), target)
    finally:
        runtime.close()
    typer.echo(message)
    if message.startswith("Not compiled:"):
        raise typer.Exit(1)


@cli.command(name="dry-run")
def dry_run_cmd(
    integration_id: str,
    patient: Annotated[list[str], typer.Option(help="Patient id (repeat for several).")],
    out: Annotated[Path, typer.Option(help="Folder for report.md and report.json.")] = Path(
        "dry-run"
    ),
    show_values: Annotated[
        bool, typer.Option(help="Include field values (PHI) in the report, not just names.")
    ] = False,
) -> None:
    """What the integration would write for these patients; nothing is executed or recorded."""
    from app.agent.report import build_report, render_markdown
    from workers.dry_run import dry_run

    runtime = _runtime()
    try:
        items = dry_run(runtime, integration_id, patient)
        integration = runtime.integration(integration_id)
    finally:
        runtime.close()
    report = build_report(items, integration_id=integration_id,
                          visible_fields=integration.agent.visible_fields, show_values=show_values)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    typer.echo(f"{len(items)} patients: {out / 'report.md'} and {out / 'report.json'}")


hooks = typer.Typer(help="Healthie webhooks: status, sync, test, rotate.", no_args_is_help=True)
cli.add_typer(hooks, name="webhooks")
_URL = typer.Option(..., "--url", help="The engine's public base URL (https://...).")


@hooks.command("status")
def hooks_status(integration: str, url: str = _URL) -> None:
    """What is registered at Healthie against what the integration needs, and warnings."""
    from app.lifecycle import webhook_status

    runtime = _runtime()
    try:
        status = webhook_status(runtime.healthie(integration), runtime.integration(integration),
                                url, accepted_secrets=runtime.webhook_secrets(integration))
    finally:
        runtime.close()
    typer.echo("in sync" if status.plan.in_sync else "drift:")
    for step in status.plan.steps:
        typer.echo(f"  {step}")
    for other in status.plan.others:
        typer.echo(f"  (left alone, other URL) {other}")
    for warning in status.warnings:
        typer.echo(f"warning: {warning}")


@hooks.command("sync")
def hooks_sync(integration: str, url: str = _URL) -> None:
    """Register or fix the integration's webhook so it carries exactly the needed events."""
    from app.lifecycle import webhooks_sync

    runtime = _runtime()
    try:
        actions = webhooks_sync(runtime.healthie(integration), runtime.integration(integration),
                                url)
    finally:
        runtime.close()
    for action in actions:
        typer.echo(str(action))
    if not actions:
        typer.echo("already in sync")


@hooks.command("test")
def hooks_test(
    integration: str,
    url: str = _URL,
    timeout: float = typer.Option(30.0, help="Seconds to wait for the delivery."),
) -> None:
    """Ask Healthie to send a test webhook and confirm the engine received and verified it."""
    from app.lifecycle import confirm_arrival, engine_webhooks, send_test

    runtime = _runtime()
    try:
        client = runtime.healthie(integration)
        registered = engine_webhooks(client, runtime.integration(integration), url)
        if not registered:
            typer.echo("no webhook registered for this integration; run 'webhooks sync' first")
            raise typer.Exit(1)
        sent = send_test(client, registered[0].id, receiver_url=url)
        arrival = confirm_arrival(client, sent, receiver_url=url, timeout=timeout)
    finally:
        runtime.close()
    typer.echo(f"{arrival.verdict}: {arrival.detail}")
    if not arrival.ok:
        raise typer.Exit(1)


@hooks.command("rotate")
def hooks_rotate(
    integration: str,
    url: str = _URL,
    yes: bool = typer.Option(False, "--yes", help="Expire the signing secret now."),
) -> None:
    """Rotate the webhook signing secret (prints the procedure; --yes performs step 2)."""
    from app.lifecycle import engine_webhooks, rotate_secret, rotation_steps

    runtime = _runtime()
    try:
        client = runtime.healthie(integration)
        config = runtime.integration(integration)
        ids = [w.id for w in engine_webhooks(client, config, url)]
        for line in rotation_steps(config, ids, base=url):
            typer.echo(line)
        if yes:
            for rotation in rotate_secret(client, ids):
                # the new secret goes to the secrets backend by the operator; show a fingerprint
                typer.echo(f"rotated: {rotation}")
    finally:
        runtime.close()


@cli.command()
def sandbox(
    patients: int = typer.Option(200, help="Synthetic patients."),
    seed: int = typer.Option(7, help="Seed of the synthetic organization."),
    port: int = typer.Option(8765, help="Port on 127.0.0.1."),
) -> None:
    """Run the local Healthie sandbox standalone; prints its URL and webhook secret."""
    from sandbox.cli import run_standalone

    run_standalone(patients=patients, seed=seed, port=port)


def main() -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cli()
