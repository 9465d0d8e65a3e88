"""The ``healthie-sync`` command line: serve, work, flush and runs here; the rest in
``dlq``, ``webhooks``, ``agent`` (compile, dry-run), ``targets`` (connectors), ``validate``,
``doctor``, ``secrets``, ``sync`` (backfill, resync) and ``dev`` (demo, sandbox). Exit codes
and error lines: ``app.cli.exits``."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from app.cli import agent, dev, dlq, doctor, secrets, sync, targets, validate, webhooks
from app.cli.common import open_runtime, print_table
from app.cli.exits import ExitCode, exit_code, one_line
from app.core.models import Cadence

cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # main() prints one line; --debug the traceback
    context_settings={"help_option_names": ["-h", "--help"]},
    help="healthie-sync: Healthie webhooks in, plain-language rules applied, typed writes out.",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"healthie-sync {version('healthie-sync')}")
        except PackageNotFoundError:
            typer.echo("healthie-sync (not installed as a package)")
        raise typer.Exit()


@cli.callback()
def _global(
    config_dir: Annotated[
        Path | None,
        typer.Option(
            "--config-dir",
            help="Integration files (default config/integrations; env HEALTHIE_SYNC_CONFIG_DIR).",
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Local queue and state (default .healthie-sync; env HEALTHIE_SYNC_DATA_DIR).",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Print tracebacks and debug logs (no patient data).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Global options; settings come from HEALTHIE_SYNC_* environment variables otherwise."""
    # Settings read the environment, so an option is the same as its variable for every command.
    if config_dir is not None:
        os.environ["HEALTHIE_SYNC_CONFIG_DIR"] = str(config_dir)
    if data_dir is not None:
        os.environ["HEALTHIE_SYNC_DATA_DIR"] = str(data_dir)
    if debug:
        os.environ["HEALTHIE_SYNC_DEBUG"] = "1"
        logging.getLogger().setLevel(logging.DEBUG)


cli.command()(dev.demo)
cli.command()(dev.sandbox)
cli.command(name="compile")(agent.compile_plan)
cli.command(name="dry-run")(agent.dry_run_cmd)
cli.command()(targets.connectors)
cli.command()(validate.validate)
cli.command(name="doctor")(doctor.doctor)
cli.command()(sync.backfill)
cli.command()(sync.resync)
cli.add_typer(dlq.app, name="dlq")
cli.add_typer(webhooks.app, name="webhooks")
cli.add_typer(secrets.app, name="secrets")


def _log_progress() -> None:
    # long-running commands say one line per flush and per processed batch
    logging.getLogger("workers").setLevel(
        min(logging.INFO, logging.getLogger().getEffectiveLevel())
    )


@cli.command()
def serve(
    host: str = typer.Option("0.0.0.0", help="Interface to listen on."),  # noqa: S104
    port: int = typer.Option(8080, envvar="PORT", help="Port (Cloud Run sets PORT)."),
) -> None:
    """Serve webhooks, flush triggers and operator routes; process work in the background;
    fire flushes on schedule when HEALTHIE_SYNC_SCHEDULER=embedded (the local default)."""
    from app.api.app import create_app
    from app.core.errors import ConfigurationError
    from app.observability.setup import configure_from_environment
    from app.service.lifecycle import Lifecycle
    from app.service.preflight import preflight
    from app.service.scheduler import EmbeddedScheduler
    from workers.flusher import flush as run_flush
    from workers.loop import WorkerLoop

    _log_progress()
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

        scheduler = EmbeddedScheduler(fire, retry_seconds=runtime.settings.flush_lease_seconds + 1)
        scheduler.start()
    configure_from_environment()
    # SIGTERM (how Cloud Run stops an instance): stop pulling, finish or hand back in-flight
    # work within the grace period, close the stores (app.service.lifecycle)
    Lifecycle(
        runtime,
        loop=loop,
        scheduler=scheduler,
        grace=runtime.settings.shutdown_grace_seconds,
        reload_interval=runtime.settings.config_reload_seconds,
    ).serve(create_app(runtime), host=host, port=port)


@cli.command()
def work(
    concurrency: int = typer.Option(2, help="Worker threads."),
) -> None:
    """Process queued work until interrupted (no HTTP server, no scheduler)."""
    import signal
    import threading

    from app.observability import metrics
    from app.observability.setup import configure_from_environment
    from workers.loop import WorkerLoop

    _log_progress()
    runtime = open_runtime()
    configure_from_environment()
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
        loop.stop(grace=runtime.settings.shutdown_grace_seconds)
        runtime.close()
        metrics.shutdown()


