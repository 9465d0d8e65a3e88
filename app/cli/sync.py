"""``healthie-sync backfill`` and ``resync``: bring a clinic's whole roster (or chosen patients)
into the next run (``workers.backfill``)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from app.cli.common import open_runtime

_PATIENTS = typer.Option(
    "--patients", "--patient", help="Only these patient ids (repeat for several)."
)


def backfill(
    integration: str = typer.Argument(..., help="The integration to backfill."),
    patients: Annotated[list[str] | None, _PATIENTS] = None,
    as_json: bool = typer.Option(False, "--json", help="One JSON object at the end."),
) -> None:
    """Mark every patient of the organization (or --patients) for the next flush: pages of
    ids, resumable after a crash, paced within the integration's Healthie rate share."""
    from rich.console import Console
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    from workers.backfill import backfill as run_backfill
    from workers.backfill import rules_marker
    from workers.rules import decision_rules

    runtime = open_runtime()
    try:
        config = runtime.integration(integration)
        console = Console(stderr=True)
        with Progress(
            TextColumn("  backfill {task.fields[what]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=as_json,
        ) as bar:
            task = bar.add_task("backfill", what="", total=None)

            def show(p) -> None:  # type: ignore[no-untyped-def]
                left = f", {p.seconds_left:.0f} s left" if p.seconds_left is not None else ""
                bar.update(
                    task,
                    what=f"{p.listed} listed, {p.marked} marked, {p.rate:.0f}/s{left}",
                )

            progress = run_backfill(
                runtime.state,
                runtime.healthie(integration),
                integration,
                patients=patients,
                on_progress=show,
            )
        if not patients:
            # every patient is marked: the current rules need no second backfill
            from datetime import UTC, datetime

            runtime.state.set_watermark(
                integration, rules_marker(decision_rules(config)), datetime.now(UTC)
            )
    finally:
        runtime.close()
    report = {
        "integration": integration,
        "listed": progress.listed,
        "marked": progress.marked,
        "skipped_before_checkpoint": progress.skipped_before_checkpoint,
        "pages": progress.pages,
        "patients_per_second": round(progress.rate, 1),
    }
    if as_json:
        typer.echo(json.dumps(report))
    else:
        typer.echo(
            f"{integration}: marked {progress.marked} of {progress.listed} listed patients; "
            f"the next {config.cadence.value} flush processes them "
            f"(now: healthie-sync flush {config.cadence.value})"
        )


def resync(
    integration: str = typer.Argument(..., help="The integration to re-sync."),
    patients: Annotated[list[str] | None, _PATIENTS] = None,
) -> None:
    """Decide again on the next run even for unchanged entries: for --patients, or every
    patient (a backfill follows, so each is fetched)."""
    from workers.backfill import backfill as run_backfill
    from workers.backfill import force_resync

    runtime = open_runtime()
    try:
        config = runtime.integration(integration)
        force_resync(runtime.state, integration)
        progress = run_backfill(
            runtime.state,
            runtime.healthie(integration),
            integration,
            patients=patients,
            reason="resync",
        )
    finally:
        runtime.close()
    typer.echo(
        f"{integration}: {progress.marked} patients will be decided again at the next "
        f"{config.cadence.value} flush, changed or not"
    )