@cli.command()
def flush(
    cadence: Annotated[Cadence, typer.Argument(help="Which cadence to flush.")],
    as_json: bool = typer.Option(True, "--json/--table", help="One JSON object (default)."),
) -> None:
    """Flush one cadence's dirty marks into work items, then process them. Exits 1 when work
    was dead-lettered, 3 when some could not be processed now (it stays queued)."""
    from workers.consumer import drain
    from workers.flusher import flush as run_flush

    runtime = open_runtime()
    try:
        result = run_flush(runtime, cadence)
        counts = drain(runtime)
        wanted = {r.run_id for r in result.runs}
        # the same records `runs` shows, read back after the workers added their counts
        records = [
            r for r in runtime.state.list_runs(None, max(20, 4 * len(wanted))) if r.run_id in wanted
        ]
    finally:
        runtime.close()
    for notice in result.notices:
        typer.echo(f"note: {notice}", err=True)
    report = {
        "flush_id": result.flush_id,
        "cadence": cadence.value,
        **counts.model_dump(),
        "rules_backfilled": result.rules_backfilled,
        "notices": result.notices,
        "runs": [
            {"run_id": r.run_id, "integration_id": r.integration_id, "status": r.status}
            | r.counts.model_dump()
            for r in records
        ],
    }
    if as_json:
        typer.echo(json.dumps(report))
    else:
        _print_runs(records, empty=f"flush {result.flush_id}: nothing was dirty")
    for integration_id, failure in sorted(result.failed.items()):
        typer.echo(f"{one_line(failure)} (integration {integration_id})", err=True)
    if result.failed:
        raise typer.Exit(max(exit_code(f) for f in result.failed.values()))
    if counts.dead_lettered:
        typer.echo(
            f"error: {counts.dead_lettered} work items were dead-lettered "
            "(see: healthie-sync dlq list)",
            err=True,
        )
        raise typer.Exit(ExitCode.PROBLEMS)
    if counts.waiting:
        typer.echo(
            f"error: {counts.waiting} work items wait: their integration cannot work now "
            "(see healthie-sync doctor); its next flush retries them",
            err=True,
        )
        raise typer.Exit(ExitCode.USAGE)
    if counts.retried:
        typer.echo(
            f"error: {counts.retried} work items could not be processed now (a service did not "
            "answer); they stay queued and `healthie-sync work` retries them",
            err=True,
        )
        raise typer.Exit(ExitCode.UNREACHABLE)


_RUN_COLUMNS = (
    "run",
    "integration",
    "cadence",
    "started",
    "status",
    "patients",
    "processed",
    "unchanged",
    "writes",
    "dead",
    "not found",
    "waiting",
    "in flight",
)


def _print_runs(records: list, *, empty: str) -> None:  # type: ignore[type-arg]
    rows = [
        (
            run.run_id,
            run.integration_id,
            run.cadence.value,
            f"{run.started_at.astimezone():%Y-%m-%d %H:%M:%S %Z}",
            run.status if not run.error else f"{run.status}: {run.error}",
            str(run.patients),
            str(run.counts.processed),
            str(run.counts.skipped_unchanged),
            str(run.counts.writes),
            str(run.counts.dead_lettered),
            str(run.counts.not_found),
            str(run.counts.waiting),
            str(run.in_flight),
        )
        for run in records
    ]
    print_table(_RUN_COLUMNS, rows, empty=empty, fold=("run", "integration", "status"))


@cli.command()
def runs(
    integration: str | None = typer.Option(None, help="Only this integration."),
    limit: int = typer.Option(20, help="How many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List flush runs with their counts (times in the local zone)."""
    runtime = open_runtime()
    try:
        records = runtime.state.list_runs(integration, limit)
        data_dir = runtime.settings.data_dir
        problems = list(runtime.config_problems)
    finally:
        runtime.close()
    for problem in problems:  # a broken integration file: the others' runs are still shown
        typer.echo(f"error: {problem.message}", err=True)
    if as_json:
        for run in records:
            typer.echo(run.model_dump_json())
        return
    _print_runs(
        records,
        empty=f"no runs recorded in {data_dir} (flush one: healthie-sync flush hourly; "
        "the demo keeps its own: healthie-sync --data-dir .healthie-sync/demo runs)",
    )


def main() -> None:
    """Console entry point: every failure is one line and a documented exit code
    (``app.cli.exits``); ``--debug`` (or HEALTHIE_SYNC_DEBUG=1) adds the traceback."""
    from app.core.logs import configure

    debug = "--debug" in sys.argv[1:] or os.environ.get("HEALTHIE_SYNC_DEBUG") == "1"
    configure(logging.DEBUG if debug else logging.WARNING)
    try:
        cli()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except Exception as exc:  # noqa: BLE001 - the one place a failure becomes an exit code
        if debug or os.environ.get("HEALTHIE_SYNC_DEBUG") == "1":  # set by --debug too
            import traceback

            traceback.print_exception(exc)
        typer.echo(one_line(exc), err=True)
        raise SystemExit(int(exit_code(exc))) from None
